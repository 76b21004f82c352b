"""GPU benchmark of zimage-serve against stock diffusers, side by side on one machine.

Run on the GPU machine (BENCHMARKS.md has the exact device commands of each run); each step stays
well under 10 minutes and writes $OUT/<step>.json:

    python bench/run.py build stock engine       # checkpoint, stock diffusers, the engine in-process
    python bench/run.py fusion fp8 vram probe    # denoise step by step; FP8 vs bf16; VAE memory; imports
    python bench/run.py coldstart                # process start to first image
    python bench/run.py http_gpu http http_fp8   # the Serve app over HTTP (p50, throughput)
    python bench/run.py engine_gpu overhead      # in-process e2e; HTTP vs in-process, interleaved
    python bench/run.py graphs decode            # CUDA graphs over the block stacks; VAE decode variants
    python bench/run.py te peak                  # GPU text encoder compiled; peak VRAM as served (and with the whole decoder compiled)
    python bench/report.py                       # (here) -> bench/results/latest.json and BENCHMARKS.md

Weights are random (real ones can't be fetched there): speed and memory are real, images are noise.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
CKPT = Path(os.environ.get("ZIMAGE_FULL_CKPT", "/tmp/zfull"))
os.environ.setdefault("ZIMAGE_CACHE_DIR", "/tmp/zimage-cache")
PROMPT = ("A cute cyberpunk cat with mechanical implants sitting on a neon-lit rooftop at night, "
          "rain reflections, 8k high definition, cinematic lighting, detailed fur texture")
SIZE = 1024


def save(step: str, **results) -> None:
    results["step"] = step
    (OUT / f"{step}.json").write_text(json.dumps(results, indent=2))
    print("RESULT", json.dumps(results), flush=True)


def timed(fn, reps=5, warm=1):
    import torch

    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def build():
    from zimage_serve.testing.checkpoint import write_checkpoint

    t = time.time()
    if not (CKPT / "model_index.json").exists():
        write_checkpoint(CKPT, "full", device="cuda")
    save("build", seconds=round(time.time() - t, 1), bytes=int(subprocess.run(
        ["du", "-sb", str(CKPT)], capture_output=True, text=True).stdout.split()[0]))


def stock():
    """The shared stock-diffusers script, unchanged, on the same checkpoint in the same run."""
    env = dict(os.environ, ZIMAGE_FULL_CKPT=str(CKPT), OUT=str(OUT))
    subprocess.run([sys.executable, str(ROOT / "bench" / "stock_baseline.py"), "stock", "staged"], env=env, check=False)
    rows = [json.loads(line) for line in (OUT / "baseline.jsonl").read_text().splitlines()]
    save("stock", rows=rows)


def _engine(policy="auto", encode_on="cpu", compile=True, fp8=False, batch=4, fuse=True, cuda_graphs=False):
    from zimage_serve.model.engine import Engine, plan_for_this_machine
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.sources import resolve

    source = resolve(str(CKPT))
    plan = plan_for_this_machine(source, Workload(SIZE, SIZE, batch), policy, encode_on)
    engine = Engine.load(source, plan, speedups={"compile": compile, "fp8": fp8, "fuse": fuse, "cuda_graphs": cuda_graphs,
                                                 "cache_dir": os.environ["ZIMAGE_CACHE_DIR"] + "/compile"})
    engine.set_progress(False)
    return engine


def _latents(engine, embeds, steps=8, n=1, size=SIZE):
    import torch

    from zimage_serve.model.engine import Job

    jobs = [Job(embeds, seed=i, width=size, height=size, steps=steps) for i in range(n)]
    with torch.inference_mode():  # as Engine.generate runs (CUDA graphs keep the mode they were captured in)
        return engine.pipe(prompt_embeds=engine._embeds([j.embeds for j in jobs]),
                           latents=torch.cat([engine._noise(j) for j in jobs]), height=size, width=size,
                           num_inference_steps=steps, guidance_scale=0.0, output_type="latent").images


def engine_step():
    """The engine in-process, resident plan, prompts on CPU: eager; then fused projections + regional
    compile (the peak VRAM figure: lean decoder, eager, no graphs); then as an 80 GB replica serves,
    with CUDA graphs and the compiled VAE decoder added (denoise, generate, e2e, batch of 4)."""
    import torch

    from zimage_serve.model.optim.accel import accelerate, accelerate_vae
    from zimage_serve.model.engine import Job
    from zimage_serve.model.optim.graphs import use_cuda_graphs
    from zimage_serve.model.imaging import encode_image

    torch.set_num_threads(os.cpu_count())
    cache = os.environ["ZIMAGE_CACHE_DIR"] + "/compile"
    t0 = time.time()
    engine = _engine(compile=False, fuse=False)
    load_s = time.time() - t0
    embeds = engine.encode([PROMPT])[0]
    job = Job(embeds, seed=1, width=SIZE, height=SIZE)
    eager_denoise = timed(lambda: _latents(engine, embeds), reps=3)
    t0 = time.time()
    accelerate(engine.pipe.transformer, compile=True, fuse=True, cache_dir=cache)
    _latents(engine, embeds)
    torch.cuda.synchronize()
    compile_s = time.time() - t0
    compiled_denoise = timed(lambda: _latents(engine, embeds))
    engine.generate([job])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    compiled_generate = timed(lambda: engine.generate([job]))
    peak = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30

    graphed = use_cuda_graphs(engine.pipe.transformer)  # what Engine._accelerate adds on a card with headroom
    accelerate_vae(engine.pipe.vae, cache_dir=cache)
    engine.compiled_decoder = True
    t0 = time.time()
    engine.generate([job])
    served_first_s = time.time() - t0
    denoise = timed(lambda: _latents(engine, embeds))
    gen = timed(lambda: engine.generate([job]))
    seconds = engine.generate([job]).seconds
    image = engine.generate([job]).images[0]
    png = {lvl: statistics.median([_t(lambda: encode_image(image, "png", lvl)) for _ in range(3)]) for lvl in (0, 1, 6)}
    png_bytes = {lvl: len(encode_image(image, "png", lvl)) for lvl in (0, 1, 6)}
    te = [_t(lambda: engine.encode([PROMPT])) for _ in range(3)]
    e2e = timed(lambda: encode_image(engine.generate([Job(engine.encode([PROMPT])[0], 1, SIZE, SIZE)]).images[0], "png", 1))
    batch4 = timed(lambda: engine.generate([Job(embeds, seed=i, width=SIZE, height=SIZE) for i in range(4)]), reps=3)
    prompts = [f"{PROMPT} variation {i}" for i in range(8)]
    te8 = statistics.median([_t(lambda: engine.encode(prompts)) for _ in range(3)])
    te1 = statistics.median([_t(lambda: engine.encode(prompts[:1])) for _ in range(3)])
    save("engine", load_s=round(load_s, 1), plan=engine.plan.to_dict(), eager_denoise_s=round(eager_denoise, 3),
         compile_first_call_s=round(compile_s, 1), compiled_denoise_s=round(compiled_denoise, 3),
         compiled_generate_s=round(compiled_generate, 3), graphed_blocks=graphed,
         served_first_generate_s=round(served_first_s, 1), denoise_s=round(denoise, 3), generate_s=round(gen, 3),
         generate_stages_s={k: round(v, 4) for k, v in seconds.items()},
         e2e_s=round(e2e, 3), peak_vram_gib=round(peak, 2), reserved_vram_gib=round(reserved, 2),
         png_s=png, png_bytes=png_bytes, te_cpu_one_s=round(min(te), 3), batch4_per_image_s=round(batch4 / 4, 3),
         te_cpu_batch8_per_prompt_s=round(te8 / 8, 3), te_cpu_batch1_s=round(te1, 3),
         cpu_text_encoder_prompts_per_s=round(8 / te8, 2), text_tokens=int(embeds.shape[0]))


def peak():
    """Peak VRAM of the resident plan with prompts encoded on the CPU as an 80 GB card loads it now: regional
    compile and the decoder's GroupNorm+SiLU compiled (as Engine.load does); no CUDA graphs, as in the engine
    step's figure. Then, in the same process, with the whole decoder compiled instead."""
    import torch

    from zimage_serve.model.engine import Job

    engine = _engine(compile=True)
    job = Job(engine.encode([PROMPT])[0], seed=1, width=SIZE, height=SIZE)
    t = time.time()
    engine.generate([job])
    first = time.time() - t
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    result = engine.generate([job])
    out = dict(peak_vram_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), speedups=dict(engine.speedups),
               compiled_decoder=engine.compiled_decoder, first_generate_s=round(first, 1),
               seconds={k: round(v, 4) for k, v in result.seconds.items()}, plan=engine.plan.to_dict())
    save("peak", **out)
    if engine.compiled_decoder:  # the same process with the whole decoder compiled (the default until run36)
        from zimage_serve.model.optim.accel import accelerate_vae

        accelerate_vae(engine.pipe.vae, cache_dir=os.environ["ZIMAGE_CACHE_DIR"] + "/compile", whole=True)
        engine.generate([job])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        result = engine.generate([job])
        out["whole_decoder_compiled"] = {"peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                                         "seconds": {k: round(v, 4) for k, v in result.seconds.items()}}
        save("peak", **out)


def _profile_step(engine, embeds) -> dict:
    """GPU time per kernel family over one 1-step denoise (a transformer call), in ms, and its wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    _latents(engine, embeds, steps=1)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        _latents(engine, embeds, steps=1)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    kernels = [e for e in prof.key_averages() if str(getattr(e, "device_type", "")).endswith("CUDA")
               and (getattr(e, "device_time_total", 0) or getattr(e, "self_device_time_total", 0))]
    families = {"gemm": 0.0, "attention": 0.0, "triton (fused elementwise)": 0.0, "other": 0.0}
    for e in kernels:
        k = e.key.lower()
        fam = ("attention" if any(x in k for x in ("flash", "fmha", "attention", "sdpa", "cudnn")) else
               "gemm" if any(x in k for x in ("gemm", "sm90", "cutlass", "nvjet", "matmul", "xmma")) else
               "triton (fused elementwise)" if "triton" in k else "other")
        families[fam] += e.device_time_total / 1000
    top = sorted(((e.key[:90], round(e.device_time_total / 1000, 2)) for e in kernels), key=lambda x: -x[1])[:15]
    return {"wall_ms": round(wall * 1000, 1), "kernel_ms": {k: round(v, 1) for k, v in families.items()}, "top": top}


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # a measurement aid must not lose the step's figures
        return {"error": repr(e)[:300]}


def fusion():
    """What each denoise speed-up gives, in one process: eager, regional compile, + fused projections,
    + max-autotune GEMMs; the GPU time per kernel family; the image difference fused vs unfused."""
    import numpy as np
    import torch

    from zimage_serve.model.optim.accel import accelerate
    from zimage_serve.model.engine import Job

    engine = _engine(compile=False, batch=1, fuse=False)
    embeds = engine.encode([PROMPT])[0]
    image = lambda: np.asarray(engine.generate([Job(embeds, 1, SIZE, SIZE)]).images[0], dtype=np.float32)
    out = {"eager_denoise_s": round(timed(lambda: _latents(engine, embeds), reps=3), 3)}
    cache = os.environ["ZIMAGE_CACHE_DIR"] + "/compile"

    def compiled(prefix: str, denoise_key: str, **speedups) -> None:
        """Recompile with ``speedups``; record the first call (compile) and the steady denoise."""
        torch._dynamo.reset()
        accelerate(engine.pipe.transformer, compile=True, cache_dir=cache, **speedups)
        t = time.time()
        _latents(engine, embeds)
        out[f"{prefix}compile_first_call_s"] = round(time.time() - t, 1)
        out[denoise_key] = round(timed(lambda: _latents(engine, embeds)), 3)

    compiled("", "compiled_denoise_s", fuse=False)
    out["compiled_profile"] = _safe(_profile_step, engine, embeds)
    ref = image()
    compiled("fused_", "fused_denoise_s", fuse=True)
    out["fused_profile"] = _safe(_profile_step, engine, embeds)
    fused = image()
    out["fused_vs_unfused_mean_abs_pixel_diff"] = round(float(np.abs(fused - ref).mean()), 3)
    out["fused_vs_unfused_max_abs_pixel_diff"] = int(np.abs(fused - ref).max())
    save("fusion", **out)
    if os.environ.get("BENCH_AUTOTUNE", "1") == "1":
        compiled("autotune_", "fused_autotune_denoise_s", compile_mode="max-autotune-no-cudagraphs")
        save("fusion", **out)


def _encode_pngs(stop, image, png):
    """What a replica's other thread does at saturation: encode the previous batch's images (PNG level 1)."""
    from zimage_serve.model.imaging import encode_image

    while not stop.is_set():
        encode_image(image, "png", 1) if png == "ours" else image.save(__import__("io").BytesIO(), format="PNG", compress_level=1)


def graphs():
    """CUDA graphs over the compiled, fused block stacks (graphs.py) against the same model without,
    in one process: denoise, the same with a GIL-hungry Python thread running, GPU idle per denoise,
    and the image difference."""
    import threading

    import numpy as np
    import torch

    from zimage_serve.model.engine import Job
    from zimage_serve.model.optim.graphs import STACKS, use_cuda_graphs

    engine = _engine(compile=True, batch=1)
    embeds = engine.encode([PROMPT])[0]
    image = lambda: np.asarray(engine.generate([Job(embeds, 1, SIZE, SIZE)]).images[0], dtype=np.float32)
    out = {}

    picture = engine.generate([Job(embeds, 1, SIZE, SIZE)]).images[0]

    def measure(prefix):
        _latents(engine, embeds)
        out[f"{prefix}denoise_s"] = round(timed(lambda: _latents(engine, embeds)), 3)
        _latents(engine, embeds, size=512)  # where the GPU work per step is 4x smaller and launches count more
        out[f"{prefix}denoise_512_s"] = round(timed(lambda: _latents(engine, embeds, size=512)), 3)
        for png in ("pillow", "ours"):  # another thread encoding PNGs meanwhile (it contends for the GIL)
            stop = threading.Event()
            other = threading.Thread(target=_encode_pngs, args=(stop, picture, png), daemon=True)
            other.start()
            out[f"{prefix}denoise_while_{png}_png_s"] = round(timed(lambda: _latents(engine, embeds), reps=3), 3)
            stop.set()
            other.join()
        out[f"{prefix}profile"] = _safe(_profile_step, engine, embeds)

    measure("")
    ref = image()
    t = time.time()
    out["graphed_blocks"] = use_cuda_graphs(engine.pipe.transformer)
    _latents(engine, embeds)
    out["capture_first_call_s"] = round(time.time() - t, 2)
    measure("graphs_")
    got = image()
    out["graphs_vs_none_mean_abs_pixel_diff"] = round(float(np.abs(got - ref).mean()), 4)
    out["graphs_vs_none_max_abs_pixel_diff"] = int(np.abs(got - ref).max())
    out["captures"] = sum(getattr(engine.pipe.transformer, n).captures for n in STACKS)
    out["speedup"] = round(out["denoise_s"] / out["graphs_denoise_s"], 3)
    out["speedup_512"] = round(out["denoise_512_s"] / out["graphs_denoise_512_s"], 3)
    out["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    save("graphs", **out)


def _decode_variant(z, compile=False, lean=True, banded_eager=False, dynamic=False) -> tuple:
    """(figures, image) of one VAE decoder variant on the latents ``z``, on a freshly loaded VAE. ``compile``:
    "norms" is what accel.accelerate_vae does (each GroupNorm+SiLU compiled); True compiles the whole decoder."""
    import torch
    from diffusers import AutoencoderKL

    from zimage_serve.model.optim.accel import accelerate_vae, compile_setup, compiled_shapes_only
    from zimage_serve.model.optim.lean_vae import BANDED_MODULES, lean_decoder

    vae = AutoencoderKL.from_pretrained(CKPT, subfolder="vae", dtype=torch.bfloat16).to("cuda").eval()
    if lean:
        lean_decoder(vae)
    if compile == "norms":
        accelerate_vae(vae, cache_dir=os.environ["ZIMAGE_CACHE_DIR"] + "/compile")
    elif compile:  # the whole decoder: accel.accelerate_vae(whole=True) when static; the rest are variants it was chosen over
        compile_setup(os.environ["ZIMAGE_CACHE_DIR"] + "/compile")
        if banded_eager:  # a graph break around each banded conv, so its memory bound holds
            for module in vae.decoder.modules():
                if isinstance(module, BANDED_MODULES):
                    module.forward = torch.compiler.disable(module.forward, recursive=True)
        vae.decoder.compile(dynamic=dynamic)
    run = lambda: vae.decode(z, return_dict=False)[0]
    with torch.inference_mode():
        t = time.time()
        run()
        torch.cuda.synchronize()
        first = time.time() - t
        seconds = timed(run)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        image = run()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        other = torch.randn(1, z.shape[1], 96, 80, device="cuda", dtype=z.dtype)  # another size: 768x640
        t = time.time()
        with compiled_shapes_only():  # as the engine decodes: eager for a size not compiled
            vae.decode(other, return_dict=False)
        torch.cuda.synchronize()
        other_first = time.time() - t
    figures = {"decode_s": round(seconds, 4), "first_call_s": round(first, 2), "activation_peak_gib": round(peak, 3),
               "first_call_768x640_s": round(other_first, 2)}
    del vae
    torch.cuda.empty_cache()
    return figures, image


def decode():
    """VAE decode at 1024² (bf16): the lean decoder against diffusers' own, eager and compiled
    (accel.accelerate_vae), with time, activation peak and pixel difference against the lean eager
    decoder; diffusers' postprocess against engine._to_pil. (run19's version of this step measured
    cuDNN benchmark mode: no gain.)"""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from zimage_serve.model.engine import _to_pil

    z = torch.randn(1, 16, SIZE // 8, SIZE // 8, device="cuda", dtype=torch.bfloat16,
                    generator=torch.Generator("cuda").manual_seed(0))
    pixels = lambda image: np.asarray(_to_pil(image), dtype=np.int16)
    out, reference = {}, None
    # run20 also measured channels_last (slower eager: 0.154 s; no gain compiled), since removed
    variants = {"lean": {}, "diffusers": {"lean": False}, "lean_compiled_norms": {"compile": "norms"},
                "lean_compiled": {"compile": True},
                "lean_compiled_dynamic": {"compile": True, "dynamic": True},
                "lean_compiled_banded_eager": {"compile": True, "banded_eager": True},
                "diffusers_compiled": {"lean": False, "compile": True, "dynamic": True}}
    only = os.environ.get("BENCH_DECODE")  # a comma-separated choice of variants (the first is the reference)
    for name, kwargs in variants.items():
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
        image = torch.rand(1, 3, SIZE, SIZE, device="cuda", dtype=torch.bfloat16) * 2 - 1
        processor = VaeImageProcessor(vae_scale_factor=16)
        out["diffusers_postprocess_s"] = round(timed(lambda: processor.postprocess(image, output_type="pil")), 4)
        out["to_pil_on_gpu_s"] = round(timed(lambda: _to_pil(image)), 4)
    save("decode", **out)


def te():
    """The text encoder on the GPU (bf16, last layer skipped): eager against a regional compile of its
    decoder layers (measured, not adopted: BENCHMARKS.md), batch 1 and 8, a long and a short prompt;
    the embeddings' difference."""
    import torch

    from zimage_serve.model.optim.accel import compile_setup
    from zimage_serve.model.encoding import PromptEncoder
    from zimage_serve.model.loader import load_text_encoder
    from zimage_serve.model.sources import resolve

    model, tokenizer = load_text_encoder(resolve(str(CKPT)), torch.device("cuda"), torch.bfloat16)
    encoder = PromptEncoder(model, tokenizer)
    prompts = {"long": PROMPT, "short": "a red fox in the snow"}

    def measure():
        return {f"{name}_b{n}_s": round(timed(lambda: encoder.encode([p] * n), reps=7), 4)
                for name, p in prompts.items() for n in (1, 8)}

    out = {"tokens": {name: encoder.count_tokens(p) for name, p in prompts.items()}, "eager": measure()}
    reference = encoder.encode(list(prompts.values()))
    compile_setup(os.environ["ZIMAGE_CACHE_DIR"] + "/compile")
    for layer in model.layers:  # regional: the 35 decoder layers share one compiled graph; prompt lengths vary
        layer.compile(dynamic=True, fullgraph=False)
    out["applied"] = {"text_encoder_compile": f"regional ({len(model.layers)} layers)"}
    t = time.time()
    for p in prompts.values():
        for n in (1, 2, 8):
            encoder.encode([p] * n)
    torch.cuda.synchronize()
    out["compile_first_calls_s"] = round(time.time() - t, 1)
    out["compiled"] = measure()
    t = time.time()
    encoder.encode(["an unseen prompt length " * 9] * 3)
    torch.cuda.synchronize()
    out["new_shape_after_warmup_s"] = round(time.time() - t, 3)
    compiled = encoder.encode(list(prompts.values()))
    out["max_abs_diff"] = round(max((a.float() - b.float()).abs().max().item() for a, b in zip(reference, compiled)), 4)
    out["max_abs_reference"] = round(max(a.float().abs().max().item() for a in reference), 2)
    out["cosine_min"] = round(min(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min().item()
                                  for a, b in zip(reference, compiled)), 6)
    save("te", **out)


