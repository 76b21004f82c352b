"""Streaming with previews over HTTP (issue 21), on the Serve app with serve_config.yaml's generator (one replica):
the throughput of 64 requests from 16 clients streamed with ``partial_images: 3`` (previews from the latents'
clean estimate projected to RGB, encoded as PNG) against the same requests not streamed, the two interleaved
twice; and, one request in flight, the seconds to the first preview and to the image (and the plain route's p50)."""

from __future__ import annotations

import json
import statistics
import time

from ..common import save, size


def streaming(partial_images: int = 3):
    import asyncio

    import aiohttp

    from .edits import _production_generator
    from .http import _config, _start, _stop, saturate

    url = "http://127.0.0.1:8000/v1/images/generations"
    side = size()
    encoder = {"num_cpus": 8, "threads": 8, "max_batch_size": 8, "cache_size": 0}
    generator = {**_production_generator(), "max_queued_requests": 256}

    async def plain(session, i, _=None) -> float:
        body = {"prompt": f"a lighthouse at dusk #{i} {time.time()}", "seed": i, "size": f"{side}x{side}"}
        t = time.perf_counter()
        async with session.post(url, json=body) as r:
            await r.read()
            assert r.status == 200, (r.status, await r.text())
        return time.perf_counter() - t

    async def streamed(session, i, _=None) -> tuple[float, float, int]:
        """(seconds to the first preview, to the image, previews received)."""
        body = {"prompt": f"a lighthouse at dusk #{i} {time.time()}", "seed": i, "size": f"{side}x{side}",
                "stream": True, "partial_images": partial_images}
        t = time.perf_counter()
        first, previews = None, 0
        async with session.post(url, json=body) as r:
            assert r.status == 200, (r.status, await r.text())
            buffer = b""
            async for chunk in r.content.iter_any():  # (an image's event is one line of megabytes)
                buffer += chunk
                if b"\n\n" not in buffer[-len(chunk) - 1:]:  # no event ended in this chunk
                    continue
                *blocks, buffer = buffer.split(b"\n\n")
                for block in blocks:
                    event = json.loads(block.split(b"\ndata: ", 1)[1])
                    if event["type"].endswith("partial_image"):
                        previews += 1
                        first = first or time.perf_counter() - t
                    elif event["type"].endswith("completed"):
                        done = time.perf_counter() - t
                    else:
                        raise AssertionError(event)
        return first, done, previews

    async def run():
        res = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
            for i in range(3):
                await plain(s, i)
                await streamed(s, 10 + i)
            await saturate(plain, s, [None] * 16)
            await saturate(streamed, s, [None] * 16)
            single_plain = [await plain(s, 100 + i) for i in range(15)]
            single_streamed = [await streamed(s, 200 + i) for i in range(15)]
            res["plain_p50_s"] = round(statistics.median(single_plain), 4)
            res["first_preview_s"] = round(statistics.median(x[0] for x in single_streamed), 4)
            res["streamed_p50_s"] = round(statistics.median(x[1] for x in single_streamed), 4)
            res["previews_per_image"] = single_streamed[0][2]
            plain_rates, streamed_rates = [], []
            for _ in range(2):  # interleaved: drift hits both alike
                plain_rates.append(await saturate(plain, s, [None] * 64))
                streamed_rates.append(await saturate(streamed, s, [None] * 64))
            res["plain_throughput_img_s"] = [round(x, 3) for x in plain_rates]
            res["streamed_throughput_img_s"] = [round(x, 3) for x in streamed_rates]
            res["preview_throughput_ratio"] = round(sum(streamed_rates) / sum(plain_rates), 3)
            res["single_p50_ratio"] = round(res["streamed_p50_s"] / res["plain_p50_s"], 3)
        return res

    out = {"partial_images": partial_images, "size": f"{side}x{side}", "generator": generator}
    out["deploy_s"] = round(_start(_config(encoder, generator)), 1)
    out.update(asyncio.run(run()))
    from ray import serve

    info = serve.get_deployment_handle("Generator", app_name="zimage").info.remote().result()
    out.update(speedups=info["speedups"], plan=info["plan"])
    _stop()
    save("streaming", **out)
    print("STREAMING", {k: v for k, v in out.items() if not isinstance(v, dict)}, flush=True)
