"""Merge the step results of bench/run.py (bench/results/run*/) into bench/results/latest.json.

    python bench/report.py          # prints the table that BENCHMARKS.md holds

Every figure is read from a file the GPU run wrote; nothing is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load_steps() -> dict:
    steps = {}
    for run in sorted(RESULTS.glob("run*")):
        for f in run.glob("*.json"):
            data = json.loads(f.read_text())
            if "error" not in data:
                steps[f.stem] = {**data, "_run": run.name}
    return steps


def summarize(s: dict) -> dict:
    rows = {r["stage"]: r for r in s["stock"]["rows"] if "stage" in r and r["stage"] != "batch"}
    stock_batch = {(r["size"], r["n"]): r for r in s["stock"]["rows"] if r.get("stage") == "batch"}
    eng, gpu_e2e = s["engine"], s["engine_gpu"]["e2e_s"]
    http, http_gpu = s["http"], s["http_gpu"]
    stock_denoise = rows["split"]["denoise_s"]
    stock_e2e = rows["stock"]["e2e_med_s"]
    stock_tput = 1 / stock_batch[(1024, 4)]["per_image_s"]
    stock_load = rows["stock"]["load_cpu_s"] + rows["stock"]["to_gpu_s"]
    cold = s["coldstart"]
    return {
        "device": http["gpu"]["name"],
        "engine": {
            "denoise_s": eng["denoise_s"], "eager_denoise_s": eng["eager_denoise_s"],
            "e2e_s": gpu_e2e, "e2e_cpu_text_encoder_s": eng["e2e_s"], "generate_s": eng["generate_s"],
            "cold_start_s": cold["eager"]["first_image_s"],
            "cold_start_compiled_s": cold["compile_warm_cache"]["first_image_s"],
            "cold_start_marks_s": cold["eager"]["marks_s"],
            "compile_first_call_s": eng["compile_first_call_s"],
            "peak_vram_gib_resident_cpu_te": eng["peak_vram_gib"],
            "batch4_per_image_s": eng["batch4_per_image_s"], "png_s": eng["png_s"],
        },
        "http": {
            "p50_s": http_gpu["p50_s"], "p95_s": http_gpu["p95_s"],
            "p50_cpu_text_encoder_s": http["p50_s"], "p95_cpu_text_encoder_s": http["p95_s"],
            "throughput_img_s": http["throughput_img_s"], "throughput_gpu_text_encoder_img_s": http_gpu["throughput_img_s"],
            "overhead_ratio": round(http_gpu["p50_s"] / gpu_e2e, 3),
        },
        "vae_tiling": {"peak_vram_gib_resident_cpu_te": s["vram"]["tiled"]["peak_vram_gib"],
                       "untiled_peak_vram_gib": s["vram"]["plain"]["peak_vram_gib"],
                       "generate_s": s["vram"]["tiled"]["generate_s"], "untiled_generate_s": s["vram"]["plain"]["generate_s"],
                       "mean_abs_pixel_diff": s["vram"]["tiled_mean_abs_pixel_diff"]},
        "imports": {"diffusers_transformers_first_import_s": s["vram"]["diffusers_import_s"]},
        "offload": {"peak_vram_gib": s["offload"]["sequential"]["peak_vram_gib"],
                    "latency_ratio": s["offload"]["latency_ratio"],
                    "resident_peak_vram_gib": s["offload"]["resident"]["peak_vram_gib"],
                    "resident_latency_s": s["offload"]["resident"]["latency_s"],
                    "sequential_latency_s": s["offload"]["sequential"]["latency_s"]},
        "fp8": {"denoise_speedup": s["fp8"]["speedup"], "fp8_denoise_s": s["fp8"]["fp8_denoise_s"],
                "bf16_denoise_s": s["fp8"]["bf16_denoise_s"], "compile_s": s["fp8"]["fp8_compile_s"],
                "psnr_db_vs_bf16_random_weights": s["fp8"]["psnr_db"]},
        "cpu_text_encoder": {"prompts_per_s": eng["cpu_text_encoder_prompts_per_s"],
                             "batch8_per_prompt_s": eng["te_cpu_batch8_per_prompt_s"], "batch1_s": eng["te_cpu_batch1_s"]},
        "stock": {
            "denoise_s": stock_denoise, "e2e_s": stock_e2e, "load_s": round(stock_load, 1),
            "peak_vram_gib": rows["stock"]["gen_peak_gib"], "peak_vram_gib_resident_cpu_te": rows["staged"]["peak_gib"],
            "throughput_img_s": round(stock_tput, 3), "te_gpu_s": rows["split"]["te_gpu_s"],
        },
        "ratios_vs_stock": {
            "denoise_speedup": round(stock_denoise / eng["denoise_s"], 2),
            "e2e_speedup": round(stock_e2e / gpu_e2e, 2),
            "http_p50_vs_stock_e2e": round(http_gpu["p50_s"] / stock_e2e, 2),
            "throughput_ratio": round(http["throughput_img_s"] / stock_tput, 2),
            "cold_start_vs_stock_load": round(cold["eager"]["first_image_s"] / stock_load, 2),
            "peak_vram_ratio_resident_cpu_te": round(eng["peak_vram_gib"] / rows["staged"]["peak_gib"], 3),
        },
        "sources": {k: v["_run"] for k, v in s.items()},
    }


def main() -> None:
    summary = summarize(load_steps())
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