def engine_gpu():
    """In-process end to end with the text encoder on the GPU (the same placement as http_gpu)."""
    import torch

    from zimage_serve.model.engine import Job
    from zimage_serve.model.imaging import encode_image

    engine = _engine(encode_on="gpu", compile=True, batch=1)
    run = lambda: encode_image(engine.generate([Job(engine.encode([f"{PROMPT} {time.time()}"])[0], 1, SIZE, SIZE)]).images[0], "png", 1)
    run()
    e2e = timed(run, reps=7)
    enc = timed(lambda: engine.encode([PROMPT]), reps=5)
    save("engine_gpu", e2e_s=round(e2e, 3), te_gpu_s=round(enc, 4), plan=engine.plan.to_dict())


def vram():
    """Peak VRAM of the resident plan (prompts on CPU): the lean decoder (default), diffusers' own
    decoder, and tiled decoding; each one's generate time and its pixel difference from the lean one."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from zimage_serve.model.engine import Job

    import_s = float(subprocess.run([sys.executable, "-c", "import time; t = time.time(); "
                                     "from diffusers import ZImagePipeline, AutoencoderKL; import transformers; "
                                     "print(time.time() - t)"], capture_output=True, text=True).stdout.strip() or -1)
    engine = _engine(compile=False, batch=1)
    embeds = engine.encode([PROMPT])[0]
    job = Job(embeds, seed=1, width=SIZE, height=SIZE)
    out = {"diffusers_import_s": round(import_s, 1)}
    images = {}
    lean_vae = engine.pipe.vae
    for name in ("plain", "stock_decoder", "tiled"):
        if name == "stock_decoder":  # diffusers' own decoder in the lean one's place (which leaves the GPU)
            lean_vae.to("cpu")
            engine.pipe.vae = AutoencoderKL.from_pretrained(CKPT, subfolder="vae", dtype=torch.bfloat16).to("cuda").eval()
        if name == "tiled":
            engine.pipe.vae = lean_vae.to("cuda")
            torch.cuda.empty_cache()
            engine.enable_vae_tiling(512)
        engine.generate([job])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        lat = timed(lambda: engine.generate([job]), reps=3)
        peak = torch.cuda.max_memory_allocated() / 2**30
        images[name] = np.asarray(engine.generate([job]).images[0], dtype=np.float32)
        out[name] = {"peak_vram_gib": round(peak, 2), "generate_s": round(lat, 3)}
        if name != "plain":
            out[name]["mean_abs_pixel_diff_vs_plain"] = round(float(np.abs(images[name] - images["plain"]).mean()), 3)
            out[name]["max_abs_pixel_diff_vs_plain"] = int(np.abs(images[name] - images["plain"]).max())
    save("vram", **out)


def _t(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# Installed on the GPU machine's image but outside zimage-serve's dependencies (absent from a venv made
# from pyproject.toml, and from cluster/Dockerfile's image); diffusers and transformers import them when present.
NOT_OUR_DEPENDENCIES = ("peft", "sklearn", "scipy", "torchvision", "narwhals")


PYCACHE_PREFIX = "/tmp/pycache-prefix"


def _with_bytecode(env: dict) -> dict:
    """``env`` where Python keeps the bytecode it compiles (under PYCACHE_PREFIX), as in an image made by
    pip, which compiles it at install. The GPU machine sets PYTHONDONTWRITEBYTECODE and its torch has no
    bytecode, so as it is every process compiles torch's modules again."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return dict(env, PYTHONPYCACHEPREFIX=PYCACHE_PREFIX)


