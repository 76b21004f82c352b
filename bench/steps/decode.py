"""VAE decode variants at the measured size (bf16): the lean decoder against diffusers' own, eager and
compiled; the engine's uint8 conversion on the GPU against diffusers' postprocess."""

from __future__ import annotations

import os
import time

from ..common import compile_cache, load_vae, save, size, sync, timed

# name -> _decode_variant's arguments (the first one run is the reference for the pixel differences).
# run20 also measured channels_last (slower eager: 0.154 s; no gain compiled), since removed.
VARIANTS = {"lean": {}, "diffusers": {"lean": False}, "lean_compiled_norms": {"compile": "norms"},
            "lean_compiled": {"compile": True},
            "lean_compiled_dynamic": {"compile": True, "dynamic": True},
            "lean_compiled_banded_eager": {"compile": True, "banded_eager": True},
            "diffusers_compiled": {"lean": False, "compile": True, "dynamic": True}}


def _decode_variant(z, compile=False, lean=True, banded_eager=False, dynamic=False) -> tuple:
    """(figures, image) of one VAE decoder variant on the latents ``z``, on a freshly loaded VAE. ``compile``:
    "norms" is what accel.accelerate_vae does (each GroupNorm+SiLU compiled); True compiles the whole decoder."""
    import torch

    from zimage_serve.model.optim.accel import accelerate_vae, compile_setup, compiled_shapes_only
    from zimage_serve.model.optim.lean_vae import BANDED_MODULES

    vae = load_vae(lean)
    if compile == "norms":
        accelerate_vae(vae, cache_dir=compile_cache())
    elif compile:  # the whole decoder: accel.accelerate_vae(whole=True) when static; the rest are variants it was chosen over
        compile_setup(compile_cache())
        if banded_eager:  # a graph break around each banded conv, so its memory bound holds
            for module in vae.decoder.modules():
                if isinstance(module, BANDED_MODULES):
                    module.forward = torch.compiler.disable(module.forward, recursive=True)
        vae.decoder.compile(dynamic=dynamic)
    run = lambda: vae.decode(z, return_dict=False)[0]
    with torch.inference_mode():
        t = time.time()
        run()
        sync()
        first = time.time() - t
        seconds = timed(run)
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        image = run()
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        other = torch.randn(1, z.shape[1], 96, 80, device="cuda", dtype=z.dtype)  # another size: 768x640
        t = time.time()
        with compiled_shapes_only():  # as the engine decodes: eager for a size not compiled
            vae.decode(other, return_dict=False)
        sync()
        other_first = time.time() - t
    figures = {"decode_s": round(seconds, 4), "first_call_s": round(first, 2), "activation_peak_gib": round(peak, 3),
               "first_call_768x640_s": round(other_first, 2)}
    del vae
    torch.cuda.empty_cache()
    return figures, image


def decode():
    """VAE decode at 1024² (bf16): lean vs diffusers' decoder, eager and compiled; postprocess vs engine.to_pil.

    Time, activation peak and pixel difference against the lean eager decoder. BENCH_DECODE: a comma-separated
    choice of variants (the first is the reference). (run19's version of this step measured cuDNN benchmark
    mode: no gain.)"""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from zimage_serve.model.engine import to_pil

    side = size()
    z = torch.randn(1, 16, side // 8, side // 8, device="cuda", dtype=torch.bfloat16,
                    generator=torch.Generator("cuda").manual_seed(0))
    pixels = lambda image: np.asarray(to_pil(image), dtype=np.int16)
    out, reference = {}, None
    only = os.environ.get("BENCH_DECODE")
    for name, kwargs in VARIANTS.items():
        if only and name not in only.split(","):
            continue
        try:
            figures, image = _decode_variant(z, **kwargs)
        except Exception as e:  # noqa: BLE001 - a variant that fails is reported, the others still run
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        if reference is None:
            reference = pixels(image)
        figures["max_abs_pixel_diff"] = int(np.abs(pixels(image) - reference).max())
        out[name] = figures
        print(name, figures, flush=True)
    with torch.inference_mode():
        image = torch.rand(1, 3, side, side, device="cuda", dtype=torch.bfloat16) * 2 - 1
        processor = VaeImageProcessor(vae_scale_factor=16)
        out["diffusers_postprocess_s"] = round(timed(lambda: processor.postprocess(image, output_type="pil")), 4)
        out["to_pil_on_gpu_s"] = round(timed(lambda: to_pil(image)), 4)
    save("decode", **out)
