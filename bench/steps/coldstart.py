"""Process start to first image, each variant in a fresh process (bench/run.py _first_image), page cache warm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..common import PROMPT, ROOT, cache_dir, checkpoint, denoise, job, save, size, timed

# Installed on the GPU machine's image but outside zimage-serve's dependencies (absent from a venv made
# from pyproject.toml, and from cluster/Dockerfile's image); diffusers and transformers import them when present.
NOT_OUR_DEPENDENCIES = ("peft", "sklearn", "scipy", "torchvision", "narwhals")
PYCACHE_PREFIX = "/tmp/pycache-prefix"
# (name, compile, hide what is not our dependency, keep bytecode, ZIMAGE_WEIGHTS_CACHE). "served": what a
# generator replica runs before it reports ready (serve_config's speed-ups and warm-up); "weights_cache":
# ZIMAGE_WEIGHTS_CACHE=1, the first run writes the bf16 copy, the next reads it
VARIANTS = (("eager", False, False, False, 0), ("eager_our_dependencies_only", False, True, False, 0),
            ("eager_bytecode", False, True, True, 0), ("eager_weights_cache_write", False, True, True, 1),
            ("eager_weights_cache", False, True, True, 1),
            ("served_cold_cache", "served", True, True, 0), ("served_warm_cache", "served", True, True, 0))
IMPORTS = ("import time; t = time.perf_counter(); import torch; t1 = time.perf_counter(); "
           "import diffusers.models.transformers.transformer_z_image, transformers.models.qwen3.modeling_qwen3; "
           "print(round(t1 - t, 2), round(time.perf_counter() - t1, 2))")


def _with_bytecode(env) -> dict:
    """``env`` where Python keeps the bytecode it compiles (under PYCACHE_PREFIX), as in an image made by
    pip, which compiles it at install. The GPU machine sets PYTHONDONTWRITEBYTECODE and its torch has no
    bytecode, so as it is every process compiles torch's modules again."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return dict(env, PYTHONPYCACHEPREFIX=PYCACHE_PREFIX)


def coldstart():
    """Process start to first image: eager as the machine is, as our image is, with the weights cache, served.

    Eager in the machine's environment as it is; then with only our dependencies importable and the bytecode
    kept (as in our image); with the bf16 weights cache; as a served replica (compile, CUDA graphs, warm-up),
    cold then warm compile cache. BENCH_COLDSTART: a comma-separated choice of variants; BENCH_IMPORTS=0 skips
    the import times; BENCH_QUICK skips the cold served start."""
    results = {"not_our_dependencies": NOT_OUR_DEPENDENCIES}
    cache = Path(cache_dir()) / "compile-cold"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(cache.parent / "weights", ignore_errors=True)
    if os.environ.get("BENCH_IMPORTS", "1") == "1":
        results["imports"] = _import_times()
    subprocess.run([sys.executable, "-c", "import zimage_serve.model.engine, zimage_serve.model.loader, diffusers, "
                    "transformers, accelerate, safetensors"], env=_with_bytecode(os.environ), check=False)  # writes the bytecode
    only = os.environ.get("BENCH_COLDSTART")
    for name, compile, hide, bytecode, weights in VARIANTS:
        if (os.environ.get("BENCH_QUICK") and name == "served_cold_cache") or (only and name not in only.split(",")):
            continue
        # a step before this one (in this process) named its compile cache in TORCHINDUCTOR_CACHE_DIR: not inherited
        inherited = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
        env = dict(inherited, BENCH_T0=str(time.time()), BENCH_COMPILE=str(compile), BENCH_HIDE=str(int(hide)),
                   ZIMAGE_CACHE_DIR=str(cache.parent), BENCH_CACHE=str(cache), ZIMAGE_WEIGHTS_CACHE=str(weights))
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "_first_image"],
                           env=_with_bytecode(env) if bytecode else env, capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("FIRST")]
        results[name] = json.loads(line[0][5:]) if line else {"error": r.stderr[-800:]}
        save("coldstart", **results)  # after each variant: a step cut short keeps what it measured


