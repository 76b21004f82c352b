"""Serving overhead on CPU with the tiny checkpoint: the Serve app over HTTP and the engine in-process,
one image at a time, interleaved. It isolates the fixed per-request cost of the HTTP/Serve path
(the GPU figure is bench/run.py's `overhead` step).

    python bench/overhead_cpu.py [--size 64] [--requests 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--port", type=int, default=8011)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))  # run as a file: the repository root, for the package

    import ray
    from ray import serve

    from zimage_serve.app import build_app
    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Engine, Job, plan_for_this_machine
    from zimage_serve.model.imaging import encode_image
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.sources import resolve

    source = resolve("tiny")
    engine = Engine.load(source, plan_for_this_machine(source, Workload(a.size, a.size, 1), encode_on="gpu", device="cpu"))
    engine.set_progress(False)
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(build_app({"model": "tiny", "default_size": f"{a.size}x{a.size}", "encoder": {"cache_size": 0},
                         "generator": {"num_gpus": 0, "encode_on": "gpu", "warmup": False}}),
              name="overhead", route_prefix="/", blocking=False)

    def in_process(i):
        request = GenerationRequest(f"a cat {i} {time.time()}", seed=i, width=a.size, height=a.size)
        job = Job.of(request, engine.encode(list(request.texts)))
        return encode_image(engine.generate([job]).images[0], "png", 1)

    def over_http(i):
        body = json.dumps({"prompt": f"a cat {i} {time.time()}", "seed": i}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{a.port}/generate", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.read()

    def timed(fn, i):
        t = time.perf_counter()
        fn(i)
        return time.perf_counter() - t

    for i in range(5):
        in_process(i), over_http(i)
    local, http = [], []
    for i in range(a.requests):
        local.append(timed(in_process, 100 + i))
        http.append(timed(over_http, 100 + i))
    p_local, p_http = statistics.median(local), statistics.median(http)
    print(json.dumps({"size": a.size, "in_process_p50_s": round(p_local, 4), "http_p50_s": round(p_http, 4),
                      "overhead_s": round(p_http - p_local, 4)}))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