def coldstart():
    """Process start to first image, page cache warm: eager in the machine's environment as it is; then with
    only our dependencies importable and the bytecode kept (as in our image); with the bf16 weights cache;
    as a served replica (compile, CUDA graphs, warm-up), cold then warm compile cache."""
    import shutil

    results = {"not_our_dependencies": NOT_OUR_DEPENDENCIES}
    cache = Path(os.environ["ZIMAGE_CACHE_DIR"]) / "compile-cold"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(cache.parent / "weights", ignore_errors=True)
    if os.environ.get("BENCH_IMPORTS", "1") == "1":
        results["imports"] = _import_times()
    subprocess.run([sys.executable, "-c", "import zimage_serve.model.engine, zimage_serve.model.loader, diffusers, transformers, "
                    "accelerate, safetensors"], env=_with_bytecode(os.environ), check=False)  # writes the bytecode
    # "served": what a generator replica runs before it reports ready (serve_config's speed-ups and warm-up);
    # "weights_cache": ZIMAGE_WEIGHTS_CACHE=1, the first run writes the bf16 copy, the next reads it
    variants = (("eager", False, False, False, 0), ("eager_our_dependencies_only", False, True, False, 0),
                ("eager_bytecode", False, True, True, 0), ("eager_weights_cache_write", False, True, True, 1),
                ("eager_weights_cache", False, True, True, 1),
                ("served_cold_cache", "served", True, True, 0), ("served_warm_cache", "served", True, True, 0))
    only = os.environ.get("BENCH_COLDSTART")  # a comma-separated choice of variants
    for name, compile, hide, bytecode, weights in variants:
        if (os.environ.get("BENCH_QUICK") and name == "served_cold_cache") or (only and name not in only.split(",")):
            continue
        # a step before this one (in this process) named its compile cache in TORCHINDUCTOR_CACHE_DIR: not inherited
        inherited = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
        env = dict(inherited, BENCH_T0=str(time.time()), BENCH_COMPILE=str(compile), BENCH_HIDE=str(int(hide)),
                   ZIMAGE_CACHE_DIR=str(cache.parent), BENCH_CACHE=str(cache), ZIMAGE_WEIGHTS_CACHE=str(weights))
        r = subprocess.run([sys.executable, __file__, "_first_image"], env=_with_bytecode(env) if bytecode else env,
                           capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("FIRST")]
        results[name] = json.loads(line[0][5:]) if line else {"error": r.stderr[-800:]}
        save("coldstart", **results)  # after each variant: a step cut short keeps what it measured


