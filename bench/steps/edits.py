"""Image edits: stock diffusers' ZImageImg2ImgPipeline / ZImageInpaintPipeline end to end, against the Serve app
over HTTP (POST /v1/images/edits, multipart as the openai client sends it), and mixed traffic."""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import time

import numpy as np

from ..common import PROMPT, checkpoint, save, size, sync
from .http import _config, _start, _stop, saturate

BASE = "http://127.0.0.1:8000"


def _inputs(side: int) -> tuple[bytes, bytes]:
    """A 1024² photo-like input (smooth, with texture) and a mask repainting its centre, as PNG bytes."""
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    rgb = np.stack([x * 255 / side, y * 255 / side, np.full_like(x, 100.0)], -1)
    rgb += np.random.RandomState(0).normal(0, 10, rgb.shape)
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 255
    out = []
    for image in (Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), Image.fromarray(mask)):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        out.append(buf.getvalue())
    return out[0], out[1]


def _stock(image_png: bytes, mask_png: bytes, side: int, reps: int = 5) -> dict:
    """The stock way (as ../shared/gpu/stock_features.py measures it): ZImagePipeline.from_pretrained in bf16,
    all on the GPU, each mode's pipeline built from its components; end to end from the prompt to a PNG's bytes
    (Pillow's default encoder), median of ``reps`` after one warm-up call."""
    import torch
    from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline, ZImagePipeline
    from PIL import Image

    image = Image.open(io.BytesIO(image_png)).convert("RGB")
    mask = Image.open(io.BytesIO(mask_png))
    base = ZImagePipeline.from_pretrained(checkpoint(), dtype=torch.bfloat16).to("cuda")
    results = {"transformer_dtype": str(base.transformer.dtype), "transformer_device": str(base.transformer.device)}
    img2img, inpaint = ZImageImg2ImgPipeline(**base.components), ZImageInpaintPipeline(**base.components)
    for pipe in (img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
    for name, pipe, kw in (("img2img", img2img, {"strength": 0.6}),
                           ("inpaint", inpaint, {"strength": 1.0, "mask_image": mask})):
        def once(seed):
            out = pipe(prompt=f"{PROMPT} {seed}", image=image, num_inference_steps=8, guidance_scale=0.0,
                       height=side, width=side, generator=torch.Generator("cpu").manual_seed(seed), **kw).images[0]
            buf = io.BytesIO()
            out.save(buf, "PNG")
        once(0)
        times = []
        for i in range(reps):
            sync()
            t = time.perf_counter()
            once(1 + i)
            times.append(time.perf_counter() - t)
        results[f"{name}_p50_s"] = round(statistics.median(times), 3)
        results[f"{name}_runs"] = [round(t, 3) for t in times]
    del img2img, inpaint, base
    torch.cuda.empty_cache()
    return results


def _production_generator() -> dict:
    """serve_config.yaml's generator section, for one replica on this GPU."""
    import yaml

    from ..common import ROOT

    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    generator = {k: v for k, v in args["generator"].items() if k not in ("autoscaling", "plan_size")}
    return {**generator, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}


def edits():
    """Edits over HTTP against stock diffusers in the same run: img2img at strength 0.6 and inpainting at 1.0, one
    in flight (p50), then 64 requests from 16 clients, generations alone and half generations half edits."""
    import aiohttp

    side = size()
    image_png, mask_png = _inputs(side)
    stock = _stock(image_png, mask_png, side)
    save("edits", stock=stock)
    # the production default: serve_config.yaml's generator (encode_on auto: a lone request's prompt is encoded on
    # the idle GPU, as stock encodes it, under load on the CPU encoders; num_cpus 2: the PNG threads), one
    # replica. BENCH_ENCODE_ON=cpu: always on the CPU encoders
    encode_on = os.environ.get("BENCH_ENCODE_ON", "auto")
    generator = _production_generator()
    config = _config({"num_cpus": 8, "threads": 8, "max_batch_size": 8, "cache_size": 0},
                     {**generator, "encode_on": encode_on, "max_queued_requests": 256})
    deploy_s = _start(config)

    def form(i: int, mask: bool, strength: float) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("image", image_png, filename="in.png", content_type="image/png")
        if mask:
            data.add_field("mask", mask_png, filename="mask.png", content_type="image/png")
        for key, value in {"prompt": f"{PROMPT} #{i} {time.time()}", "seed": i, "strength": strength}.items():
            data.add_field(key, str(value))
        return data

    stages: dict = {}  # kind -> [Server-Timing stages of each timed call]

    async def call(session, i, kind: str, record: bool = False) -> float:
        t = time.perf_counter()
        if kind == "generate":
            request = session.post(f"{BASE}/v1/images/generations",
                                   json={"prompt": f"{PROMPT} #{i} {time.time()}", "seed": i, "size": f"{side}x{side}"})
        else:
            request = session.post(f"{BASE}/v1/images/edits", data=form(i, kind == "inpaint",
                                                                         1.0 if kind == "inpaint" else 0.6))
        async with request as r:
            await r.read()
            assert r.status == 200, (r.status, await r.text())
            if record:
                stages.setdefault(kind, []).append(
                    {k: float(v) for k, v in (p.split(";dur=") for p in r.headers["Server-Timing"].split(", "))})
        return time.perf_counter() - t

    async def run() -> dict:
        out = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
            for kind in ("generate", "img2img", "inpaint"):  # warm-up: each path once
                await call(s, 0, kind)
            for kind in ("img2img", "inpaint", "generate"):
                times = [await call(s, 100 + i, kind, record=True) for i in range(10)]
                out[f"{kind}_http_p50_s"] = round(statistics.median(times), 3)
                out[f"{kind}_server_timing_p50_ms"] = {k: round(statistics.median(t[k] for t in stages[kind] if k in t), 1)
                                                       for k in stages[kind][0]}
            n = 64
            out["generations_throughput_img_s"] = round(await saturate(call, s, ["generate"] * n), 3)
            mixed = [("generate", "img2img", "generate", "inpaint")[i % 4] for i in range(n)]
            out["mixed_throughput_img_s"] = round(await saturate(call, s, mixed), 3)
        return out

    ours = asyncio.run(run())
    from ray import serve

    info = serve.get_deployment_handle("Generator", app_name="zimage").info.remote().result()
    save("edits", stock=stock, ours=ours, encode_on=encode_on, generator=generator, deploy_s=round(deploy_s, 1), speedups=info["speedups"], plan=info["plan"],
         img2img_ratio=round(ours["img2img_http_p50_s"] / stock["img2img_p50_s"], 3),
         inpaint_ratio=round(ours["inpaint_http_p50_s"] / stock["inpaint_p50_s"], 3),
         mixed_throughput_ratio=round(ours["mixed_throughput_img_s"] / ours["generations_throughput_img_s"], 3),
         batches=info["batches"][-80:])
    _stop()


def edits_profile():
    """Where an image-to-image edit's time goes, in-process on the engine as a replica loads it (regional compile,
    CUDA graphs, the compiled decoder): the edit at strength 0.6 (5 transformer calls) against text to image with
    5 and 8 steps, and the edit's own parts timed alone (the upload's decode, the pipeline's preprocess, the VAE
    encode); stock diffusers' img2img and text to image in the same run."""
    import torch
    from diffusers import ZImageImg2ImgPipeline

    from zimage_serve.core.images import read_image, with_edit_inputs
    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Job
    from zimage_serve.model.startup import warm_up

    from ..common import job, load_engine, timed

    side = size()
    image_png, mask_png = _inputs(side)
    out = {"upload_bytes": len(image_png)}
    eng = load_engine(encode_on="gpu", cuda_graphs=True)
    warm = warm_up(eng, side, side)
    embeds = eng.encode([PROMPT])[0]
    edit = Job(with_edit_inputs(GenerationRequest(PROMPT, seed=1, strength=0.6), image_png, None, (side, side)), embeds)
    for name, j in (("t2i_8_steps", job(embeds)), ("t2i_5_steps", job(embeds, steps=5)), ("img2img_0.6", edit)):
        out[f"{name}_generate_s"] = round(timed(lambda: eng.generate([j]), reps=7), 4)
        out[f"{name}_seconds"] = {k: round(v, 4) for k, v in eng.generate([j]).seconds.items()}
        save("edits_profile", **out)
    pipe = eng.pipeline(ZImageImg2ImgPipeline)
    pil = read_image(image_png)
    out["upload_decode_s"] = round(timed(lambda: read_image(image_png), reps=7), 4)
    out["preprocess_s"] = round(timed(lambda: pipe.image_processor.preprocess(pil, height=side, width=side), reps=7), 4)
    pixels = pipe.image_processor.preprocess(pil, height=side, width=side).to(eng.device, eng.pipe.vae.dtype)
    with torch.inference_mode():
        # run44 compiled the encoder's norms here (accel.accelerate_vae did then); since, they run eagerly
        out["vae_encode_s"] = round(timed(lambda: eng.pipe.vae.encode(pixels), reps=7), 4)
        with torch.compiler.set_stance("force_eager"):
            out["vae_encode_eager_s"] = round(timed(lambda: eng.pipe.vae.encode(pixels), reps=7), 4)
        a = eng.pipe.vae.encode(pixels).latent_dist.mean
        with torch.compiler.set_stance("force_eager"):
            b = eng.pipe.vae.encode(pixels).latent_dist.mean
        out["vae_encode_compiled_vs_eager_max_abs_diff"] = float((a.float() - b.float()).abs().max())
    out["speedups"] = eng.speedups
    out["warmup_calls"] = warm.calls
    out["vae_dtype"] = str(eng.pipe.vae.dtype)
    out["torch_threads"] = torch.get_num_threads()
    save("edits_profile", **out)
