"""No hidden process state: importing the package writes nothing (the compile cache is one explicit call), a
load leaves diffusers' parallel-loading switch as it found it, and the PNG encoder's threads are the caller's
``workers``, never the machine's core count, with the same bytes for any count."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import tiny_app_config
from zimage_serve.model.imaging import encode_image
from zimage_serve.model.png import THREAD_PREFIX, encode_png

# Imports the third-party libraries first (some set variables of their own at import: torch._dynamo sets
# TORCHINDUCTOR_CACHE_DIR), then every module of the package, and reports what the package changed; then
# makes the one explicit call that sets the compile cache up, and reports what that changed.
_PROBE = """
import importlib, json, logging, os, pkgutil, sys, warnings
for m in ("torch", "torch._dynamo", "diffusers", "diffusers.models.modeling_utils", "transformers", "accelerate",
          "safetensors", "ray", "ray.serve", "ray.data", "modelscope", "fastapi", "PIL.Image", "numpy", "yaml", "tqdm"):
    importlib.import_module(m)
import torch
import diffusers.models.modeling_utils as mu
from torch.fx.experimental import _config as fx_config

def state():
    return {"env": dict(os.environ), "job_id": torch.compiler.config.job_id,
            "cache_size_limit": torch._dynamo.config.cache_size_limit, "threads": torch.get_num_threads(),
            "backed_size_oblivious": fx_config.backed_size_oblivious,
            "matmul_precision": torch.get_float32_matmul_precision(), "parallel_loading": mu.HF_ENABLE_PARALLEL_LOADING,
            "root_handlers": len(logging.getLogger().handlers), "root_level": logging.getLogger().level,
            "warning_filters": len(warnings.filters)}

def diff(a, b):
    env = {k: b["env"].get(k) for k in set(a["env"]) | set(b["env"]) if a["env"].get(k) != b["env"].get(k)}
    return {**({"env": env} if env else {}), **{k: [a[k], b[k]] for k in a if k != "env" and a[k] != b[k]}}

import zimage_serve
before = state()
names = sorted(m.name for m in pkgutil.walk_packages(zimage_serve.__path__, "zimage_serve.")
               if not m.name.endswith("__main__"))
for name in names:
    importlib.import_module(name)
imported = state()
from zimage_serve.model.optim.accel import compile_setup
compile_setup(sys.argv[1])
print(json.dumps({"modules": names, "import": diff(before, imported), "compile_setup": diff(imported, state())}))
"""


def test_importing_the_package_writes_no_state_and_compile_setup_is_the_explicit_call(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TORCHINDUCTOR_") and k not in ("TORCH_COMPILE_JOB_ID", "HF_ENABLE_PARALLEL_LOADING")}
    r = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "compile")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"zimage_serve.model.optim.accel", "zimage_serve.model.loader", "zimage_serve.model.png",
            "zimage_serve.serving.generator", "zimage_serve.batch.stages", "zimage_serve.cli"} <= set(out["modules"])
    assert out["import"] == {}, out["import"]
    setup = out["compile_setup"]
    assert setup["env"] == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "compile"), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
                            "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}
    assert setup["job_id"][1].startswith("zimage-serve-torch") and setup["cache_size_limit"][1] >= 64
    assert setup["backed_size_oblivious"] == [False, True]
    assert (tmp_path / "compile").is_dir()


# ---- diffusers' HF_ENABLE_PARALLEL_LOADING, scoped to one load -------------------------------------------

@pytest.fixture
def parallel_flag():
    """diffusers' module-global switch, put back after the test whatever happens."""
    import diffusers.models.modeling_utils as modeling_utils

    before = modeling_utils.HF_ENABLE_PARALLEL_LOADING
    yield modeling_utils
    modeling_utils.HF_ENABLE_PARALLEL_LOADING = before


def _cpu_plan(source):
    from zimage_serve.model.planner import Workload, make_plan
    from zimage_serve.model.sizes import sizes_of

    return make_plan(sizes_of(source), None, Workload(64, 64, 1))


@pytest.mark.parametrize("already", [False, True])
def test_a_load_leaves_parallel_loading_as_it_was(tiny_source, parallel_flag, already):
    from zimage_serve.model.loader import load, parallel_loading

    parallel_flag.HF_ENABLE_PARALLEL_LOADING = already
    with parallel_loading(not already):
        assert parallel_flag.HF_ENABLE_PARALLEL_LOADING is (not already)
    assert parallel_flag.HF_ENABLE_PARALLEL_LOADING is already
    with pytest.raises(KeyError), parallel_loading(not already):
        raise KeyError("a load that fails")
    assert parallel_flag.HF_ENABLE_PARALLEL_LOADING is already
    loaded = load(tiny_source, _cpu_plan(tiny_source), device="cpu", dtype="float32", with_text_encoder=False,
                  parallel=not already)
    assert loaded.pipe.transformer is not None
    assert parallel_flag.HF_ENABLE_PARALLEL_LOADING is already


