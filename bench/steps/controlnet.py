"""ControlNet (issue 20): stock diffusers' ZImageControlNetPipeline end to end against a control request over HTTP on
the Serve app (serve_config.yaml's generator, one replica), both with the same full-size random Union-2.1 ControlNet
(15 control layers, 3.36 B parameters, the single file as published); a plain generation on each side; peak VRAM;
the staging plan on a 24 GiB card."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..common import PROMPT, checkpoint, peak_gib, reset_peak, save, size, sync

CONTROLNET = Path("/tmp/zcontrolnet-2.1.safetensors")
GiB = 2**30


def controlnet_file() -> Path:
    """The full-size random 2.1 Union ControlNet, written on the GPU unless it is there already."""
    from zimage_serve.testing.controlnet import write_controlnet

    if not CONTROLNET.exists():
        write_controlnet(CONTROLNET, checkpoint(), "2.1", "single-file", dtype="bfloat16", device="cuda")
    return CONTROLNET


def control_png(side: int) -> bytes:
    """A control map: white lines (edges) on black, side x side, as PNG bytes."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side))
    draw = ImageDraw.Draw(image)
    rng = np.random.RandomState(0)
    for _ in range(40):
        draw.line([tuple(rng.randint(0, side, 2)), tuple(rng.randint(0, side, 2))], fill=(255, 255, 255), width=3)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _stock(path: Path, png: bytes, side: int, reps: int = 5) -> dict:
    """The stock way: ZImagePipeline.from_pretrained in bf16 on the GPU, the ControlNet from its single file
    (``from_single_file`` with the config diffusers' converter reads from the hub, given here offline), and
    ZImageControlNetPipeline over both; end to end from the prompt to a PNG's bytes (Pillow's encoder), median of
    ``reps`` after one warm-up call; a plain ZImagePipeline generation alike."""
    import torch
    from diffusers import ZImageControlNetModel, ZImageControlNetPipeline, ZImagePipeline
    from PIL import Image

    from zimage_serve.model.controlnet import find_controlnet, inferred_config

    base = ZImagePipeline.from_pretrained(checkpoint(), dtype=torch.bfloat16).to("cuda")
    base.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as d:
        config = inferred_config(find_controlnet(str(path)), dict(base.transformer.config))
        (Path(d) / "config.json").write_text(json.dumps({"_class_name": "ZImageControlNetModel", **config}))
        t = time.perf_counter()
        cn = ZImageControlNetModel.from_single_file(str(path), config=d, local_files_only=True,
                                                    torch_dtype=torch.bfloat16).to("cuda")
        load_s = time.perf_counter() - t
    pipe = ZImageControlNetPipeline(controlnet=cn, **base.components)
    pipe.set_progress_bar_config(disable=True)
    control = Image.open(io.BytesIO(png)).convert("RGB")
    common = dict(num_inference_steps=8, guidance_scale=0.0, height=side, width=side)
    calls = {
        "controlnet": lambda seed: _png(pipe(prompt=f"{PROMPT} {seed}", control_image=control,
                                             controlnet_conditioning_scale=0.75,
                                             generator=torch.Generator("cpu").manual_seed(seed), **common).images[0]),
        "plain": lambda seed: _png(base(prompt=f"{PROMPT} {seed}", generator=torch.Generator("cpu").manual_seed(seed),
                                        **common).images[0]),
    }
    out = {"controlnet_load_s": round(load_s, 1), "controlnet_params": sum(p.numel() for n, p in cn.named_parameters()
                                                                           if n.startswith("control_"))}
    for name, once in calls.items():
        once(0)
        reset_peak()
        times = []
        for i in range(reps):
            sync()
            t = time.perf_counter()
            once(1 + i)
            sync()
            times.append(time.perf_counter() - t)
        out[f"{name}_p50_s"] = round(statistics.median(times), 3)
        out[f"{name}_runs"] = [round(x, 3) for x in times]
        out[f"{name}_peak_gib"] = peak_gib()
    del pipe, cn, base
    torch.cuda.empty_cache()
    return out


