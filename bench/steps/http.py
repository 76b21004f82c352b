"""The Serve app over HTTP on one GPU: one request in flight and saturation (http*), and the serving overhead
against the engine in-process, interleaved (overhead)."""

from __future__ import annotations

import json
import os
import statistics
import time

from ..common import PROMPT, cache_dir, checkpoint, elapsed, job, load_engine, save, size

URL = "http://127.0.0.1:8000/generate"


def _config(encoder: dict, generator: dict) -> dict:
    side = size()
    return {"model": str(checkpoint()), "default_size": f"{side}x{side}", "encoder": encoder, "jobs": {"enabled": False},
            "generator": {"num_gpus": 1, "max_batch_size": 4, "max_ongoing_requests": 8, **generator}}


def _start(config: dict) -> float:
    """A local Ray with this machine's CPUs, Serve on 127.0.0.1:8000 and the app deployed; returns the seconds
    the deployment took to be ready."""
    import ray
    from ray import serve

    from zimage_serve.app import build_app

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"ZIMAGE_CACHE_DIR": cache_dir()}})
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    t0 = time.time()
    serve.run(build_app(config), name="zimage", route_prefix="/", blocking=False)
    return time.time() - t0


def _stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


async def saturate(call, session, kinds: list, clients: int = 16) -> float:
    """Requests per second for ``call(session, i, kind)`` of each of ``kinds`` (i from 5000), ``clients`` at once."""
    import asyncio

    sem = asyncio.Semaphore(clients)

    async def limited(i, kind):
        async with sem:
            return await call(session, 5000 + i, kind)

    t = time.perf_counter()
    await asyncio.gather(*(limited(i, k) for i, k in enumerate(kinds)))
    return len(kinds) / (time.perf_counter() - t)


def steady_rate(done: list[float], skip: int, gap: float = 0.3) -> float:
    """Answers per second after the warm-up: the answers of one GPU batch arrive together (within ``gap``
    seconds), so count whole batches, from the end of the one that holds answer number ``skip`` to the end
    of the last."""
    batches = []  # [end time, answers]
    for t in sorted(done):
        if batches and t - batches[-1][0] < gap:
            batches[-1] = [t, batches[-1][1] + 1]
        else:
            batches.append([t, 1])
    seen = 0
    for first, (end, count) in enumerate(batches):
        seen += count
        if seen >= skip:
            break
    return sum(c for _, c in batches[first + 1:]) / (batches[-1][0] - batches[first][0])


def http(encode_on="cpu", fp8=False):
    """The Serve app over HTTP: one request in flight (PNG, then JPEG), then 64 requests from 16 clients.

    Prompts never cached. Images/s over all of them and in steady state (whole batches after the first 8
    answers: the first batches wait for the CPU encoders to warm up). Counts the requests whose prompt the
    generator encoded in each phase (``encode_on`` auto routes them by load). BENCH_REDEPLOY=1: then deploy
    again, on the compile cache this deployment filled."""
    import asyncio

    import aiohttp
    from ray import serve

    from zimage_serve.app import build_app

    config = _config({"num_cpus": 8, "threads": 8, "max_batch_size": 8, "cache_size": 0},
                     {"encode_on": encode_on, "fp8": fp8, "max_queued_requests": 256, "batch_wait_timeout_s": 0})
    deploy_s = _start(config)
    on_generator = {"single": 0, "saturation": 0}  # prompts the generator encoded (Server-Timing has text_encode)

    async def one(session, i, fmt="png", phase="single"):
        t = time.perf_counter()
        async with session.post(URL, json={"prompt": f"{PROMPT} #{i} {time.time()}", "seed": i, "output_format": fmt}) as r:
            await r.read()
            assert r.status == 200, r.status
            on_generator[phase] += "text_encode;" in r.headers.get("Server-Timing", "")
        return time.perf_counter() - t

    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            for i in range(3):
                await one(s, i)
            single = [await one(s, 100 + i) for i in range(20)]
            single_jpeg = sorted([await one(s, 200 + i, "jpeg") for i in range(10)])
            n, conc = 64, 16
            sem = asyncio.Semaphore(conc)
            done = []

            async def limited(i):
                async with sem:
                    latency = await one(s, 1000 + i, phase="saturation")
                    done.append(time.perf_counter())
                    return latency

            t = time.perf_counter()
            lat = await asyncio.gather(*(limited(i) for i in range(n)))
            return single, single_jpeg, n / (time.perf_counter() - t), lat, steady_rate(done, skip=8)

    single, single_jpeg, throughput, sat, steady = asyncio.run(run())
    single.sort()
    info = serve.get_deployment_handle("Generator", app_name="zimage").info.remote().result()
    step = "http" + ("" if encode_on == "cpu" else f"_{encode_on}") + ("_fp8" if fp8 else "")
    results = dict(deploy_s=round(deploy_s, 1), p50_s=round(statistics.median(single), 3),
                   jpeg_p50_s=round(statistics.median(single_jpeg), 3),
                   p95_s=round(single[int(0.95 * (len(single) - 1))], 3), single=[round(x, 3) for x in single],
                   throughput_img_s=round(throughput, 3), steady_throughput_img_s=round(steady, 3),
                   saturation_p50_s=round(statistics.median(sat), 3),
                   batches=info["batches"][-60:], gpu=info["gpu"], speedups=info["speedups"], plan=info["plan"],
                   encoded_on_generator=on_generator)
    save(step, **results)
    if os.environ.get("BENCH_REDEPLOY") == "1":  # new replicas on the compile cache this deployment filled
        serve.delete("zimage")
        t0 = time.time()
        serve.run(build_app(config), name="zimage", route_prefix="/", blocking=False)
        save(step, **results, redeploy_warm_cache_s=round(time.time() - t0, 1))
    _stop()


