"""GPU smoke test of the layered package on the tiny checkpoint (minutes, not a benchmark): what the CPU test
suite can't reach. The engine on CUDA with every speed-up the production plan applies (fused projections,
regional compile, CUDA graphs, the compiled VAE norms; FP8 where the GPU has it) against stock diffusers on
the same GPU, then the whole Serve app with a one-GPU generator replica over real HTTP.

    python3 bench/gpu_smoke.py            # writes $OUT/gpu_smoke.json (or bench/results/gpu_smoke.json)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository root, for bench
from bench.common import http_call  # noqa: E402


def _engine_vs_stock(source) -> dict:
    import numpy as np
    import torch
    from diffusers import ZImagePipeline

    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Engine, Job, plan_for_this_machine
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.startup import warm_up

    out = {}
    stock = ZImagePipeline.from_pretrained(source.path, dtype=torch.bfloat16).to("cuda")
    stock.set_progress_bar_config(disable=True)
    requests = [GenerationRequest("a lighthouse at dusk", seed=s, width=256, height=256) for s in (1, 2)]
    reference = [np.asarray(stock(prompt=r.prompt, width=r.width, height=r.height, num_inference_steps=r.steps,
                                  guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(r.seed)).images[0],
                            dtype=np.int16) for r in requests]
    plan = plan_for_this_machine(source, Workload(256, 256, 2))
    for name, speedups in (("eager", None), ("production", {"compile": True, "fuse": True, "cuda_graphs": True}),
                           ("fp8", {"compile": True, "fuse": True, "fp8": True})):
        try:
            t0 = time.perf_counter()
            engine = Engine.load(source, plan, speedups=speedups)
            engine.set_progress(False)
            if speedups:
                warm_up(engine, 256, 256, (1, 2))
            load_s = time.perf_counter() - t0
            embeds = engine.encode([r.prompt for r in requests])
            result = engine.generate([Job.of(r, [e]) for r, e in zip(requests, embeds)])
            diffs = [int(np.abs(np.asarray(i, dtype=np.int16) - ref).max()) for i, ref in zip(result.images, reference)]
            out[name] = {"load_and_warmup_s": round(load_s, 1), "max_pixel_diff_vs_stock": diffs,
                         "speedups": engine.speedups, "batch_sizes": result.batch_sizes, "gpu": engine.gpu_info()}
            del engine
            torch.cuda.empty_cache()
        except Exception as e:  # report and go on: the table says which variant failed and why
            out[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return out


def _adapters_vs_stock(source) -> dict:
    """A LoRA adapter through the production plan's folded slots (compiled, fused, CUDA graphs) against stock
    diffusers + peft in bf16 on the same GPU; the base image differs from it, and the adapter's image after the
    base's is the first one again, bit for bit."""
    import tempfile

    import numpy as np
    import torch
    from diffusers import ZImagePipeline

    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.adapters import read_adapter, slot_spec, transformer_shapes
    from zimage_serve.model.engine import Engine, Job, plan_for_this_machine
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.startup import warm_up
    from zimage_serve.testing.lora import write_lora

    path = str(write_lora(Path(tempfile.mkdtemp()) / "ink", source.path, rank=4, seed=1).parent)
    stock = ZImagePipeline.from_pretrained(source.path, dtype=torch.bfloat16).to("cuda")
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(path, adapter_name="ink")
    stock.set_adapters(["ink"], [0.8])
    request = GenerationRequest("a lighthouse at dusk", seed=1, width=256, height=256)
    pixels = lambda image: np.asarray(image, dtype=np.int16)
    reference = pixels(stock(prompt=request.prompt, width=256, height=256, num_inference_steps=request.steps,
                             guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(1)).images[0])
    del stock
    torch.cuda.empty_cache()
    plan = plan_for_this_machine(source, Workload(256, 256, 2))
    spec = slot_spec([read_adapter("ink", path, transformer_shapes(source.path))])
    engine = Engine.load(source, plan, speedups={"compile": True, "fuse": True, "cuda_graphs": True}, lora=spec)
    engine.set_progress(False)
    warm_up(engine, 256, 256, (1, 2))
    engine.load_adapter("ink", path, scale=0.8)
    embeds = engine.encode([request.prompt])
    with_adapter = engine.generate([Job.of(GenerationRequest(request.prompt, seed=1, width=256, height=256,
                                                             adapter="ink"), embeds)]).images[0]
    base = engine.generate([Job.of(request, embeds)]).images[0]
    again = engine.generate([Job.of(GenerationRequest(request.prompt, seed=1, width=256, height=256, adapter="ink"),
                                    embeds)]).images[0]
    return {"speedups": engine.speedups, "max_pixel_diff_vs_stock_peft": int(np.abs(pixels(with_adapter) - reference).max()),
            "adapter_changed_the_image": bool(np.abs(pixels(with_adapter) - pixels(base)).max() > 0),
            "adapter_again_after_base_diff": int(np.abs(pixels(again) - pixels(with_adapter)).max())}


def _served(source) -> dict:
    import base64

    import ray
    from ray import serve

    from zimage_serve.app import build_app

    ray.init(include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    config = {"model": str(source.path), "default_size": "256x256", "max_side": 512,
              "generator": {"num_gpus": 1, "plan_size": "256x256", "max_batch_size": 2},
              "encoder": {"num_cpus": 1}}
    t0 = time.perf_counter()
    serve.run(build_app(config), name="smoke", route_prefix="/", blocking=False)
    url, out = "http://127.0.0.1:8123", {}
    status, ready = 0, b"{}"
    while time.perf_counter() - t0 < 300:
        try:
            status, _, ready = http_call("GET", f"{url}/readyz", timeout=10)
            if status == 200:
                break
        except OSError:
            pass
        time.sleep(1)
    out["ready_s"] = round(time.perf_counter() - t0, 1)
    ready = json.loads(ready)
    out["readyz"] = {k: ready.get(k) for k in ("ready", "reason", "plan", "gpu", "speedups", "random_weights")}
    status, headers, _ = http_call("POST", f"{url}/generate", {"prompt": "a lighthouse", "seed": 3})
    out["generate"] = {"status": status, "type": headers.get("content-type"), "server_timing": headers.get("server-timing")}
    status, _, raw = http_call("POST", f"{url}/v1/images/generations", {"prompt": "a tram", "n": 2, "seed": 5})
    body = json.loads(raw)
    out["images"] = {"status": status, "seeds": [d["seed"] for d in body.get("data", [])],
                     "bytes": [len(base64.b64decode(d["b64_json"])) for d in body.get("data", [])]}
    out["models"] = json.loads(http_call("GET", f"{url}/v1/models")[2])
    serve.shutdown()
    ray.shutdown()
    return out


def main() -> int:
    from zimage_serve.model.sources import resolve

    source = resolve("tiny")
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    results["engine"] = _engine_vs_stock(source)
    try:
        results["adapter"] = _adapters_vs_stock(source)
    except Exception as e:  # noqa: BLE001 (reported in the table, the rest still runs)
        results["adapter"] = {"error": f"{type(e).__name__}: {e}"[:800]}
    results["served"] = _served(source)
    out_dir = Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_smoke.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
