"""The whole app's start on the CPU with the tiny checkpoint: seconds from the command to /readyz 200, ours against a
base revision and against Ray Serve's own ``serve run`` of the same application, in turn, in the same run. The CPU
proxy for the GPU's ``app_ready_warm_s`` (bench step ``scaleout``): Ray's and Serve's start and the replicas'
processes are what differs here, not the model's load (minutes, not a benchmark of the GPU).

    python bench/app_start_cpu.py                    # this checkout, and `serve run` of its application
    git worktree add /tmp/base REV && python bench/app_start_cpu.py --base /tmp/base --save
                                                     # against another revision too: bench/results/cpu/app_start.json
                                                     # (report.py reads it)

Each start is a fresh local Ray (no RAY_ADDRESS), stopped with SIGTERM before the next; the stages are the
command's own "up ... after the command started" line (serving/local.py: ``up_s`` and ``stages_s``) and the
generator's /readyz ``start``; ``stop_s``: SIGTERM to the command's exit. Ours drains its replicas gracefully on
SIGTERM; ``serve run`` exits through Ray's SIGTERM handler without shutting Serve down (it does on Ctrl-C, which it
waits on here): the stops don't compare like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import command_stages_once_up  # noqa: E402 (the "up" line's parser, shared with the scaleout steps)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, repo: Path, tmp: Path) -> dict:
    """One start of ``kind`` ("zimage-serve" or "serve run") of ``repo``'s application: seconds to /readyz 200."""
    port = _port()
    config = tmp / f"serve-{port}.yaml"
    config.write_text(json.dumps({"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
        {"name": "zimage", "route_prefix": "/", "import_path": "zimage_serve.app:build_app",
         "args": {"model": "tiny", "jobs": {"dir": str(tmp / "jobs")}}}]}))  # JSON is YAML
    command = [sys.executable, "-m", "zimage_serve.cli", "serve", "--config", str(config)] if kind == "zimage-serve" \
        else [sys.executable, "-c", "import sys; from ray.serve.scripts import cli; sys.exit(cli())", "run", str(config)]
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray (`serve run` refuses an empty one)
    log = tmp / f"{kind.replace(' ', '-')}-{port}.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp, start_new_session=True)
    ready, readyz = None, None
    try:
        while time.monotonic() - t0 < 300 and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                if r.status_code == 200:
                    ready, readyz = time.monotonic() - t0, r.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        if ready is None:
            raise RuntimeError(f"{kind} of {repo} never became ready:\n" + log.read_text()[-3000:])
        said = command_stages_once_up(log) if kind == "zimage-serve" else None  # (ours says its stages)
        result = {"ready_s": round(ready, 2), **(said or {"up_s": None, "stages_s": None}),
                  "generator_start": readyz.get("start")}
    finally:
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # (`serve run` waits on a SIGINT; both end on SIGTERM, ours gracefully)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # SIGTERM to the command's exit: ours drains every replica (none busy here), `serve run` just exits
    return {**result, "stop_s": round(time.monotonic() - t_stop, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose application to start (default: this one)")
    p.add_argument("--base", type=Path, help="another checkout, started in turn, to compare against")
    p.add_argument("--rounds", type=int, default=3, help="starts of each kind, taken in turn (default 3)")
    p.add_argument("--save", action="store_true", help="write bench/results/cpu/app_start.json")
    args = p.parse_args()
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/app_start_cpu.py", *sys.argv[1:]]),
              "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}"}
    kinds = [("ours", "zimage-serve", args.repo), ("serve_run", "serve run", args.repo)]
    if args.base is not None:
        kinds.insert(0, ("base", "zimage-serve", args.base))
    for key, kind, repo in kinds:
        revision = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
        result[key] = {"command": kind, "revision": revision, "runs": []}
    with tempfile.TemporaryDirectory(prefix="app-start-") as tmp:
        for _ in range(args.rounds):  # in turn: the machine's noise falls on each
            for key, kind, repo in kinds:
                result[key]["runs"].append(start(kind, repo.resolve(), Path(tmp)))
                print(key, json.dumps(result[key]["runs"][-1]), flush=True)
    for key, _, _ in kinds:
        for figure in ("ready_s", "stop_s"):
            result[key][f"median_{figure}"] = round(statistics.median(r[figure] for r in result[key]["runs"]), 2)
    for key in ("base", "serve_run"):
        if key in result:
            result[f"ours_to_{key}"] = round(result["ours"]["median_ready_s"] / result[key]["median_ready_s"], 3)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}
                     | {k: v["median_ready_s"] for k, v in result.items() if isinstance(v, dict)}))
    if args.save:
        out = ROOT / "bench" / "results" / "cpu" / "app_start.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", out.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
