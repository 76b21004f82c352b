"""What bench/run.py's steps share: where their results go, the checkpoint (and the ``build`` step that writes
it), timing, the engine as the steps load it, and the record of each run (``meta.json``: date, command line,
GPU, CPU, package versions), which bench/report.py reads.

Nothing here reads the environment, touches the disk or the GPU, or imports torch at import time: each
function does what it needs when called, and :func:`setup` (from bench/run.py's ``main``) prepares a run.

Environment: ``OUT`` (results, default /tmp/out), ``ZIMAGE_FULL_CKPT`` (the random-weight full-size checkpoint,
default /tmp/zfull; ``tiny``: the package's embedded tiny one, for a smoke test on a CPU), ``ZIMAGE_CACHE_DIR``
(default /tmp/zimage-cache), ``BENCH_SIZE`` (image side, default 1024).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = ("A cute cyberpunk cat with mechanical implants sitting on a neon-lit rooftop at night, "
          "rain reflections, 8k high definition, cinematic lighting, detailed fur texture")
META = "meta.json"  # a run's record, beside its steps' results (not a step: bench/report.py skips it)
PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "ray", "torchao", "zimage-serve")
RECORDED_ENV = ("ZIMAGE_FULL_CKPT", "ZIMAGE_CACHE_DIR", "ZIMAGE_WEIGHTS_CACHE", "ZIMAGE_DEVICE", "OUT")
GPU_FIELDS = ("name", "memory.total", "driver_version", "power.limit", "clocks.max.sm")


# ---- where things are ----------------------------------------------------------------------------------

def out_dir() -> Path:
    return Path(os.environ.get("OUT", "/tmp/out"))


def checkpoint() -> Path:
    """The full-size random-weight checkpoint (``build`` writes it), or with ZIMAGE_FULL_CKPT=tiny the embedded
    tiny one."""
    spec = os.environ.get("ZIMAGE_FULL_CKPT", "/tmp/zfull")
    if spec == "tiny":
        from zimage_serve.model.sources import resolve

        return Path(resolve("tiny").path)
    return Path(spec)


def size() -> int:
    """The image side the steps measure (1024 unless BENCH_SIZE says otherwise)."""
    return int(os.environ.get("BENCH_SIZE", "1024"))


def cache_dir() -> str:
    return os.environ.get("ZIMAGE_CACHE_DIR", "/tmp/zimage-cache")


def compile_cache() -> str:
    return cache_dir() + "/compile"


def setup() -> None:
    """Prepare a run: the results folder, and ZIMAGE_CACHE_DIR named for the processes the steps start."""
    os.environ.setdefault("ZIMAGE_CACHE_DIR", "/tmp/zimage-cache")
    out_dir().mkdir(parents=True, exist_ok=True)


def save(step: str, **results) -> None:
    """$OUT/<step>.json (rewritten as a step goes on: a step cut short keeps what it measured)."""
    results["step"] = step
    (out_dir() / f"{step}.json").write_text(json.dumps(results, indent=2))
    print("RESULT", json.dumps(results), flush=True)


_UP = re.compile(r"up ([0-9.]+)s after the command started: (.*)$", re.M)
_STAGE = re.compile(r"(.+?) ([0-9.]+)s(?:, |$)")  # one stage of the line: its name, its seconds


def command_stages(log: str) -> dict | None:
    """``zimage-serve serve``'s own account of its start (serving/local.py's "up ...s after the command started:
    Python and imports ...s, Ray ...s, Serve ...s, the application ...s" line, the last in ``log``):
    {"up_s", "stages_s": {stage: seconds}}, or None where the log has none (a revision without it)."""
    lines = _UP.findall(log)
    if not lines:
        return None
    up, stages = lines[-1]
    return {"up_s": float(up), "stages_s": {name: float(s) for name, s in _STAGE.findall(stages)}}


def command_stages_once_up(log: Path, timeout_s: float = 30) -> dict | None:
    """:func:`command_stages` of ``zimage-serve serve``'s log once its banner is there (a moment after /readyz: the
    command polls the app's status), waiting at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and " is up at " not in log.read_text(errors="replace"):
        time.sleep(0.1)
    return command_stages(log.read_text(errors="replace"))


def build() -> None:
    """The full-size checkpoint with random weights, written on the GPU unless it is there already."""
    from zimage_serve.testing.checkpoint import write_checkpoint

    ckpt = checkpoint()
    t = time.time()
    if not (ckpt / "model_index.json").exists():
        write_checkpoint(ckpt, "full", device="cuda")
    save("build", seconds=round(time.time() - t, 1), bytes=int(subprocess.run(
        ["du", "-sb", str(ckpt)], capture_output=True, text=True).stdout.split()[0]))


# ---- HTTP ----------------------------------------------------------------------------------------------

def http_call(method: str, url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict, bytes]:
    """(status, headers, bytes) with the standard library (the GPU machine has no httpx); a connection that fails
    raises OSError."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# ---- timing and memory ---------------------------------------------------------------------------------

def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def elapsed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timed(fn, reps=5, warm=1) -> float:
    """Median seconds of ``reps`` calls after ``warm`` untimed ones, the GPU synchronized around each."""
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _gib(counter: str, since: int, digits: int) -> float | None:
    import torch

    return round((getattr(torch.cuda, counter)() - since) / 2**30, digits) if torch.cuda.is_available() else None


def peak_gib(since: int = 0, digits: int = 2) -> float | None:
    """GiB allocated at the peak since reset_peak (less ``since`` bytes); None without a GPU."""
    return _gib("max_memory_allocated", since, digits)


def reserved_gib(digits: int = 2) -> float | None:
    return _gib("max_memory_reserved", 0, digits)


def allocated_gib(digits: int = 2) -> float | None:
    return _gib("memory_allocated", 0, digits)


def safe(fn, *args):
    """``fn(*args)``, or its error: a measurement aid must not lose the step's figures."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)[:300]}


