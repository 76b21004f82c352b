"""The engine in-process: the figures of an 80 GB replica (engine), end to end with the text encoder on the
GPU (engine_gpu), and the peak VRAM as Engine.load compiles it (peak)."""

from __future__ import annotations

import os
import statistics
import time

from ..common import (PROMPT, compile_cache, denoise, elapsed, engine_with_job, job, load_engine, peak_gib,
                      reserved_gib, reset_peak, save, sync, timed)


def _stages(result) -> dict:
    """A generate call's seconds by stage (denoise, decode)."""
    return {k: round(v, 4) for k, v in result.seconds.items()}


def engine():
    """The engine in-process, resident plan, prompts on CPU: eager, compiled, then as an 80 GB replica serves.

    Eager; then fused projections + regional compile (the peak VRAM figure: lean decoder, eager, no graphs);
    then as an 80 GB replica serves, with CUDA graphs and the compiled VAE decoder added (denoise, generate,
    e2e, batch of 4)."""
    import torch

    from zimage_serve.model.imaging import encode_image
    from zimage_serve.model.optim.accel import accelerate, accelerate_vae
    from zimage_serve.model.optim.graphs import use_cuda_graphs

    torch.set_num_threads(os.cpu_count())
    t0 = time.time()
    eng = load_engine(compile=False, fuse=False)
    load_s = time.time() - t0
    embeds = eng.encode([PROMPT])[0]
    one = job(embeds)
    eager_denoise = timed(lambda: denoise(eng, embeds), reps=3)
    t0 = time.time()
    accelerate(eng.pipe.transformer, compile=True, fuse=True, cache_dir=compile_cache())
    denoise(eng, embeds)
    sync()
    compile_s = time.time() - t0
    compiled_denoise = timed(lambda: denoise(eng, embeds))
    eng.generate([one])
    sync()
    reset_peak()
    compiled_generate = timed(lambda: eng.generate([one]))
    peak, reserved = peak_gib(), reserved_gib()

    graphed = use_cuda_graphs(eng.pipe.transformer)  # what Engine.load adds on a card with headroom
    accelerate_vae(eng.pipe.vae, cache_dir=compile_cache())
    eng.compiled_decoder = True
    t0 = time.time()
    eng.generate([one])
    served_first_s = time.time() - t0
    denoise_s = timed(lambda: denoise(eng, embeds))
    gen = timed(lambda: eng.generate([one]))
    seconds = eng.generate([one])
    image = eng.generate([one]).images[0]
    png = {lvl: statistics.median([elapsed(lambda: encode_image(image, "png", lvl)) for _ in range(3)]) for lvl in (0, 1, 6)}
    png_bytes = {lvl: len(encode_image(image, "png", lvl)) for lvl in (0, 1, 6)}
    te = [elapsed(lambda: eng.encode([PROMPT])) for _ in range(3)]
    e2e = timed(lambda: encode_image(eng.generate([job(eng.encode([PROMPT])[0])]).images[0], "png", 1))
    batch4 = timed(lambda: eng.generate([job(embeds, seed=i) for i in range(4)]), reps=3)
    prompts = [f"{PROMPT} variation {i}" for i in range(8)]
    te8 = statistics.median([elapsed(lambda: eng.encode(prompts)) for _ in range(3)])
    te1 = statistics.median([elapsed(lambda: eng.encode(prompts[:1])) for _ in range(3)])
    save("engine", load_s=round(load_s, 1), plan=eng.plan.to_dict(), eager_denoise_s=round(eager_denoise, 3),
         compile_first_call_s=round(compile_s, 1), compiled_denoise_s=round(compiled_denoise, 3),
         compiled_generate_s=round(compiled_generate, 3), graphed_blocks=graphed,
         served_first_generate_s=round(served_first_s, 1), denoise_s=round(denoise_s, 3), generate_s=round(gen, 3),
         generate_stages_s=_stages(seconds),
         e2e_s=round(e2e, 3), peak_vram_gib=peak, reserved_vram_gib=reserved,
         png_s=png, png_bytes=png_bytes, te_cpu_one_s=round(min(te), 3), batch4_per_image_s=round(batch4 / 4, 3),
         te_cpu_batch8_per_prompt_s=round(te8 / 8, 3), te_cpu_batch1_s=round(te1, 3),
         cpu_text_encoder_prompts_per_s=round(8 / te8, 2), text_tokens=int(embeds.shape[0]))


def peak():
    """Peak VRAM of the resident plan, prompts on CPU, as an 80 GB card loads it now; then the whole decoder.

    Regional compile and the decoder's GroupNorm+SiLU compiled (as Engine.load does); no CUDA graphs, as in the
    engine step's figure. Then, in the same process, with the whole decoder compiled instead."""
    from zimage_serve.model.optim.accel import accelerate_vae

    eng, _, one = engine_with_job(compile=True)
    t = time.time()
    eng.generate([one])
    first = time.time() - t

    def measure() -> dict:
        sync()
        reset_peak()
        result = eng.generate([one])
        return {"peak_vram_gib": peak_gib(), "seconds": _stages(result)}

    out = dict(**measure(), speedups=dict(eng.speedups), compiled_decoder=eng.compiled_decoder,
               first_generate_s=round(first, 1), plan=eng.plan.to_dict())
    save("peak", **out)
    if eng.compiled_decoder:  # the same process with the whole decoder compiled (the default until run36)
        accelerate_vae(eng.pipe.vae, cache_dir=compile_cache(), whole=True)
        eng.generate([one])
        out["whole_decoder_compiled"] = measure()
        save("peak", **out)


def engine_gpu():
    """In-process end to end with the text encoder on the GPU (the same placement as http_gpu)."""
    from zimage_serve.model.imaging import encode_image

    eng = load_engine(encode_on="gpu", compile=True, batch=1)
    run = lambda: encode_image(eng.generate([job(eng.encode([f"{PROMPT} {time.time()}"])[0])]).images[0], "png", 1)
    run()
    e2e = timed(run, reps=7)
    enc = timed(lambda: eng.encode([PROMPT]), reps=5)
    save("engine_gpu", e2e_s=round(e2e, 3), te_gpu_s=round(enc, 4), plan=eng.plan.to_dict())

