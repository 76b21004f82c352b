"""Memory: peak VRAM with the lean, the stock and the tiled decoder (vram), the streamed-offload plan
against resident (offload), and diagnostics of import time and the VAE decode's peak (probe)."""

from __future__ import annotations

import gc
import subprocess
import sys

from ..common import engine_with_job, load_vae, peak_gib, pixel_diff, pixels, reset_peak, save, sync, timed

DIFFUSERS_IMPORT = ("import time; t = time.time(); from diffusers import ZImagePipeline, AutoencoderKL; "
                    "import transformers; print(time.time() - t)")


def vram():
    """Peak VRAM of the resident plan (prompts on CPU): the lean decoder, diffusers' own, and tiled decoding.

    Each one's generate time and its pixel difference from the lean one."""
    import torch

    import_s = float(subprocess.run([sys.executable, "-c", DIFFUSERS_IMPORT], capture_output=True,
                                    text=True).stdout.strip() or -1)
    eng, _, one = engine_with_job(compile=False, batch=1)
    out = {"diffusers_import_s": round(import_s, 1)}
    images = {}
    lean_vae = eng.pipe.vae
    for name in ("plain", "stock_decoder", "tiled"):
        if name == "stock_decoder":  # diffusers' own decoder in the lean one's place (which leaves the GPU)
            lean_vae.to("cpu")
            eng.pipe.vae = load_vae(lean=False)
        if name == "tiled":
            eng.pipe.vae = lean_vae.to("cuda")
            torch.cuda.empty_cache()
            eng.enable_vae_tiling(512)
        eng.generate([one])
        sync()
        reset_peak()
        lat = timed(lambda: eng.generate([one]), reps=3)
        peak = peak_gib()
        images[name] = pixels(eng, one)
        out[name] = {"peak_vram_gib": peak, "generate_s": round(lat, 3)}
        if name != "plain":
            (out[name]["mean_abs_pixel_diff_vs_plain"],
             out[name]["max_abs_pixel_diff_vs_plain"]) = pixel_diff(images[name], images["plain"])
    save("vram", **out)


def offload():
    """The streamed-offload plan (and model-level offload) against resident, eager, same run."""
    import torch

    results = {}
    for policy in ("resident", "sequential"):
        torch.cuda.empty_cache()
        reset_peak()
        eng, _, one = engine_with_job(policy=policy, compile=False, batch=1)
        reset_peak()
        lat = timed(lambda: eng.generate([one]), reps=3)
        results[policy] = {"latency_s": round(lat, 3), "peak_vram_gib": peak_gib(),
                           "plan_estimate_gib": eng.plan.peak_gib, "plan": eng.plan.kind}
        del eng, one
        gc.collect()
    results["latency_ratio"] = round(results["sequential"]["latency_s"] / results["resident"]["latency_s"], 2)
    save("offload", **results)


def _import_rows() -> list[tuple[int, int, str]]:
    """(cumulative us, self us, module) of each import diffusers and transformers make (python -X importtime)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "from diffusers import AutoencoderKL, ZImagePipeline, "
                        "ZImageTransformer2DModel; from transformers import AutoModel, AutoTokenizer"],
                       capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), int(parts[0].split(":")[1]), parts[2].rstrip()))
    return rows


def probe():
    """Diagnostics: where imports spend their time; where the VAE decode peaks (transient GiB per module)."""
    import torch

    rows = _import_rows()
    total = max((c for c, _, _ in rows), default=0)
    out = {"import_total_s": round(sum(c for c, _, n in rows if not n.startswith("  ")) / 1e6, 2),
           "top_self_ms": [(n.strip(), round(s / 1000)) for _, s, n in sorted(rows, key=lambda x: -x[1])[:25]],
           "top_cumulative_ms": [(n, round(c / 1000)) for c, _, n in sorted(rows, key=lambda x: -x[0])[:40]],
           "max_cumulative_s": round(total / 1e6, 2)}
    vae = load_vae()
    peaks, base = [], {}

    def pre(name):
        def hook(module, args):
            sync()
            base[name] = torch.cuda.memory_allocated()
            reset_peak()
        return hook

    def post(name):
        def hook(module, args, output):
            sync()
            peaks.append((name, peak_gib(since=base[name], digits=3)))
        return hook

    for name, m in vae.decoder.named_modules():
        if type(m).__name__ in ("ResnetBlock2D", "Attention", "_BandedUpsample", "Upsample2D") or name in (
                "conv_in", "conv_norm_out", "conv_out"):
            m.register_forward_pre_hook(pre(name))
            m.register_forward_hook(post(name))
    z = torch.randn(1, vae.config.latent_channels, 128, 128, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        vae.decode(z)
        peaks.clear()
        sync()
        weights = torch.cuda.memory_allocated()
        reset_peak()
        vae.decode(z)
        sync()
    out["vae_decode_transient_gib"] = peak_gib(since=weights, digits=3)
    out["vae_module_transient_gib"] = sorted(peaks, key=lambda x: -x[1])[:25]
    save("probe", **out)