def _import_times() -> dict:
    """Seconds to import torch, diffusers' Z-Image model and transformers' Qwen3 in a fresh process, twice as
    the machine is, then twice with PYTHONPYCACHEPREFIX on a writable directory: whether the image's
    packages have to compile their bytecode on every start."""
    import importlib.util
    import sysconfig

    code = ("import time; t = time.perf_counter(); import torch; t1 = time.perf_counter(); "
            "import diffusers.models.transformers.transformer_z_image, transformers.models.qwen3.modeling_qwen3; "
            "print(round(t1 - t, 2), round(time.perf_counter() - t1, 2))")
    out = {"purelib": sysconfig.get_paths()["purelib"], "dont_write_bytecode": sys.flags.dont_write_bytecode,
           "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")}
    for pkg in ("torch", "transformers", "diffusers"):
        spec = importlib.util.find_spec(pkg)
        where = Path(spec.origin).parent
        out[f"{pkg}_dir"] = {"path": str(where), "writable": os.access(where, os.W_OK),
                             "has_pycache": (where / "__pycache__").is_dir()}
    for label, env in (("as_is", os.environ), ("pycache_prefix", _with_bytecode(os.environ))):
        for i in (1, 2):
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            torch_s, rest_s = (r.stdout.split() + ["nan", "nan"])[:2]
            out[f"{label}_{i}"] = {"torch_s": float(torch_s), "diffusers_transformers_s": float(rest_s)}
    print("imports", out, flush=True)
    return out