def _import_times() -> dict:
    """Seconds to import torch, diffusers' Z-Image model and transformers' Qwen3 in a fresh process, twice as
    the machine is, then twice with PYTHONPYCACHEPREFIX on a writable directory: whether the image's
    packages have to compile their bytecode on every start."""
    import importlib.util
    import sysconfig

    out = {"purelib": sysconfig.get_paths()["purelib"], "dont_write_bytecode": sys.flags.dont_write_bytecode,
           "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")}
    for pkg in ("torch", "transformers", "diffusers"):
        where = Path(importlib.util.find_spec(pkg).origin).parent
        out[f"{pkg}_dir"] = {"path": str(where), "writable": os.access(where, os.W_OK),
                             "has_pycache": (where / "__pycache__").is_dir()}
    for label, env in (("as_is", os.environ), ("pycache_prefix", _with_bytecode(os.environ))):
        for i in (1, 2):
            r = subprocess.run([sys.executable, "-c", IMPORTS], env=env, capture_output=True, text=True)
            torch_s, rest_s = (r.stdout.split() + ["nan", "nan"])[:2]
            out[f"{label}_{i}"] = {"torch_s": float(torch_s), "diffusers_transformers_s": float(rest_s)}
    print("imports", out, flush=True)
    return out


def first_image():
    """(internal) One cold start, in the process coldstart starts: prints FIRST and its marks as JSON."""
    t0 = float(os.environ["BENCH_T0"])
    marks = {"python_started": time.time() - t0}
    if os.environ.get("BENCH_HIDE") == "1":  # find_spec() says None and import fails, as if not installed
        sys.modules.update({name: None for name in NOT_OUR_DEPENDENCIES})
    from zimage_serve.model.engine import Engine, plan_for_this_machine
    from zimage_serve.model.imaging import encode_image
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.sources import resolve
    from zimage_serve.model.startup import warm_up

    marks["imports"] = time.time() - t0
    import diffusers.models.transformers.transformer_z_image  # noqa: F401  (Engine.load would import them: timed apart)
    import transformers.models.qwen3.modeling_qwen3  # noqa: F401

    marks["imports_diffusers_transformers"] = time.time() - t0
    served = os.environ["BENCH_COMPILE"] == "served"
    source = resolve(str(checkpoint()))
    marks["resolved"] = time.time() - t0
    side = size()
    plan = plan_for_this_machine(source, Workload(side, side, 4 if served else 1), "auto", "cpu")
    marks["planned"] = time.time() - t0
    speedups = {"compile": served or os.environ["BENCH_COMPILE"] == "1", "cache_dir": os.environ["BENCH_CACHE"]}
    if served:
        speedups.update(fuse=True, cuda_graphs=True)
    engine = Engine.load(source, plan, with_text_encoder=True, speedups=speedups)
    engine.set_progress(False)
    marks["loaded"] = time.time() - t0
    extra = {}
    if served:  # as GeneratorDeployment does before it reports ready
        import torch._dynamo.utils

        warm = warm_up(engine, side, side, (1, 2))
        marks["warmed_up"] = time.time() - t0
        counters = torch._dynamo.utils.counters
        extra = {"warmup_calls": warm.calls, "warmup_compile_s": round(warm.compile_s, 2),
                 "warmup_cuda_graph_capture_s": round(warm.cuda_graph_capture_s, 2), "dynamo_stats": dict(counters["stats"]),
                 "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                 "caches": {k: v for name in ("inductor", "aot_autograd") for k, v in counters[name].items() if "cache" in k},
                 "compile_times": torch._dynamo.utils.compile_times(repr="str")}
    embeds = engine.encode([PROMPT])[0]
    marks["encoded"] = time.time() - t0
    image = engine.generate([job(embeds)]).images[0]
    marks["generated"] = time.time() - t0
    encode_image(image, "png", 1)
    first = time.time() - t0
    if served:  # the denoise this replica then runs (the kernels its warm-up left: dynamic shapes)
        extra["denoise_s"] = round(timed(lambda: denoise(engine, embeds), reps=3), 3)
    print("FIRST" + json.dumps({"first_image_s": round(first, 1), "marks_s": {k: round(v, 1) for k, v in marks.items()},
                                "load_parts_s": {k: round(v, 1) for k, v in engine.loaded.seconds.items()}, **extra}), flush=True)
