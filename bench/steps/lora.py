"""LoRA adapters through the engine's LoRA slots against the same engine without them, and stock diffusers' peft
path on the same transformer, in one process: denoise time (8 steps, batch 1, compiled, fused), the cost of a
cold adapter (read from page cache onto the GPU) and of a switch between held ones, and recompiles after warm-up.
Engine level (no HTTP): the issue's HTTP p50 and 16-client mixed throughput are not measured here."""

from __future__ import annotations

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