def _first_image():
    t0 = float(os.environ["BENCH_T0"])
    marks = {"python_started": time.time() - t0}
    if os.environ.get("BENCH_HIDE") == "1":  # find_spec() says None and import fails, as if not installed
        sys.modules.update({name: None for name in NOT_OUR_DEPENDENCIES})
    from zimage_serve.model.engine import Engine, Job, plan_for_this_machine
    from zimage_serve.model.imaging import encode_image
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.sources import resolve

    marks["imports"] = time.time() - t0
    import diffusers.models.transformers.transformer_z_image  # noqa: F401  (Engine.load would import them: timed apart)
    import transformers.models.qwen3.modeling_qwen3  # noqa: F401

    marks["imports_diffusers_transformers"] = time.time() - t0
    served = os.environ["BENCH_COMPILE"] == "served"
    source = resolve(str(CKPT))
    marks["resolved"] = time.time() - t0
    plan = plan_for_this_machine(source, Workload(SIZE, SIZE, 4 if served else 1), "auto", "cpu")
    marks["planned"] = time.time() - t0
    speedups = {"compile": served or os.environ["BENCH_COMPILE"] == "1", "cache_dir": os.environ["BENCH_CACHE"]}
    if served:
        speedups.update(fuse=True, cuda_graphs=True)
    engine = Engine.load(source, plan, with_text_encoder=True, speedups=speedups)
    engine.set_progress(False)
    marks["loaded"] = time.time() - t0
    extra = {}
    if served:  # as GeneratorDeployment does before it reports ready
        import torch._dynamo.utils

        engine.warmup(SIZE, SIZE, (1, 2))
        marks["warmed_up"] = time.time() - t0
        extra = {"warmup_calls": engine.warmup_calls, "dynamo_stats": dict(torch._dynamo.utils.counters["stats"]),
                 "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                 "caches": {k: v for name in ("inductor", "aot_autograd")
                                   for k, v in torch._dynamo.utils.counters[name].items() if "cache" in k}}
    embeds = engine.encode([PROMPT])[0]
    marks["encoded"] = time.time() - t0
    image = engine.generate([Job(embeds, 1, SIZE, SIZE)]).images[0]
    marks["generated"] = time.time() - t0
    encode_image(image, "png", 1)
    first = time.time() - t0
    if served:  # the denoise this replica then runs (the kernels its warm-up left: dynamic shapes)
        extra["denoise_s"] = round(timed(lambda: _latents(engine, embeds), reps=3), 3)
    print("FIRST" + json.dumps({"first_image_s": round(first, 1), "marks_s": {k: round(v, 1) for k, v in marks.items()},
                                "load_parts_s": {k: round(v, 1) for k, v in engine.loaded.seconds.items()}, **extra}), flush=True)


