"""Shared fixtures: the real tiny checkpoint (random weights, real classes), written once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_CACHE = Path(os.environ.get("ZIMAGE_TEST_CACHE", "/tmp/zimage-serve-tests"))
os.environ["ZIMAGE_CACHE_DIR"] = str(_CACHE)  # before anything reads the environment
os.environ.setdefault("ZIMAGE_DEVICE", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_source():
    from zimage_serve.sources import resolve

    return resolve("tiny")


@pytest.fixture(scope="session")
def tiny_path(tiny_source) -> Path:
    return tiny_source.path


@pytest.fixture(scope="session")
def stock_pipe(tiny_path):
    """Stock diffusers ZImagePipeline on the same checkpoint: the reference every image is compared with."""
    import torch
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(tiny_path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_image(pipe, prompt: str, seed: int, width: int, height: int, steps: int = 8, guidance_scale: float = 0.0,
                negative_prompt: str | None = None):
    import torch

    return pipe(prompt=prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
                negative_prompt=negative_prompt,
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def max_pixel_diff(a, b) -> int:
    import numpy as np

    assert a.size == b.size, (a.size, b.size)
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture
def cli():
    """Run the installed CLI as a user would; returns CompletedProcess."""
    import subprocess

    def run(*args, timeout=300):
        return subprocess.run([sys.executable, "-m", "zimage_serve.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ))

    return run
