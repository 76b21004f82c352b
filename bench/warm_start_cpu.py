"""A replica's compiled warm-up from a warm compile cache, on the CPU with the tiny checkpoint: the proxy for the
GPU's ``scaleout`` figures that runs anywhere (minutes, not a benchmark of the GPU).

Three fresh processes per checkout share an empty compile cache: the first compiles (and records the job's
dynamic dimensions), the second compiles what the first compiled static and the profile now makes dynamic, the
third is the warm replica that this reports: the warm-up's seconds per call (batch, caption
tokens), the seconds spent compiling (Dynamo's tracing and loading Inductor's cached code) and the graphs made.
The engine is the production one: fused projections, regional compile of the transformer's blocks, the VAE
decoder's GroupNorm+SiLU pairs compiled; warm-up batch sizes 1 and 2, as serve_config.yaml's generator. After the
warm-up each replica serves a few requests (batches of 1 to 4, prompts of mixed lengths, a long one) and reports
the graphs they compiled: what a request would wait for.

    python bench/warm_start_cpu.py                   # this checkout
    git worktree add /tmp/base REV && python bench/warm_start_cpu.py --base /tmp/base --save
                                                     # against another revision, in the same run, side by side:
                                                     # bench/results/cpu/warm_start.json (report.py reads it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_REPLICA = """
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from zimage_serve.model.engine import Engine
from zimage_serve.model.planner import Workload, make_plan
from zimage_serve.model.sizes import sizes_of
from zimage_serve.model.sources import resolve
from zimage_serve.model import startup

from zimage_serve.core.request import GenerationRequest
from zimage_serve.model.engine import Job

source = resolve("tiny")
engine = Engine.load(source, make_plan(sizes_of(source), None, Workload(64, 64, 4)), device="cpu", dtype="float32")
engine.set_progress(False)
speedups = {"compile": True, "fuse": True, "cuda_graphs": False, "cache_dir": sys.argv[2]}
import inspect
from zimage_serve.model.optim import accel
if "compile_artifacts" in inspect.signature(accel.accelerate).parameters:  # a revision that saves them: on, as served
    speedups["compile_artifacts"] = True
engine._accelerate(speedups)
graphs = startup.compiled_graphs()
warm = startup.warm_up(engine, 64, 64, (1, 2))
ready = startup.compiled_graphs()
t1 = time.perf_counter()
for prompts in (["a fox"], ["a fox"] * 4, ["a", "a lighthouse on a cliff at dusk, waves, volumetric light"],
                ["a", "b " * 40, "c"], ["word " * 100]):  # requests after it: batches up to 4, mixed and long prompts
    engine.generate([Job(GenerationRequest(p, seed=i, width=64, height=64, steps=2), engine.encode([p])[0])
                     for i, p in enumerate(prompts)])
print("WARM " + json.dumps({"repo": sys.argv[1], "warmup_s": round(warm.seconds, 2),
                            "compile_s": round(warm.compile_s, 2), "graphs": ready - graphs, "calls": warm.calls,
                            "requests_then": {"graphs_compiled": startup.compiled_graphs() - ready,
                                              "seconds": round(time.perf_counter() - t1, 2)},
                            "process_s": round(time.perf_counter() - t0, 2)}))
"""


def replica(repo: Path, cache: Path) -> dict:
    # one compile thread (a pool of compile processes costs more than it saves here); Inductor's check of the CPU's
    # vector instructions skipped (it compiles a program at each start: not what a GPU replica does), as the tests do
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1", "TORCHINDUCTOR_VEC_ISA_OK": "1", "PYTHONPATH": str(repo)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    r = subprocess.run([sys.executable, "-c", _REPLICA, str(repo), str(cache)], capture_output=True, text=True,
                       env=env, timeout=900)
    lines = [line for line in r.stdout.splitlines() if line.startswith("WARM ")]
    if not lines:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(lines[-1][5:])


def replicas_on_one_cache(repo: Path) -> dict:
    """The first (cold), second and third (warm) replicas of ``repo``, on one fresh compile cache. The second may
    still compile: a graph the first made with static shapes, the profile the first wrote makes dynamic."""
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        return {"cold": replica(repo, Path(tmp)), "second": replica(repo, Path(tmp)), "warm": replica(repo, Path(tmp))}


def main() -> int:
    import platform
    import time

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose zimage_serve to run (default: this one)")
    p.add_argument("--base", type=Path, help="another checkout, run in turn with the same steps, to compare against")
    p.add_argument("--save", action="store_true", help="write bench/results/cpu/warm_start.json")
    args = p.parse_args()
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/warm_start_cpu.py", *sys.argv[1:]]),
              "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}"}
    checkouts = [(key, repo) for key, repo in (("base", args.base), ("ours", args.repo)) if repo is not None]
    for key, repo in checkouts:
        result[key] = {"revision": subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                                  capture_output=True, text=True).stdout.strip(), "runs": []}
    for _ in range(2):  # each checkout twice, in turn (the machine's noise falls on both)
        for key, repo in checkouts:
            result[key]["runs"].append(replicas_on_one_cache(repo.resolve()))
            print(key, json.dumps(result[key]["runs"][-1]), flush=True)
    for key, _ in checkouts:  # the best cold and warm replica of each: the ones least disturbed
        for kind in ("cold", "warm"):
            result[key][kind] = min((r[kind] for r in result[key]["runs"]), key=lambda w: w["warmup_s"])
    if args.base is not None:
        for kind in ("cold", "warm"):
            ratio = round(result["ours"][kind]["warmup_s"] / result["base"][kind]["warmup_s"], 3)
            result[f"{kind}_warmup_ratio"] = ratio
            print(f"warm-up of the {kind} replica (best of 2), ours / base:", ratio)
    if args.save:
        out = ROOT / "bench" / "results" / "cpu" / "warm_start.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", out.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