def _steady_rate(done: list[float], skip: int, gap: float = 0.3) -> float:
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
    """The Serve app over HTTP: one request in flight (prompts never cached; PNG, then JPEG), then saturation:
    64 requests from 16 clients, images/s over all of them and in steady state (whole batches after the
    first 8 answers: the first batches wait for the CPU encoders to warm up). Counts the requests whose
    prompt the generator encoded in each phase (``encode_on`` auto routes them by load)."""
    import asyncio

    import aiohttp
    import ray
    from ray import serve

    from zimage_serve.app import build_app

    config = {"model": str(CKPT), "default_size": f"{SIZE}x{SIZE}",
              "encoder": {"num_cpus": 8, "threads": 8, "max_batch_size": 8, "cache_size": 0},
              "generator": {"num_gpus": 1, "encode_on": encode_on, "fp8": fp8, "max_batch_size": 4, "max_ongoing_requests": 8,
                            "max_queued_requests": 256, "batch_wait_timeout_s": 0}}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"ZIMAGE_CACHE_DIR": os.environ["ZIMAGE_CACHE_DIR"]}})
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    t0 = time.time()
    serve.run(build_app(config), name="zimage", route_prefix="/", blocking=False)
    deploy_s = time.time() - t0
    url = "http://127.0.0.1:8000/generate"
    on_generator = {"single": 0, "saturation": 0}  # prompts the generator encoded (Server-Timing has text_encode)

    async def one(session, i, fmt="png", phase="single"):
        t = time.perf_counter()
        async with session.post(url, json={"prompt": f"{PROMPT} #{i} {time.time()}", "seed": i, "output_format": fmt}) as r:
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
            return single, single_jpeg, n / (time.perf_counter() - t), lat, _steady_rate(done, skip=8)

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
    serve.shutdown()
    ray.shutdown()


