"""Load test of the served tiny checkpoint on this machine (CPU): every request must be answered.

    python bench/loadtest.py --requests 2000 --clients 64            # bounded queue: 200 or 503
    python bench/loadtest.py --requests 600 --clients 64 --unbounded --timeout 5   # 200 or 504, none past it

Starts a local Ray cluster and the real application (tiny checkpoint), sends the requests from
asyncio clients over real HTTP, samples the ingress's pending images from /readyz, and prints a
JSON summary: counts by status (they must add up to the requests sent), latency percentiles,
queue depth. Exits non-zero when a request is lost, errors at the connection level, or gets a
status other than 200/503 (504 with --unbounded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))] if values else None


async def drive(url: str, requests: int, clients: int, timeout: float, kill: str | None = None, app: str = "") -> dict:
    import httpx

    results, errors, depth = [], [], []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def client(c: httpx.AsyncClient):
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t = time.perf_counter()
            try:
                r = await c.post(f"{url}/generate", json={"prompt": f"load {i % 50}", "width": 64, "height": 64,
                                                          "seed": i}, timeout=timeout)
                ok = r.status_code != 200 or (r.headers.get("x-seed") == str(i) and r.content[:8] == b"\x89PNG\r\n\x1a\n"
                                              and r.content[16:24] == (64).to_bytes(4, "big") * 2)  # IHDR: 64x64
                retry = r.headers.get("retry-after")
                results.append((r.status_code, time.perf_counter() - t, ok, retry))
            except Exception as e:  # a lost request
                errors.append(repr(e)[:200])

    async def sample(c: httpx.AsyncClient, stop: asyncio.Event):
        while not stop.is_set():
            try:
                depth.append((await c.get(f"{url}/readyz", timeout=5)).json().get("pending_images", 0))
            except Exception:
                pass
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits) as c:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(c, stop))
        t0 = time.perf_counter()
        killer = asyncio.create_task(asyncio.to_thread(kill_replica, app, kill)) if kill else None
        await asyncio.gather(*(client(c) for _ in range(clients)))
        recovery = await killer if killer else None
        wall = time.perf_counter() - t0
        stop.set()
        await sampler
    codes: dict[int, int] = {}
    for code, *_ in results:
        codes[code] = codes.get(code, 0) + 1
    ok_lat = [lat for code, lat, *_ in results if code == 200]
    all_lat = [lat for _, lat, *_ in results]
    return {
        **({"killed": kill, "replaced_after_s": recovery} if kill else {}),
        "sent": requests, "answered": len(results), "connection_errors": len(errors), "errors": errors[:5],
        "by_status": codes, "bad_images": sum(1 for *_, ok, _ in results if not ok),
        "retry_after_missing": sum(1 for code, _, _, retry in results if code == 503 and not retry),
        "wall_s": round(wall, 1), "throughput_req_s": round(len(results) / wall, 1),
        "latency_200_s": {"p50": round(statistics.median(ok_lat), 3) if ok_lat else None,
                          "p99": round(percentile(ok_lat, 0.99), 3) if ok_lat else None},
        "latency_all_s": {"p50": round(statistics.median(all_lat), 3) if all_lat else None,
                          "p99": round(percentile(all_lat, 0.99), 3) if all_lat else None,
                          "max": round(max(all_lat), 3) if all_lat else None},
        "queue_depth": {"max": max(depth, default=0), "mean": round(statistics.mean(depth), 1) if depth else 0,
                        "samples": len(depth)},
    }


def kill_replica(app: str, deployment: str, after_s: float = 2.0) -> float | None:
    """SIGKILL the replica's process; seconds until Serve answers from a new one (None: never)."""
    import signal

    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=app)
    pid = handle.info.remote().result()["pid"]
    time.sleep(after_s)
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        try:
            if handle.info.remote().result(timeout_s=5)["pid"] != pid:
                return round(time.monotonic() - t0, 1)
        except Exception:
            pass
        time.sleep(0.1)
    return None


def run(requests: int, clients: int, unbounded: bool = False, timeout_s: float = 5.0, model: str = "tiny",
        max_queued: int = 16, kill: str | None = None) -> dict:
    import ray
    from ray import serve

    from zimage_serve.app import build_app

    generator = {"num_gpus": 0, "max_batch_size": 4, "max_ongoing_requests": 8, "batch_wait_timeout_s": 0.01,
                 "max_queued_requests": -1 if unbounded else max_queued}
    config = {"model": model, "default_size": "64x64", "generator": generator,
              "encoder": {"num_cpus": 1, "max_batch_size": 16}}
    if unbounded:
        config["request_timeout_s"] = timeout_s
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=8, include_dashboard=False, logging_level="ERROR")
        serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ.get("LOADTEST_PORT", "8123"))})
    name = "loadtest-unbounded" if unbounded else "loadtest"
    serve.run(build_app(config), name=name, route_prefix=f"/{name}", blocking=False)
    port = serve.context._global_client.http_config.port if hasattr(serve.context, "_global_client") and \
        serve.context._global_client else int(os.environ.get("LOADTEST_PORT", "8123"))
    url = f"http://127.0.0.1:{port}/{name}"
    summary = asyncio.run(drive(url, requests, clients, timeout=timeout_s + 60, kill=kill, app=name))
    summary["config"] = {"clients": clients, "unbounded": unbounded, "request_timeout_s": config.get("request_timeout_s"),
                         "max_queued_requests": generator["max_queued_requests"]}
    allowed = {200, 504} if unbounded else {200, 503}
    summary["reconciles"] = summary["answered"] + summary["connection_errors"] == requests and \
        sum(summary["by_status"].values()) == requests
    summary["ok"] = (summary["reconciles"] and not summary["connection_errors"] and summary["bad_images"] == 0
                     and set(map(int, summary["by_status"])) <= allowed and summary["retry_after_missing"] == 0
                     and (not unbounded or summary["latency_all_s"]["max"] <= timeout_s + 2)
                     and (not kill or summary["replaced_after_s"] is not None))
    serve.delete(name)
    if started_here:
        serve.shutdown()
        ray.shutdown()
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--unbounded", action="store_true", help="no queue bound; a request timeout instead")
    p.add_argument("--timeout", type=float, default=5.0, help="request_timeout_s with --unbounded")
    p.add_argument("--max-queued", type=int, default=16)
    p.add_argument("--out", help="also write the JSON summary to this file")
    p.add_argument("--kill", choices=["Generator", "PromptEncoder"], help="SIGKILL this replica 2 s into the run")
    args = p.parse_args()
    summary = run(args.requests, args.clients, args.unbounded, args.timeout, max_queued=args.max_queued, kill=args.kill)
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
