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
    from zimage_serve.model.sources import resolve

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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_cluster():
    """A real local Ray cluster with Serve's HTTP proxy; 4 logical GPUs to exercise num_gpus placement."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=16, num_gpus=4, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"ZIMAGE_CACHE_DIR": os.environ["ZIMAGE_CACHE_DIR"], "ZIMAGE_DEVICE": "cpu"}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def tiny_app_config(tiny_path, **overrides) -> dict:
    """A test config: the tiny checkpoint, small sizes, batch waits long enough to observe batching."""
    config = {
        "model": str(tiny_path), "default_size": "64x64", "max_side": 256, "max_images": 4,
        "encoder": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "num_cpus": 1, "dtype": "float32"},
        "generator": {"num_gpus": 0, "max_batch_size": 4, "batch_wait_timeout_s": 0.2, "plan_size": "256x256"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    return config


def deploy(serve_cluster: str, name: str, config: dict, app=None) -> str:
    """Deploy the real application (or ``app``, built from ``config`` otherwise) under /name; its base URL."""
    from ray import serve

    from zimage_serve.app import build_app

    serve.run(app if app is not None else build_app(config), name=name, route_prefix=f"/{name}", blocking=False)
    return f"{serve_cluster}/{name}"


@pytest.fixture(scope="session")
def app_url(serve_cluster, tiny_path):
    """The main test application (one logical GPU for its generator), deployed once under /main."""
    return deploy(serve_cluster, "main", tiny_app_config(tiny_path, generator={"num_gpus": 1}))


def job(embeds, seed: int, width: int = 1024, height: int = 1024, steps: int = 8, guidance_scale: float = 0.0,
        negative_embeds=None, prompt: str = "a test prompt"):
    """An engine Job: the typed request of one image and its embeddings."""
    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Job

    request = GenerationRequest(prompt=prompt, seed=seed, width=width, height=height, steps=steps,
                                guidance_scale=guidance_scale)
    return Job(request, embeds, negative_embeds)