def overhead():
    """Serving overhead, interleaved: the Serve app (prompts encoded on the GPU) and the engine in-process
    (the same placement) loaded side by side on one GPU, one image at a time, alternating, so both see
    the same machine at the same moment. Ratio of the medians: HTTP end to end over in-process end to end."""
    import urllib.request

    import ray
    from ray import serve

    from zimage_serve.app import build_app
    from zimage_serve.model.engine import Job
    from zimage_serve.model.imaging import encode_image

    config = {"model": str(CKPT), "default_size": f"{SIZE}x{SIZE}", "encoder": {"num_cpus": 1, "cache_size": 0},
              "generator": {"num_gpus": 1, "encode_on": "gpu", "max_batch_size": 4, "max_ongoing_requests": 8,
                            "num_cpus": float(os.environ.get("BENCH_GENERATOR_CPUS", 1))}}
    engine = _engine(encode_on="gpu", compile=True, batch=1, cuda_graphs=True)  # first: a replica's allocator keeps what it touched
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"ZIMAGE_CACHE_DIR": os.environ["ZIMAGE_CACHE_DIR"]}})
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app(config), name="zimage", route_prefix="/", blocking=False)

    stages_local, stages_http = [], []

    def in_process(i):
        t0 = time.perf_counter()
        embeds = engine.encode([f"{PROMPT} #{i} {time.time()}"])[0]
        t1 = time.perf_counter()
        result = engine.generate([Job(embeds, i, SIZE, SIZE)])
        t2 = time.perf_counter()
        encode_image(result.images[0], "png", 1)
        stages_local.append({"text_encode": t1 - t0, **result.seconds, "image_encode": time.perf_counter() - t2})

    def over_http(i):
        body = json.dumps({"prompt": f"{PROMPT} #{i} {time.time()}", "seed": i}).encode()
        req = urllib.request.Request("http://127.0.0.1:8000/generate", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            timing = r.headers["Server-Timing"]
        stages_http.append({k: float(v) / 1000 for k, v in (part.split(";dur=") for part in timing.split(", "))})

    for i in range(3):
        in_process(i), over_http(i)
    stages_local.clear(), stages_http.clear()
    local, remote = [], []
    for i in range(15):
        local.append(_t(lambda: in_process(100 + i)))
        remote.append(_t(lambda: over_http(100 + i)))
        stages_http[-1]["client"] = remote[-1]
    p50_local, p50_http = statistics.median(local), statistics.median(remote)
    median = lambda rows: {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}
    save("overhead", in_process_p50_s=round(p50_local, 3), http_p50_s=round(p50_http, 3),
         overhead_ratio=round(p50_http / p50_local - 1, 4), in_process=[round(x, 3) for x in local],
         http=[round(x, 3) for x in remote], in_process_stages_p50_s=median(stages_local),
         http_stages_p50_s=median(stages_http), generator_num_cpus=config["generator"].get("num_cpus", 1))
    serve.shutdown()
    ray.shutdown()


def offload():
    """The streamed-offload plan (and model-level offload) against resident, eager, same run."""
    import gc

    import torch

    from zimage_serve.model.engine import Job

    results = {}
    for policy in ("resident", "sequential"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        engine = _engine(policy=policy, compile=False, batch=1)
        embeds = engine.encode([PROMPT])[0]
        job = Job(embeds, seed=1, width=SIZE, height=SIZE)
        torch.cuda.reset_peak_memory_stats()
        lat = timed(lambda: engine.generate([job]), reps=3)
        results[policy] = {"latency_s": round(lat, 3), "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                           "plan_estimate_gib": engine.plan.peak_gib, "plan": engine.plan.kind}
        del engine, embeds, job
        gc.collect()
    results["latency_ratio"] = round(results["sequential"]["latency_s"] / results["resident"]["latency_s"], 2)
    save("offload", **results)


def fp8():
    """Opt-in FP8 (fp8.py: e4m3 weights and activations, rowwise scales) vs bf16, both fused and
    regionally compiled, in one process: compile time, denoise, image difference, weights' memory."""
    import numpy as np
    import torch

    from zimage_serve.model.optim.accel import accelerate
    from zimage_serve.model.engine import Job

    engine = _engine(compile=True, batch=1)
    embeds = engine.encode([PROMPT])[0]
    _latents(engine, embeds)
    bf16 = timed(lambda: _latents(engine, embeds), reps=3)
    image = lambda: np.asarray(engine.generate([Job(embeds, 1, SIZE, SIZE)]).images[0], dtype=np.float32)
    ref = image()
    bf16_gib = torch.cuda.memory_allocated() / 2**30
    t = time.time()
    torch._dynamo.reset()
    applied = accelerate(engine.pipe.transformer, compile=True, fp8=True, cache_dir=os.environ["ZIMAGE_CACHE_DIR"] + "/compile")
    _latents(engine, embeds)
    compile_s = time.time() - t
    f8 = timed(lambda: _latents(engine, embeds), reps=3)
    latents = _latents(engine, embeds)
    out = image()
    mse = float(((out - ref) ** 2).mean())
    save("fp8", implementation="zimage_serve.model.optim.fp8 (torch._scaled_mm, rowwise)", fp8_linear_layers=applied.get("fp8_linear_layers"),
         bf16_denoise_s=round(bf16, 3), fp8_denoise_s=round(f8, 3), speedup=round(bf16 / f8, 2),
         fp8_compile_s=round(compile_s, 1), nan_latents=int(torch.isnan(latents).sum()),
         pixel_mean_abs_diff=round(float(np.abs(out - ref).mean()), 2), psnr_db=round(10 * np.log10(255**2 / mse), 1) if mse else None,
         allocated_gib_bf16=round(bf16_gib, 2), allocated_gib_fp8=round(torch.cuda.memory_allocated() / 2**30, 2))


def probe():
    """Diagnostics: where imports spend their time; where the VAE decode peaks (transient GiB per module)."""
    import torch
    from diffusers import AutoencoderKL

    from zimage_serve.model.optim.lean_vae import lean_decoder

    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "from diffusers import AutoencoderKL, ZImagePipeline, "
                        "ZImageTransformer2DModel; from transformers import AutoModel, AutoTokenizer"],
                       capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), int(parts[0].split(":")[1]), parts[2].rstrip()))
    total = max((c for c, _, _ in rows), default=0)
    out = {"import_total_s": round(sum(c for c, _, n in rows if not n.startswith("  ")) / 1e6, 2),
           "top_self_ms": [(n.strip(), round(s / 1000)) for _, s, n in sorted(rows, key=lambda x: -x[1])[:25]],
           "top_cumulative_ms": [(n, round(c / 1000)) for c, _, n in sorted(rows, key=lambda x: -x[0])[:40]],
           "max_cumulative_s": round(total / 1e6, 2)}
    vae = AutoencoderKL.from_pretrained(CKPT, subfolder="vae", dtype=torch.bfloat16).to("cuda").eval()
    lean_decoder(vae)
    dec = vae.decoder
    peaks = []
    base = {}

    def pre(name):
        def hook(module, args):
            torch.cuda.synchronize()
            base[name] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        return hook

    def post(name):
        def hook(module, args, output):
            torch.cuda.synchronize()
            peaks.append((name, round((torch.cuda.max_memory_allocated() - base[name]) / 2**30, 3)))
        return hook

    for name, m in dec.named_modules():
        if type(m).__name__ in ("ResnetBlock2D", "Attention", "_BandedUpsample", "Upsample2D") or name in (
                "conv_in", "conv_norm_out", "conv_out"):
            m.register_forward_pre_hook(pre(name))
            m.register_forward_hook(post(name))
    z = torch.randn(1, vae.config.latent_channels, 128, 128, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        vae.decode(z)
        peaks.clear()
        torch.cuda.synchronize()
        weights = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        vae.decode(z)
        torch.cuda.synchronize()
    out["vae_decode_transient_gib"] = round((torch.cuda.max_memory_allocated() - weights) / 2**30, 3)
    out["vae_module_transient_gib"] = sorted(peaks, key=lambda x: -x[1])[:25]
    save("probe", **out)


def attn():
    """Attention alone at the denoiser's shapes (30 heads of 128; 4096 image tokens + a caption padded to
    32): each SDPA backend on the layouts a block can hand it, and FlexAttention compiled. TFLOP/s
    counts 4*B*H*S^2*D."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {"cudnn_version": torch.backends.cudnn.version(), "torch": torch.__version__, "rows": []}
    heads, dim = 30, 128

    def bench(fn, reps=20):
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps

    def inputs(batch, seq, layout):
        if layout == "qkv":  # views of one fused projection's output [B, S, 3, H, D]
            qkv = torch.randn(batch, seq, 3, heads, dim, device="cuda", dtype=torch.bfloat16)
            return [t.transpose(1, 2) for t in qkv.unbind(2)]
        if layout == "bshd":  # each [B, S, H, D] contiguous, transposed (what diffusers' native dispatch passes)
            return [torch.randn(batch, seq, heads, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
        return [torch.randn(batch, heads, seq, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3)]

    backends = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    for batch, seq in ((1, 4192), (1, 4128), (1, 4224), (4, 4192)):
        flops = 4 * batch * heads * seq * seq * dim
        for layout in ("qkv", "bshd", "bhsd"):
            q, k, v = inputs(batch, seq, layout)
            for name, backend in backends.items():
                def run():
                    if backend is None:
                        return F.scaled_dot_product_attention(q, k, v)
                    with sdpa_kernel([backend]):
                        return F.scaled_dot_product_attention(q, k, v)
                try:
                    ms = bench(run)
                    out["rows"].append({"batch": batch, "seq": seq, "layout": layout, "backend": name,
                                        "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)})
                except Exception as e:
                    out["rows"].append({"batch": batch, "seq": seq, "layout": layout, "backend": name, "error": repr(e)[:200]})
            del q, k, v
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
            q, k, v = inputs(batch, seq, "bhsd")
            ms = bench(lambda: flex(q, k, v))
            diff = (flex(q, k, v).float() - F.scaled_dot_product_attention(q, k, v).float()).abs().max().item()
            out["rows"].append({"batch": batch, "seq": seq, "layout": "bhsd", "backend": "flex (compiled)",
                                "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), "max_diff_vs_sdpa": diff})
        except Exception as e:
            out["rows"].append({"batch": batch, "seq": seq, "backend": "flex (compiled)", "error": repr(e)[:200]})
    for r in out["rows"]:
        print(r, flush=True)
    save("attn", **out)


def batch():
    """The batch job (``python -m zimage_serve.batch``, Ray Data) on one GPU, 40 prompts at 1024²: images/s
    in steady state (image files' mtimes after the first batch) and whole-job wall time; before it, the
    prompt-encoding stage alone, as it was (1 thread, float32) and as it is (its default threads, auto dtype)."""
    import numpy as np
    import torch

    from zimage_serve.batch.job import EncodeStage, encoder_cpus

    out = {}
    rows = lambda n: {"prompt": np.array([f"{PROMPT}, variation {i}" for i in range(n)]), "guidance_scale": np.zeros(n),
                      "negative_prompt": np.array([""] * n)}
    # (name, threads, dtype, prompts, warm-up call): the old stage is slow enough (about 0.1 prompt/s) to time once
    for name, threads, dtype, n, warm in (("encode_stage_before", 1, "float32", 2, False),
                                          ("encode_stage_now", encoder_cpus(None, os.cpu_count(), 1), "auto", 8, True)):
        stage = EncodeStage(str(CKPT), threads=threads, dtype=dtype)
        if warm:
            stage(rows(n))
        t = time.perf_counter()
        stage(rows(n))
        out[name] = {"threads": threads, "dtype": str(stage.dtype), "prompts": n,
                     "prompts_per_s": round(n / (time.perf_counter() - t), 3)}
        print(name, out[name], flush=True)
        del stage
    torch.set_num_threads(os.cpu_count())
    n = 40
    work = Path("/tmp/batchjob")
    subprocess.run(["rm", "-rf", str(work)])
    work.mkdir()
    (work / "prompts.txt").write_text("".join(f"{PROMPT}, scene {i}\n" for i in range(n)))
    cmd = [sys.executable, "-m", "zimage_serve.batch", "--prompts", str(work / "prompts.txt"), "--out", str(work / "out"),
           "--model", str(CKPT), "--size", f"{SIZE}x{SIZE}", "--gpus", "1"]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out["job_wall_s"] = round(time.time() - t, 1)
    out["returncode"] = r.returncode
    out["stderr_tail"] = r.stderr[-1500:]
    images = sorted((work / "out").glob("*.png"), key=lambda p: p.stat().st_mtime)
    out["images"] = len(images)
    if len(images) > 8:
        mtimes = [p.stat().st_mtime for p in images]
        out["steady_img_s"] = round((len(mtimes) - 4) / (mtimes[-1] - mtimes[3]), 3)
        out["first_image_after_start_s"] = round(mtimes[0] - t, 1)
    save("batch", **out)


class _GpuSampler:
    """The GPU's SM clock and power every ``period`` seconds (nvidia-smi), each sample tagged with the phase
    running when it was taken."""

    FIELDS = ("clocks.sm", "clocks.max.sm", "power.draw", "power.limit", "temperature.gpu",
              "clocks_event_reasons.sw_power_cap", "clocks_event_reasons.hw_slowdown",
              "clocks_event_reasons.sw_thermal_slowdown")

    def __init__(self, period=0.1):
        import threading

        self.period, self.phase, self.rows, self._stop = period, "idle", [], threading.Event()
        fields = self.FIELDS
        if subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                          capture_output=True).returncode:
            fields = fields[:5]
        self.fields = fields
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            phase = self.phase
            r = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(self.fields)}", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
            if r.returncode == 0 and phase == self.phase:
                self.rows.append((phase, [x.strip() for x in r.stdout.strip().split(",")]))
            self._stop.wait(self.period)

    def summary(self) -> dict:
        self._stop.set()
        self._thread.join()
        out = {}
        for phase in dict.fromkeys(p for p, _ in self.rows):
            rows = [v for p, v in self.rows if p == phase]
            num = lambda i: [float(v[i]) for v in rows if v[i].replace(".", "", 1).isdigit()]
            entry = {"samples": len(rows), "sm_clock_mhz_median": statistics.median(num(0)) if num(0) else None,
                     "sm_clock_mhz_min": min(num(0)) if num(0) else None, "sm_clock_max_mhz": rows[0][1],
                     "power_w_median": statistics.median(num(2)) if num(2) else None, "power_limit_w": rows[0][3],
                     "temperature_c_max": max(num(4)) if num(4) else None}
            for i, name in enumerate(self.fields[5:], 5):
                entry[name.split(".")[-1] + "_share"] = round(sum(v[i] == "Active" for v in rows) / len(rows), 2)
            out[phase] = entry
        return out


def _gpu_busy(engine, embeds) -> dict:
    """One 8-step denoise under the profiler (CUDA activity only, so the CPU side runs as usual): the
    kernels' busy time against the span from first kernel to last, and the largest idle gaps between kernels."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        _latents(engine, embeds)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    kernels = sorted(((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                      if e.device_type == DeviceType.CUDA), key=lambda k: k[0])
    busy, gaps, end, prev = 0.0, [], None, None
    for start, stop, name in kernels:
        if end is not None and start > end:
            gaps.append((start - end, prev, name))
        if end is None or stop > end:
            busy += stop - max(start, end if end is not None else start)
            end, prev = stop, name
    span = kernels[-1][1] - kernels[0][0]
    gaps.sort(key=lambda g: -g[0])
    return {"wall_ms": round(wall * 1000, 1), "span_ms": round(span / 1000, 1), "busy_ms": round(busy / 1000, 1),
            "idle_ms": round((span - busy) / 1000, 1), "kernels": len(kernels),
            "gaps_over_50us": sum(g[0] > 50 for g in gaps), "idle_in_gaps_over_50us_ms": round(sum(g[0] for g in gaps if g[0] > 50) / 1000, 1),
            "largest_gaps": [(round(g[0] / 1000, 3), g[1][:70], g[2][:70]) for g in gaps[:12]]}


def timeline():
    """Where a 1024² denoise's time goes beyond its kernels' sum: how busy the GPU is over the 8 steps, and
    its SM clock and power meanwhile; the same clock and power under a plain bf16 matmul, the ceiling."""
    import torch

    out = {}
    sampler = _GpuSampler()
    time.sleep(1.0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for reps, key in ((20, "burst"), (800, "sustained")):  # about 0.03 s, then about 1.4 s of matmuls
        sampler.phase = f"matmul_{key}"
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        out[f"matmul_8192_{key}_tflops"] = round(2 * 8192**3 * reps / (time.perf_counter() - t) / 1e12, 1)
    del a, b
    sampler.phase = "load"
    engine = _engine(batch=1)  # fused + regional compile, as served (graphs change nothing at 1024², run26)
    embeds = engine.encode([PROMPT])[0]
    _latents(engine, embeds)
    sampler.phase = "idle_after_load"
    time.sleep(1.0)
    sampler.phase = "denoise_loop"
    out["denoise_s"] = round(timed(lambda: _latents(engine, embeds), reps=8), 3)
    sampler.phase = "profiled"
    out["busy"] = [_safe(_gpu_busy, engine, embeds) for _ in range(2)]
    out["per_step_kernels"] = _safe(_profile_step, engine, embeds)
    out["gpu"] = sampler.summary()
    save("timeline", **out)


STEPS = {"timeline": timeline, "batch": batch, "attn": attn, "peak": peak, "te": te, "decode": decode, "graphs": graphs, "overhead": overhead, "probe": probe, "fusion": fusion, "build": build, "stock": stock, "engine": engine_step, "coldstart": coldstart, "_first_image": _first_image,
         "http": http, "http_gpu": lambda: http("gpu"), "http_auto": lambda: http("auto"),
         "http_fp8": lambda: http("cpu", fp8=True), "http_gpu_fp8": lambda: http("gpu", fp8=True), "offload": offload, "fp8": fp8, "engine_gpu": engine_gpu, "vram": vram}

if __name__ == "__main__":
    for step in sys.argv[1:]:
        t = time.time()
        try:
            STEPS[step]()
        except Exception as e:  # keep going: one failed step must not lose the others
            import traceback

            traceback.print_exc()
            save(step, error=repr(e)[:500])
        print(f"step {step} took {time.time() - t:.1f}s", flush=True)
