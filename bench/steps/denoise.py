"""The denoise speed-ups, each against the same model without it in one process: fused projections and
regional compile (fusion), CUDA graphs (graphs), FP8 matmuls (fp8)."""

from __future__ import annotations

import io
import os
import threading
import time

from ..common import (allocated_gib, compile_cache, denoise, engine_with_job, pixel_diff, pixels, reserved_gib,
                      safe, save, timed)
from ..profiling import profile_step


def fusion():
    """Each denoise speed-up in one process: eager, regional compile, + fused projections, + max-autotune.

    Also the GPU time per kernel family, and the image difference fused vs unfused."""
    import torch

    from zimage_serve.model.optim.accel import accelerate

    eng, embeds, one = engine_with_job(compile=False, batch=1, fuse=False)
    out = {"eager_denoise_s": round(timed(lambda: denoise(eng, embeds), reps=3), 3)}

    def compiled(prefix: str, denoise_key: str, **speedups) -> None:
        """Recompile with ``speedups``; record the first call (compile) and the steady denoise."""
        torch._dynamo.reset()
        accelerate(eng.pipe.transformer, compile=True, cache_dir=compile_cache(), **speedups)
        t = time.time()
        denoise(eng, embeds)
        out[f"{prefix}compile_first_call_s"] = round(time.time() - t, 1)
        out[denoise_key] = round(timed(lambda: denoise(eng, embeds)), 3)

    compiled("", "compiled_denoise_s", fuse=False)
    out["compiled_profile"] = safe(profile_step, eng, embeds)
    ref = pixels(eng, one)
    compiled("fused_", "fused_denoise_s", fuse=True)
    out["fused_profile"] = safe(profile_step, eng, embeds)
    (out["fused_vs_unfused_mean_abs_pixel_diff"],
     out["fused_vs_unfused_max_abs_pixel_diff"]) = pixel_diff(pixels(eng, one), ref)
    save("fusion", **out)
    if os.environ.get("BENCH_AUTOTUNE", "1") == "1":
        compiled("autotune_", "fused_autotune_denoise_s", compile_mode="max-autotune-no-cudagraphs")
        save("fusion", **out)


def _encode_pngs(stop: threading.Event, image, png: str) -> None:
    """What a replica's other thread does at saturation: encode the previous batch's images (PNG level 1)."""
    from zimage_serve.model.imaging import encode_image

    while not stop.is_set():
        if png == "ours":
            encode_image(image, "png", 1)
        else:
            image.save(io.BytesIO(), format="PNG", compress_level=1)


def graphs():
    """CUDA graphs over the compiled, fused block stacks (graphs.py) against the same model without.

    In one process: denoise, the same with a GIL-hungry Python thread running, GPU idle per denoise, and
    the image difference."""
    from zimage_serve.model.optim.graphs import STACKS, use_cuda_graphs

    eng, embeds, one = engine_with_job(compile=True, batch=1)
    out = {}
    picture = eng.generate([one]).images[0]

    def measure(prefix):
        denoise(eng, embeds)
        out[f"{prefix}denoise_s"] = round(timed(lambda: denoise(eng, embeds)), 3)
        denoise(eng, embeds, side=512)  # where the GPU work per step is 4x smaller and launches count more
        out[f"{prefix}denoise_512_s"] = round(timed(lambda: denoise(eng, embeds, side=512)), 3)
        for png in ("pillow", "ours"):  # another thread encoding PNGs meanwhile (it contends for the GIL)
            stop = threading.Event()
            other = threading.Thread(target=_encode_pngs, args=(stop, picture, png), daemon=True)
            other.start()
            out[f"{prefix}denoise_while_{png}_png_s"] = round(timed(lambda: denoise(eng, embeds), reps=3), 3)
            stop.set()
            other.join()
        out[f"{prefix}profile"] = safe(profile_step, eng, embeds)

    measure("")
    ref = pixels(eng, one)
    t = time.time()
    out["graphed_blocks"] = use_cuda_graphs(eng.pipe.transformer)
    denoise(eng, embeds)
    out["capture_first_call_s"] = round(time.time() - t, 2)
    measure("graphs_")
    (out["graphs_vs_none_mean_abs_pixel_diff"],
     out["graphs_vs_none_max_abs_pixel_diff"]) = pixel_diff(pixels(eng, one), ref, digits=4)
    out["captures"] = sum(getattr(eng.pipe.transformer, n).captures for n in STACKS)
    out["speedup"] = round(out["denoise_s"] / out["graphs_denoise_s"], 3)
    out["speedup_512"] = round(out["denoise_512_s"] / out["graphs_denoise_512_s"], 3)
    out["reserved_gib"] = reserved_gib()
    save("graphs", **out)


def fp8():
    """Opt-in FP8 (fp8.py: e4m3 weights and activations, rowwise scales) vs bf16, fused and compiled.

    In one process: compile time, denoise, image difference, weights' memory."""
    import numpy as np
    import torch

    from zimage_serve.model.optim.accel import accelerate

    eng, embeds, one = engine_with_job(compile=True, batch=1)
    denoise(eng, embeds)
    bf16 = timed(lambda: denoise(eng, embeds), reps=3)
    ref = pixels(eng, one)
    bf16_gib = allocated_gib()
    t = time.time()
    torch._dynamo.reset()
    applied = accelerate(eng.pipe.transformer, compile=True, fp8=True, cache_dir=compile_cache())
    denoise(eng, embeds)
    compile_s = time.time() - t
    f8 = timed(lambda: denoise(eng, embeds), reps=3)
    latents = denoise(eng, embeds)
    got = pixels(eng, one)
    mse = float(((got - ref) ** 2).mean())
    save("fp8", implementation="zimage_serve.model.optim.fp8 (torch._scaled_mm, rowwise)",
         fp8_linear_layers=applied.get("fp8_linear_layers"),
         bf16_denoise_s=round(bf16, 3), fp8_denoise_s=round(f8, 3), speedup=round(bf16 / f8, 2),
         fp8_compile_s=round(compile_s, 1), nan_latents=int(torch.isnan(latents).sum()),
         pixel_mean_abs_diff=pixel_diff(got, ref, digits=2)[0],
         psnr_db=round(10 * np.log10(255**2 / mse), 1) if mse else None,
         allocated_gib_bf16=bf16_gib, allocated_gib_fp8=allocated_gib())