def test_the_cuda_default_leaves_parallel_loading_as_it_was(tiny_source, parallel_flag):
    """device cuda turns parallel loading on by default (a plan for no GPU keeps every component on the CPU, so
    this runs on any machine): for that load only."""
    from zimage_serve.model.loader import load

    parallel_flag.HF_ENABLE_PARALLEL_LOADING = False
    load(tiny_source, _cpu_plan(tiny_source), device="cuda", dtype="float32", with_text_encoder=False)
    assert parallel_flag.HF_ENABLE_PARALLEL_LOADING is False


def test_a_failed_load_leaves_parallel_loading_as_it_was(tiny_path, tmp_path, parallel_flag):
    """A checkpoint that passes validation but whose transformer config doesn't match its weights: diffusers
    raises while loading, and the switch is back as it was."""
    import shutil

    from zimage_serve.model.loader import load
    from zimage_serve.model.sources import resolve

    broken = tmp_path / "broken"
    shutil.copytree(tiny_path, broken)
    config = json.loads((broken / "transformer" / "config.json").read_text())
    (broken / "transformer" / "config.json").write_text(json.dumps({**config, "in_channels": config["in_channels"] // 2}))
    source = resolve(str(broken))
    parallel_flag.HF_ENABLE_PARALLEL_LOADING = False
    with pytest.raises(ValueError, match="expected shape"):
        load(source, _cpu_plan(source), device="cpu", dtype="float32", with_text_encoder=False, parallel=True)
    assert parallel_flag.HF_ENABLE_PARALLEL_LOADING is False


# ---- the PNG encoder's threads: the caller's workers ---------------------------------------------------

def _pixels(height=1024, width=768, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx + yy) % 256, (xx * 3) % 256, (yy * 5) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def _png_threads(workers: int) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{THREAD_PREFIX}{workers}_")]


@pytest.mark.parametrize("shape", [(1024, 768), (300, 200), (31, 5)])
def test_the_same_bytes_for_any_worker_count(shape):
    pixels = _pixels(*shape)
    one = encode_png(pixels, 1, workers=1)
    assert all(encode_png(pixels, 1, workers=w) == one for w in (2, 4, 7))
    from PIL import Image

    assert encode_image(Image.fromarray(pixels), "png", 1, workers=4) == one
    assert encode_image(Image.fromarray(pixels), "png", 1) == one  # the default: one worker


def test_threads_are_bounded_by_workers():
    pixels = _pixels()  # 1024 rows: 16 bands, more than any worker count here
    for workers in (1, 3):
        for _ in range(3):
            encode_png(pixels, 1, workers=workers)
        assert 1 <= len(_png_threads(workers)) <= workers, [t.name for t in _png_threads(workers)]

    # many callers at once share the one pool of their worker count: never more threads than it
    errors = []

    def call():
        try:
            encode_png(pixels, 1, workers=2)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    callers = [threading.Thread(target=call) for _ in range(6)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not errors and 1 <= len(_png_threads(2)) <= 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            encode_png(pixels[:8], 1, workers=bad)


def test_the_batch_writer_encodes_on_its_own_workers(tmp_path):
    from zimage_serve.batch.stages import WriteStage, objects
    from zimage_serve.core.request import GenerationRequest

    pixels = _pixels(512, 256)
    request = GenerationRequest(prompt="a writer", seed=1, width=256, height=512)
    batch = {"id": np.array(["w-1"]), "stem": np.array(["w-1"]), "request": objects([request]),
             "pixels": objects([pixels]), "seconds": np.array([0.1]), "error": np.array([""])}
    row = WriteStage(str(tmp_path), png_workers=5)(batch)
    assert (tmp_path / row["file"][0]).read_bytes() == encode_png(pixels, 1, workers=1)
    assert 1 <= len(_png_threads(5)) <= 5
    assert WriteStage(str(tmp_path)).png_workers == 1  # it reserves no CPUs (batch/job.py): one by default


def test_the_generator_encodes_on_the_cpus_it_reserved(tiny_path):
    """A real Generator (encoding its prompts itself, as a GPU plan with room does) encodes each image with
    generator.num_cpus workers, at least one."""
    import asyncio
    import io

    from PIL import Image

    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.serving.generator import Generator

    request = GenerationRequest(prompt="a lighthouse", seed=3, width=64, height=64)
    for cpus, workers in ((6, 6), (0.5, 1)):
        generator = Generator(tiny_app_config(tiny_path, generator={"num_cpus": cpus, "encode_on": "gpu"}))
        assert generator.engine is not None, generator.reason
        out = asyncio.run(generator.generate(request, None))
        image = Image.open(io.BytesIO(out["image"]))
        assert out["image"] == encode_png(np.asarray(image.convert("RGB")), 1, workers=1)
        assert 1 <= len(_png_threads(workers)) <= workers