def overhead():
    """Serving overhead, interleaved: HTTP end to end over the engine in-process, one image at a time.

    The Serve app (prompts encoded on the GPU) and the engine in-process (the same placement) loaded side by
    side on one GPU, alternating, so both see the same machine at the same moment. Ratio of the medians.
    BENCH_GENERATOR_CPUS: the generator replica's num_cpus (default 1)."""
    import urllib.request

    from zimage_serve.model.imaging import encode_image

    config = _config({"num_cpus": 1, "cache_size": 0},
                     {"encode_on": "gpu", "num_cpus": float(os.environ.get("BENCH_GENERATOR_CPUS", 1))})
    eng = load_engine(encode_on="gpu", compile=True, batch=1, cuda_graphs=True)  # first: a replica's allocator keeps what it touched
    _start(config)
    stages_local, stages_http = [], []

    def in_process(i):
        t0 = time.perf_counter()
        embeds = eng.encode([f"{PROMPT} #{i} {time.time()}"])[0]
        t1 = time.perf_counter()
        result = eng.generate([job(embeds, seed=i)])
        t2 = time.perf_counter()
        encode_image(result.images[0], "png", 1)
        stages_local.append({"text_encode": t1 - t0, **result.seconds, "image_encode": time.perf_counter() - t2})

    def over_http(i):
        body = json.dumps({"prompt": f"{PROMPT} #{i} {time.time()}", "seed": i}).encode()
        req = urllib.request.Request(URL, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            timing = r.headers["Server-Timing"]
        stages_http.append({k: float(v) / 1000 for k, v in (part.split(";dur=") for part in timing.split(", "))})

    for i in range(3):
        in_process(i), over_http(i)
    stages_local.clear(), stages_http.clear()
    local, remote = [], []
    for i in range(15):
        local.append(elapsed(lambda: in_process(100 + i)))
        remote.append(elapsed(lambda: over_http(100 + i)))
        stages_http[-1]["client"] = remote[-1]
    p50_local, p50_http = statistics.median(local), statistics.median(remote)
    median = lambda rows: {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}
    save("overhead", in_process_p50_s=round(p50_local, 3), http_p50_s=round(p50_http, 3),
         overhead_ratio=round(p50_http / p50_local - 1, 4), in_process=[round(x, 3) for x in local],
         http=[round(x, 3) for x in remote], in_process_stages_p50_s=median(stages_local),
         http_stages_p50_s=median(stages_http), generator_num_cpus=config["generator"].get("num_cpus", 1))
    _stop()