def controlnet():
    """Issue 20's figures: stock ZImageControlNetPipeline e2e (and a plain generation) against the Serve app over
    HTTP with the same ControlNet (a control request and a plain one, one in flight, p50 of 10), the replica's
    peak VRAM as served, and the plan for a 24 GiB card."""
    import aiohttp

    from zimage_serve.model.controlnet import find_controlnet
    from zimage_serve.model.planner import ControlNetSizes, Workload, make_plan
    from zimage_serve.model.sizes import sizes_of
    from zimage_serve.model.sources import resolve

    from .edits import _production_generator
    from .http import _config, _start, _stop

    side = size()
    t = time.perf_counter()
    path = controlnet_file()
    out = {"controlnet_write_s": round(time.perf_counter() - t, 1), "controlnet_bytes": path.stat().st_size}
    png = control_png(side)
    out["stock"] = _stock(path, png, side)
    save("controlnet", **out)

    generator = {**_production_generator(), "max_queued_requests": 256}
    cn = find_controlnet(str(path))
    plan24 = make_plan(sizes_of(resolve(str(checkpoint()))), 24 * GiB, Workload(side, side, generator["max_batch_size"]),
                       generator["policy"], generator["encode_on"], ControlNetSizes.of(cn.shapes))
    out["plan_24gib"] = {"describe": plan24.describe(), **plan24.to_dict()}
    save("controlnet", **out)

    encoder = {"num_cpus": 8, "threads": 8, "max_batch_size": 8, "cache_size": 0}
    config = {**_config(encoder, generator), "controlnet": str(path)}
    out["deploy_s"] = round(_start(config), 1)
    url = "http://127.0.0.1:8000/v1/images/generations"
    control_b64 = base64.b64encode(png).decode()
    stages: dict = {}

    async def call(session, i, control: bool, record: bool = False) -> float:
        body = {"prompt": f"{PROMPT} #{i} {time.time()}", "seed": i, "size": f"{side}x{side}",
                **({"control_image": control_b64} if control else {})}
        t = time.perf_counter()
        async with session.post(url, json=body) as r:
            await r.read()
            assert r.status == 200, (r.status, await r.text())
            if record:
                stages.setdefault(control, []).append(
                    {k: float(v) for k, v in (p.split(";dur=") for p in r.headers["Server-Timing"].split(", "))})
        return time.perf_counter() - t

    async def run() -> dict:
        res = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
            for i in range(3):
                await call(s, i, False)
                await call(s, 10 + i, True)
            for control in (True, False):
                times = [await call(s, 100 + i, control, record=True) for i in range(10)]
                name = "controlnet" if control else "plain"
                res[f"{name}_http_p50_s"] = round(statistics.median(times), 3)
                res[f"{name}_runs"] = [round(x, 3) for x in times]
                res[f"{name}_server_timing_p50_ms"] = {
                    k: round(statistics.median(t[k] for t in stages[control] if k in t), 1) for k in stages[control][0]}
        return res

    ours = asyncio.run(run())
    from ray import serve

    info = serve.get_deployment_handle("Generator", app_name="zimage").info.remote().result()
    _stop()
    stock = out["stock"]
    out.update(ours=ours, speedups=info["speedups"], plan=info["plan"], gpu=info.get("gpu"),
               controlnet_info=info.get("controlnet"), load_seconds=info.get("load_seconds"),
               p50_ratio=round(ours["controlnet_http_p50_s"] / stock["controlnet_p50_s"], 3),
               extra_over_plain_s=round(ours["controlnet_http_p50_s"] - ours["plain_http_p50_s"], 3),
               stock_extra_over_plain_s=round(stock["controlnet_p50_s"] - stock["plain_p50_s"], 3),
               peak_vram_gib=(info.get("gpu") or {}).get("peak_allocated_gib"))
    save("controlnet", **out)
    print("CONTROLNET", {k: v for k, v in out.items() if not isinstance(v, (dict, list))}, flush=True)