# ---- the engine as the steps use it --------------------------------------------------------------------

def load_engine(policy="auto", encode_on="cpu", compile=True, fp8=False, batch=4, fuse=True, cuda_graphs=False):
    """The engine on the checkpoint, planned for this machine at size() x size() and ``batch`` images."""
    from zimage_serve.model.engine import Engine, plan_for_this_machine
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.sources import resolve

    source = resolve(str(checkpoint()))
    plan = plan_for_this_machine(source, Workload(size(), size(), batch), policy, encode_on)
    engine = Engine.load(source, plan, speedups={"compile": compile, "fp8": fp8, "fuse": fuse, "cuda_graphs": cuda_graphs,
                                                 "cache_dir": compile_cache()})
    engine.set_progress(False)
    return engine


def engine_with_job(**load):
    """(engine, embeddings of PROMPT, the job of one image from them, seed 1): load_engine(**load) and what most
    steps measure with it."""
    engine = load_engine(**load)
    embeds = engine.encode([PROMPT])[0]
    return engine, embeds, job(embeds)


def job(embeds, seed: int = 1, side: int | None = None, steps: int = 8, prompt: str = PROMPT):
    """One image to make from ``embeds`` (the encoding of ``prompt``), unguided, at side x side."""
    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Job

    side = side or size()
    return Job(GenerationRequest(prompt, seed=seed, width=side, height=side, steps=steps), embeds)


def denoise(engine, embeds, steps: int = 8, side: int | None = None):
    """The denoise alone (no decode), batch 1, seed 0, as Engine.generate runs it: the seed's CPU noise, the
    embeddings on the engine's device and dtype, inference mode (CUDA graphs keep the mode they were captured
    in). Returns the latents."""
    import torch

    pipe, side = engine.pipe, side or size()
    with torch.inference_mode():
        noise = pipe.prepare_latents(1, pipe.transformer.in_channels, side, side, torch.float32, engine.device,
                                     torch.Generator("cpu").manual_seed(0))
        return pipe(prompt_embeds=[embeds.to(engine.device, engine.loaded.dtype, non_blocking=True)], latents=noise,
                    height=side, width=side, num_inference_steps=steps, guidance_scale=0.0, output_type="latent").images


def load_vae(lean: bool = True):
    """The checkpoint's VAE on the GPU in bf16, with the lean decoder (lean_vae.py) unless ``lean`` is False."""
    import torch
    from diffusers import AutoencoderKL

    from zimage_serve.model.optim.lean_vae import lean_decoder

    vae = AutoencoderKL.from_pretrained(checkpoint(), subfolder="vae", dtype=torch.bfloat16).to("cuda").eval()
    if lean:
        lean_decoder(vae)
    return vae


def pixels(engine, one_job):
    """The image of ``one_job`` as a float32 array, for differences between variants."""
    import numpy as np

    return np.asarray(engine.generate([one_job]).images[0], dtype=np.float32)


def pixel_diff(a, b, digits: int = 3) -> tuple[float, int]:
    """(mean, max) absolute difference of two images' pixels."""
    import numpy as np

    d = np.abs(a - b)
    return round(float(d.mean()), digits), int(d.max())


# ---- the record of a run -------------------------------------------------------------------------------

def _versions() -> dict:
    """The installed versions of the packages that the figures depend on (None: not installed)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _gpus() -> list[dict] | None:
    """nvidia-smi's view of the GPUs (no CUDA context is made); None where there is none."""
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode:
        return None
    return [dict(zip(GPU_FIELDS, (v.strip() for v in line.split(",")))) for line in r.stdout.splitlines() if line.strip()]


def _cpu() -> dict:
    info = {"count": os.cpu_count(), "model": None, "amx": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and info["model"] is None:
            info["model"] = value.strip()
        if key.strip() == "flags" and info["amx"] is None:
            info["amx"] = "amx_bf16" in value.split()
    return info


def _command(argv: list[str]) -> str:
    """The command as it would be typed: the BENCH_* settings, then python3 and the arguments."""
    settings = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")]
    return " ".join(settings + ["python3", *map(shlex.quote, argv)])


def record_run(argv: list[str]) -> dict:
    """Write $OUT/meta.json for this invocation of bench/run.py (an earlier one's record in the same folder is
    kept under ``earlier``); returns it, for :func:`record_step`."""
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": _command(argv),
            "argv": argv, "cwd": os.getcwd(),
            "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("BENCH_") or k in RECORDED_ENV},
            "gpus": _gpus(), "cpu": _cpu(), "versions": _versions(), "steps": []}
    path = out_dir() / META
    if path.exists():
        try:
            earlier = json.loads(path.read_text())
            meta["earlier"] = earlier.pop("earlier", []) + [earlier]
        except ValueError:
            pass
    path.write_text(json.dumps(meta, indent=2))
    return meta


def record_step(meta: dict, step: str, seconds: float, ok: bool) -> None:
    meta["steps"].append({"step": step, "seconds": round(seconds, 1), "ok": ok})
    (out_dir() / META).write_text(json.dumps(meta, indent=2))
