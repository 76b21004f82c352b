"""LoRA adapters through the engine's LoRA slots against the same engine without them, and stock diffusers' peft
path on the same transformer, in one process: denoise time (8 steps, batch 1, compiled, fused), the cost of a
cold adapter (read from page cache onto the GPU) and of a switch between held ones, and recompiles after warm-up
(``lora``, engine level); the same over HTTP on the Serve app with serve_config.yaml's generator (``lora_http``)."""

from __future__ import annotations

import statistics
import time

from ..common import checkpoint, compile_cache, denoise, load_engine, save, size, sync, timed


def lora(rank: int = 32):
    """Issue 18's figures on the engine: LoRA slots against no slots and against stock diffusers + peft."""
    # torch, diffusers and the engine: on the device, when the step runs (bench/steps/__init__.py)
    import torch
    from torch._dynamo.utils import counters

    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.adapters import slot_spec, transformer_shapes, read_adapter
    from zimage_serve.testing.lora import write_lora

    files = {name: str(write_lora(f"/tmp/lora-{name}", checkpoint(), rank=rank, seed=seed).parent)
             for name, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4))}
    out = {"rank": rank}
    eng = load_engine(compile=True, batch=1, fuse=True, cuda_graphs=False)
    embeds = eng.encode(["a lighthouse at dusk"])[0]
    denoise(eng, embeds)
    out["base_no_slots_denoise_s"] = round(timed(lambda: denoise(eng, embeds)), 3)
    del eng
    torch._dynamo.reset()
    torch.cuda.empty_cache()

    shapes = transformer_shapes(checkpoint())
    spec = slot_spec([read_adapter("a", files["a"], shapes)])
    from zimage_serve.model.engine import Engine, plan_for_this_machine  # (as above)
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.sources import resolve

    source = resolve(str(checkpoint()))
    plan = plan_for_this_machine(source, Workload(size(), size(), 1), "auto", "cpu")
    eng = Engine.load(source, plan, speedups={"compile": True, "fuse": True, "fp8": False, "cuda_graphs": False,
                                              "cache_dir": compile_cache()}, lora=spec)
    eng.set_progress(False)
    sync()
    t = time.perf_counter()
    eng.load_adapter("a", files["a"])
    sync()
    out["cold_adapter_load_s"] = round(time.perf_counter() - t, 3)
    for name in "bcd":
        eng.load_adapter(name, files[name])

    def run(adapter):
        eng._use_adapter(GenerationRequest("x", seed=0, adapter=adapter))
        return denoise(eng, embeds)

    run("a")
    run(None)
    before = dict(counters["stats"])
    out["slots_base_denoise_s"] = round(timed(lambda: run(None)), 3)
    out["adapter_denoise_s"] = round(timed(lambda: run("a")), 3)
    switches = []
    for i in range(20):
        sync()
        t = time.perf_counter()
        eng._use_adapter(GenerationRequest("x", seed=0, adapter="abcd"[i % 4], adapter_scale=1.0))
        sync()
        switches.append(time.perf_counter() - t)
    out["switch_s"] = round(sorted(switches)[len(switches) // 2], 4)
    out["round_robin_denoise_s"] = round(timed(lambda: [run(n) for n in "abcd"], reps=2) / 4, 3)
    after = dict(counters["stats"])
    out["recompiles_after_warmup"] = after.get("unique_graphs", 0) - before.get("unique_graphs", 0)
    out["p50_ratio"] = round(out["adapter_denoise_s"] / out["base_no_slots_denoise_s"], 3)
    out["mixed_ratio"] = round(out["base_no_slots_denoise_s"] / out["round_robin_denoise_s"], 3)
    del eng
    torch._dynamo.reset()
    torch.cuda.empty_cache()

    # stock: diffusers + peft on the same checkpoint, unfused and uncompiled (peft's wrappers), as users run it
    from diffusers import ZImagePipeline  # (as above)

    pipe = ZImagePipeline.from_pretrained(str(checkpoint()), torch_dtype=torch.bfloat16).to("cuda")
    pipe.set_progress_bar_config(disable=True)

    class _Stock:  # what bench.common.denoise needs of an engine
        device, loaded = torch.device("cuda"), type("L", (), {"dtype": torch.bfloat16})()

    stock = _Stock()
    stock.pipe = pipe
    denoise(stock, embeds)
    out["stock_base_denoise_s"] = round(timed(lambda: denoise(stock, embeds), reps=3), 3)
    sync()
    t = time.perf_counter()
    pipe.load_lora_weights(files["a"], adapter_name="a")
    sync()
    out["stock_load_lora_s"] = round(time.perf_counter() - t, 3)
    pipe.load_lora_weights(files["b"], adapter_name="b")
    t = time.perf_counter()
    for i in range(10):
        pipe.set_adapters(["ab"[i % 2]], [1.0])
    sync()
    out["stock_set_adapters_s"] = round((time.perf_counter() - t) / 10, 4)
    pipe.set_adapters(["a"], [1.0])
    out["stock_adapter_denoise_s"] = round(timed(lambda: denoise(stock, embeds), reps=3), 3)
    out["stock_p50_ratio"] = round(out["stock_adapter_denoise_s"] / out["stock_base_denoise_s"], 3)
    out["ours_vs_stock_adapter"] = round(out["adapter_denoise_s"] / out["stock_adapter_denoise_s"], 3)
    save("lora", **out)
    print("LORA", out, flush=True)


def lora_http(rank: int = 32):
    """Issue 18's figures over HTTP, the production default generator (serve_config.yaml's, one replica): an app
    without adapters (the base), then one serving 4 rank-``rank`` adapters: one request in flight (p50) for the
    base and an adapter, the first request for an adapter the replica does not hold yet, alternating two held
    ones, and 64 requests from 16 clients (the base alone, then the 4 adapters round-robin)."""
    import asyncio

    import aiohttp

    from zimage_serve.testing.lora import write_lora

    from .edits import _production_generator
    from .http import _config, _start, _stop, saturate

    files = {name: str(write_lora(f"/tmp/lora-{name}", checkpoint(), rank=rank, seed=seed).parent)
             for name, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4))}
    url = "http://127.0.0.1:8000/v1/images/generations"
    side = size()

    async def call(session, i, model=None) -> float:
        body = {"prompt": f"a lighthouse at dusk #{i} {time.time()}", "seed": i, "size": f"{side}x{side}",
                **({"model": model} if model else {})}
        t = time.perf_counter()
        async with session.post(url, json=body) as r:
            await r.read()
            assert r.status == 200, (r.status, await r.text())
        return time.perf_counter() - t

    p50 = lambda xs: round(statistics.median(xs), 4)
    generator = {**_production_generator(), "max_queued_requests": 256}
    encoder = {"num_cpus": 8, "threads": 8, "max_batch_size": 8, "cache_size": 0}
    out = {"rank": rank, "generator": generator}

    async def base_phase():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
            for i in range(3):
                await call(s, i)
            single = [await call(s, 100 + i) for i in range(20)]
            await saturate(call, s, [None] * 16)  # the saturated path warmed
            return {"base_p50_s": p50(single), "base_runs": [round(x, 3) for x in single],
                    "base_throughput_img_s": round(await saturate(call, s, [None] * 64), 3)}

    out["deploy_base_s"] = round(_start(_config(encoder, generator)), 1)
    out.update(asyncio.run(base_phase()))
    _stop()

    async def adapter_phase():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
            for i in range(3):
                await call(s, i)
            await call(s, 3, "a")
            res = {"slots_base_p50_s": p50([await call(s, 200 + i) for i in range(20)]),
                   "adapter_p50_s": p50([await call(s, 300 + i, "a") for i in range(20)])}
            res["cold_adapter_s"] = round(await call(s, 400, "b"), 4)  # b: not held by the replica yet
            await call(s, 401, "c"), await call(s, 402, "d")
            alternating = [await call(s, 500 + i, "ab"[i % 2]) for i in range(20)]
            res["alternating_p50_s"] = p50(alternating)
            await saturate(call, s, ["abcd"[i % 4] for i in range(16)])
            res["round_robin_throughput_img_s"] = round(await saturate(call, s, ["abcd"[i % 4] for i in range(64)]), 3)
            return res

    adapters = {name: {"source": path} for name, path in files.items()}
    config = {**_config(encoder, generator), "adapters": adapters}
    out["deploy_adapters_s"] = round(_start(config), 1)
    out.update(asyncio.run(adapter_phase()))
    from ray import serve

    info = serve.get_deployment_handle("Generator", app_name="zimage").info.remote().result()
    out.update(speedups=info["speedups"], plan=info["plan"], adapter_stats=info.get("adapter_stats"),
               recompiles=info.get("compiles_since_ready"))  # after the warm-up: every request's, switches among them
    _stop()
    out["p50_ratio"] = round(out["adapter_p50_s"] / out["base_p50_s"], 3)
    out["slots_base_p50_ratio"] = round(out["slots_base_p50_s"] / out["base_p50_s"], 3)
    out["cold_adapter_extra_s"] = round(out["cold_adapter_s"] - out["adapter_p50_s"], 3)
    out["switch_s"] = round(out["alternating_p50_s"] - out["adapter_p50_s"], 4)
    out["mixed_throughput_ratio"] = round(out["round_robin_throughput_img_s"] / out["base_throughput_img_s"], 3)
    save("lora_http", **out)
    print("LORA_HTTP", {k: v for k, v in out.items() if not isinstance(v, (dict, list))}, flush=True)