HOLDER = """
import sys, time, torch
keep = int(float(sys.argv[1]) * 2**30)
free, _ = torch.cuda.mem_get_info()
held = torch.empty(max(free - keep, 0), dtype=torch.uint8, device="cuda")
open("/tmp/hold_memory.ready", "w").write(str(torch.cuda.mem_get_info()[0]))
time.sleep(3600)
"""


def _hold(gib: float):
    """A second process holding all of the GPU's free memory but ``gib`` GiB (../shared/gpu/hold_memory.py's
    method): this process then sees a card of that size. Returns the process (kill it to give the memory back)."""
    import subprocess
    import sys

    ready = Path("/tmp/hold_memory.ready")
    ready.unlink(missing_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(gib)])
    while not ready.exists():
        if holder.poll() is not None:
            raise RuntimeError(f"the memory holder exited with {holder.returncode}")
        time.sleep(0.5)
    return holder


def controlnet_card(gib: float = 24):
    """The ControlNet on an emulated ``gib`` GiB card (another process holds the rest of the H200): the plan the
    engine makes there with serve_config.yaml's generator options, the replica's warm-up, then a control image and
    a plain one in process (prompt encoded where the plan says, PNG bytes), p50 of 5, and the peak allocated."""
    import torch

    from zimage_serve.core.control import with_control_image
    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.controlnet import find_controlnet
    from zimage_serve.model.engine import Engine, Job, plan_for_this_machine
    from zimage_serve.model.imaging import encode_image
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.sources import resolve
    from zimage_serve.model.startup import warm_up

    from ..common import compile_cache
    from .edits import _production_generator

    side = size()
    path = controlnet_file()
    holder = _hold(gib)
    out = {"card_gib": gib, "free_gib_seen": round(torch.cuda.mem_get_info()[0] / GiB, 2)}
    try:
        g = _production_generator()
        source, cn = resolve(str(checkpoint())), find_controlnet(str(path))
        plan = plan_for_this_machine(source, Workload(side, side, g["max_batch_size"]), g["policy"], g["encode_on"],
                                     controlnet=cn)
        out["plan"] = plan.describe()
        save(f"controlnet_card_{gib:g}", **out)
        t = time.perf_counter()
        engine = Engine.load(source, plan, with_text_encoder=plan.encode_on == "gpu", controlnet=cn, speedups={
            "compile": g.get("compile", True), "fuse": g.get("fuse_projections", True),
            "cuda_graphs": g.get("cuda_graphs", True), "cache_dir": compile_cache()})
        engine.set_progress(False)
        out["load_s"] = round(time.perf_counter() - t, 1)
        out["warmup_s"] = round(warm_up(engine, side, side, sorted({1, min(2, g["max_batch_size"])})).seconds, 1)
        out["speedups"] = engine.speedups
        png = control_png(side)
        reset_peak()

        def once(seed: int, control: bool) -> None:
            request = GenerationRequest(f"{PROMPT} {seed}", seed=seed, width=side, height=side)
            if control:
                request = with_control_image(request, png)
            if engine.encoder is not None:
                embeds = engine.encode(list(request.texts))
            else:  # the plan encodes on the CPU encoders: not this card's work (as served), not timed
                embeds = [torch.zeros(32, engine.pipe.transformer.config.cap_feat_dim)]
            encode_image(engine.generate([Job.of(request, embeds)]).images[0], "png")

        for control in (True, False):
            once(0, control)
            times = []
            for i in range(5):
                sync()
                t = time.perf_counter()
                once(1 + i, control)
                sync()
                times.append(time.perf_counter() - t)
            out[f"{'controlnet' if control else 'plain'}_p50_s"] = round(statistics.median(times), 3)
        out["peak_allocated_gib"] = peak_gib()
        out["peak_within_card"] = out["peak_allocated_gib"] <= gib
        out["extra_over_plain_s"] = round(out["controlnet_p50_s"] - out["plain_p50_s"], 3)
    finally:
        holder.kill()
    save(f"controlnet_card_{gib:g}", **out)
