"""GPU benchmark of zimage-serve against stock diffusers, side by side on one machine.

Run on the GPU machine (BENCHMARKS.md has the exact device commands of each run); each step stays
well under 10 minutes and writes $OUT/<step>.json, and each run records $OUT/meta.json (date, command
line, GPU, CPU, package versions):

    python bench/run.py build stock engine       # checkpoint, stock diffusers, the engine in-process
    python bench/run.py fusion fp8 vram probe    # denoise step by step; FP8 vs bf16; VAE memory; imports
    python bench/run.py coldstart                # process start to first image
    python bench/run.py http_gpu http http_fp8   # the Serve app over HTTP (p50, throughput)
    python bench/run.py engine_gpu overhead      # in-process e2e; HTTP vs in-process, interleaved
    python bench/run.py graphs decode            # CUDA graphs over the block stacks; VAE decode variants
    python bench/run.py te peak                  # GPU text encoder compiled; peak VRAM as served (and with the whole decoder compiled)
    python bench/run.py build startup_profile scaleout_cold scaleout scaleout_zero
                                                 # a replica's start by stage; the app cold/warm, a replica killed, from zero
    python bench/run.py --list                   # every step, with what it measures
    python bench/report.py                       # (here) -> bench/results/latest.json and BENCHMARKS.md

Weights are random (real ones can't be fetched there): speed and memory are real, images are noise.
The steps live in bench/steps/ (one module per family), what they share in bench/common.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parser(steps: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="steps: " + " ".join(
        name for name in steps if not name.startswith("_")), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps", nargs="*", metavar="STEP", help="steps to run, in this order")
    p.add_argument("--list", action="store_true", help="list the steps with what each measures, and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    if str(ROOT) not in sys.path:  # run as a file: bench/ is on the path, the repository root may not be
        sys.path.insert(0, str(ROOT))
    from bench import common
    from bench.steps import STEPS, function, summary

    argv = sys.argv[1:] if argv is None else argv
    args = _parser(STEPS).parse_args(argv)
    if args.list:
        for name in STEPS:
            if not name.startswith("_"):
                print(f"{name:14} {summary(name)}")
        return 0
    if not args.steps:
        _parser(STEPS).print_help()
        return 0
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        _parser(STEPS).error(f"unknown step(s): {' '.join(unknown)} (--list shows them)")
    common.setup()
    # the internal step (a cold start in a fresh process) leaves the run's record to the run that started it
    meta = common.record_run(["bench/run.py", *argv]) if any(not s.startswith("_") for s in args.steps) else None
    for step in args.steps:
        t = time.time()
        ok = True
        try:
            function(step)()
        except Exception as e:  # keep going: one failed step must not lose the others
            import traceback

            traceback.print_exc()
            common.save(step, error=repr(e)[:500])
            ok = False
        if meta is not None:
            common.record_step(meta, step, time.time() - t, ok)
        print(f"step {step} took {time.time() - t:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
