"""Merge the step results of bench/run.py (bench/results/run*/) into bench/results/latest.json.

    python bench/report.py          # prints the table that BENCHMARKS.md holds

Every figure is read from a file the GPU run wrote; nothing is typed in by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _run_number(path: Path) -> int:
    return int(path.name[3:]) if path.name[3:].isdigit() else -1


def load_steps() -> dict:
    """Each step's latest successful result (runs in numeric order: run13 after run9)."""
    steps = {}
    for run in sorted(RESULTS.glob("run*"), key=_run_number):
        for f in run.glob("*.json"):
            data = json.loads(f.read_text())
            if "error" not in data:
                steps[f.stem] = {**data, "_run": run.name}
    return steps


def summarize(s: dict) -> dict:
    rows = {r["stage"]: r for r in s["stock"]["rows"] if "stage" in r and r["stage"] != "batch"}
    stock_batch = {(r["size"], r["n"]): r for r in s["stock"]["rows"] if r.get("stage") == "batch"}
    eng, gpu_e2e, fu, ov = s["engine"], s["engine_gpu"]["e2e_s"], s["fusion"], s["overhead"]
    http, http_gpu, http_fp8, http_gpu_fp8 = s["http"], s["http_gpu"], s["http_fp8"], s["http_gpu_fp8"]
    stock_denoise = rows["split"]["denoise_s"]
    stock_e2e = rows["stock"]["e2e_med_s"]
    stock_tput = 1 / stock_batch[(1024, 4)]["per_image_s"]
    stock_load = rows["stock"]["load_cpu_s"] + rows["stock"]["to_gpu_s"]
    cold, served, vram, fp8 = s["_coldstart_run33"], s["coldstart"], s["vram"], s["fp8"]
    tl = s["timeline"]
    busy = tl["busy"][-1]
    return {
        "device": http_gpu["gpu"]["name"],
        "engine": {
            "denoise_s": eng["denoise_s"], "eager_denoise_s": eng["eager_denoise_s"],
            "compiled_denoise_no_graphs_s": eng["compiled_denoise_s"], "generate_stages_s": eng["generate_stages_s"],
            "denoise_fp8_s": fp8["fp8_denoise_s"],
            "e2e_s": ov["in_process_p50_s"], "e2e_s_engine_gpu_step": gpu_e2e,
            "e2e_cpu_text_encoder_s": eng["e2e_s"], "generate_s": eng["generate_s"],
            "cold_start_s": cold["eager_bytecode"]["first_image_s"],
            "cold_start_machine_as_is_s": cold["eager"]["first_image_s"],
            "cold_start_our_dependencies_only_s": cold["eager_our_dependencies_only"]["first_image_s"],
            "cold_start_weights_cache_s": cold["eager_weights_cache"]["first_image_s"],
            "weights_cache_write_s": cold["eager_weights_cache_write"]["load_parts_s"]["weights_cache_write"],
            "transformer_load_s": {"fp32_checkpoint": cold["eager_bytecode"]["load_parts_s"]["transformer"],
                                   "bf16_weights_cache": cold["eager_weights_cache"]["load_parts_s"]["transformer"]},
            "cold_start_marks_s": cold["eager_bytecode"]["marks_s"],
            "cold_start_served_warm_cache_s": served["served_warm_cache"]["first_image_s"],
            "cold_start_served_cold_cache_s": served["served_cold_cache"]["first_image_s"],
            "served_start": {k: {f: served[k][f] for f in ("marks_s", "warmup_calls", "dynamo_stats", "denoise_s")}
                             for k in ("served_cold_cache", "served_warm_cache")},
            "served_start_whole_decoder_run34": {
                k: {f: s["_coldstart_run34"][k][f] for f in ("first_image_s", "warmup_calls", "dynamo_stats")}
                for k in ("served_cold_cache", "served_warm_cache")},
            "served_warm_cache_before_dynamo_profile": {
                run: {f: c["served_warm_cache"][f] for f in ("first_image_s", "warmup_calls", "dynamo_stats")}
                for run, c in (("run32", s["_coldstart_run32"]), ("run33", cold))},
            "compile_first_call_s": eng["compile_first_call_s"],
            "peak_vram_gib_resident_cpu_te": eng["peak_vram_gib"],
            "batch4_per_image_s": eng["batch4_per_image_s"], "png_s": eng["png_s"],
        },
        "denoise_steps": {
            "eager_s": fu["eager_denoise_s"], "regional_compile_s": fu["compiled_denoise_s"],
            "compile_plus_fused_projections_s": fu["fused_denoise_s"],
            "plus_max_autotune_s": fu.get("fused_autotune_denoise_s"), "max_autotune_compile_s": fu.get("autotune_compile_first_call_s"),
            "fused_vs_unfused_mean_abs_pixel_diff": fu["fused_vs_unfused_mean_abs_pixel_diff"],
            "kernel_ms_per_step_compiled": fu["compiled_profile"].get("kernel_ms"),
            "kernel_ms_per_step_fused": fu["fused_profile"].get("kernel_ms"),
        },
        "http": {
            "p50_s": ov["http_p50_s"], "p95_s": sorted(ov["http"])[int(0.95 * (len(ov["http"]) - 1))],
            "p50_jpeg_s": http_gpu["jpeg_p50_s"], "p50_s_http_gpu_step": http_gpu["p50_s"],
            "stages_p50_s": ov.get("http_stages_p50_s"), "in_process_stages_p50_s": ov.get("in_process_stages_p50_s"),
            "p50_cpu_text_encoder_s": http["p50_s"], "p95_cpu_text_encoder_s": http["p95_s"],
            "throughput_img_s": http["throughput_img_s"], "steady_throughput_img_s": http["steady_throughput_img_s"],
            "saturation_batches": http["batches"][-16:],
            "throughput_gpu_text_encoder_img_s": http_gpu["throughput_img_s"],
            "steady_throughput_gpu_text_encoder_img_s": http_gpu["steady_throughput_img_s"],
            "replica_peak_gib": http["gpu"]["peak_allocated_gib"], "plan_peak_gib": http["plan"]["peak_gib"],
            "overhead_ratio": round(ov["http_p50_s"] / ov["in_process_p50_s"], 3),
            "overhead_interleaved": {"in_process_p50_s": ov["in_process_p50_s"], "http_p50_s": ov["http_p50_s"]},
            "encode_on_auto": {k: s["http_auto"][k] for k in ("p50_s", "p95_s", "jpeg_p50_s", "throughput_img_s",
                                                              "steady_throughput_img_s", "encoded_on_generator")},
            "deploy_s_cold_compile_cache": http_gpu["deploy_s"], "redeploy_s_warm_compile_cache": http_gpu["redeploy_warm_cache_s"],
        },
        "http_fp8": {
            "p50_s": http_gpu_fp8["p50_s"], "p95_s": http_gpu_fp8["p95_s"], "p50_jpeg_s": http_gpu_fp8["jpeg_p50_s"],
            "throughput_img_s": http_fp8["throughput_img_s"], "p50_cpu_text_encoder_s": http_fp8["p50_s"],
            "throughput_gpu_text_encoder_img_s": http_gpu_fp8["throughput_img_s"],
        },
        "decode": {"current": {k: v for k, v in s["decode"].items() if isinstance(v, dict)},
                   "variants": {k: v for k, v in s["_decode_run21"].items() if isinstance(v, dict)},
                   "variants_run20": {k: v for k, v in s["_decode_run20"].items() if isinstance(v, dict)},
                   "cudnn_benchmark_run19": {k: s["_decode_run19"][k] for k in ("decode_s", "decode_cudnn_benchmark_s")},
                   "diffusers_postprocess_s": s["decode"]["diffusers_postprocess_s"],
                   "to_pil_on_gpu_s": s["decode"]["to_pil_on_gpu_s"]},
        "batch_job": {k: s["batch"][k] for k in ("steady_img_s", "job_wall_s", "first_image_after_start_s", "images",
                                                  "encode_stage_before", "encode_stage_now")},
        "attention": {"cudnn_version": s["attn"]["cudnn_version"],
                      "rows": [r for r in s["attn"]["rows"] if r.get("layout") == "bhsd" and "ms" in r]},
        "peak_compiled_decoder": {k: s["peak"][k] for k in ("peak_vram_gib", "seconds", "first_generate_s", "speedups",
                                                             "whole_decoder_compiled")},
        "text_encoder_gpu": {k: s["te"][k] for k in ("tokens", "eager", "compiled", "compile_first_calls_s", "max_abs_diff")},
        "overhead_with_5ms_batch_wait_run22": {k: s["_overhead_run22"][k] for k in ("in_process_p50_s", "http_p50_s", "overhead_ratio", "http_stages_p50_s")},
        "cuda_graphs": {k: s["graphs"][k] for k in ("denoise_s", "graphs_denoise_s", "speedup", "denoise_512_s",
                                                     "graphs_denoise_512_s", "speedup_512", "graphs_vs_none_max_abs_pixel_diff",
                                                     "denoise_while_pillow_png_s", "denoise_while_ours_png_s")},
        "vram": {"lean_decoder_peak_gib": vram["plain"]["peak_vram_gib"], "lean_decoder_generate_s": vram["plain"]["generate_s"],
                 "stock_decoder_peak_gib": vram["stock_decoder"]["peak_vram_gib"],
                 "stock_decoder_generate_s": vram["stock_decoder"]["generate_s"],
                 "lean_vs_stock_decoder_max_abs_pixel_diff": vram["stock_decoder"]["max_abs_pixel_diff_vs_plain"],
                 "tiled_peak_gib": vram["tiled"]["peak_vram_gib"], "tiled_generate_s": vram["tiled"]["generate_s"],
                 "tiled_mean_abs_pixel_diff": vram["tiled"]["mean_abs_pixel_diff_vs_plain"]},
        "imports": {"diffusers_transformers_import_s": vram["diffusers_import_s"],
                    "top_cumulative_ms": s["probe"]["top_cumulative_ms"][:12],
                    "bytecode": {k: cold["imports"][k] for k in ("PYTHONDONTWRITEBYTECODE", "torch_dir", "as_is_1", "as_is_2",
                                                                 "pycache_prefix_1", "pycache_prefix_2")}},
        "power": {"denoise_s": tl["denoise_s"], "gpu_busy_ms": busy["busy_ms"], "gpu_span_ms": busy["span_ms"],
                  "gpu_busy_share": round(busy["busy_ms"] / busy["span_ms"], 3), "gaps_over_50us_ms": busy["idle_in_gaps_over_50us_ms"],
                  "largest_gap": busy["largest_gaps"][0],
                  "matmul_8192_sustained_tflops": tl["matmul_8192_sustained_tflops"],
                  "phases": {k: tl["gpu"][k] for k in ("idle", "matmul_sustained", "denoise_loop")},
                  "floor_at_sustained_matmul_s": round(8 * 56.6 / tl["matmul_8192_sustained_tflops"], 3)},
        "offload": {"peak_vram_gib": s["offload"]["sequential"]["peak_vram_gib"],
                    "latency_ratio": s["offload"]["latency_ratio"],
                    "resident_peak_vram_gib": s["offload"]["resident"]["peak_vram_gib"],
                    "resident_latency_s": s["offload"]["resident"]["latency_s"],
                    "sequential_latency_s": s["offload"]["sequential"]["latency_s"]},
        "fp8": {"denoise_speedup": fp8["speedup"], "fp8_denoise_s": fp8["fp8_denoise_s"],
                "bf16_denoise_s": fp8["bf16_denoise_s"], "compile_s": fp8["fp8_compile_s"],
                "psnr_db_vs_bf16_random_weights": fp8["psnr_db"], "mean_abs_pixel_diff_vs_bf16": fp8["pixel_mean_abs_diff"],
                "transformer_gib_bf16": fp8["allocated_gib_bf16"], "transformer_gib_fp8": fp8["allocated_gib_fp8"],
                "torchao_run4": {"denoise_s": s["_torchao"]["fp8_denoise_s"], "compile_s": s["_torchao"]["fp8_compile_s"]}},
        "cpu_text_encoder": {"prompts_per_s": eng["cpu_text_encoder_prompts_per_s"],
                             "batch8_per_prompt_s": eng["te_cpu_batch8_per_prompt_s"], "batch1_s": eng["te_cpu_batch1_s"]},
        "stock": {
            "denoise_s": stock_denoise, "e2e_s": stock_e2e, "load_s": round(stock_load, 1),
            "peak_vram_gib": rows["stock"]["gen_peak_gib"], "peak_vram_gib_resident_cpu_te": rows["staged"]["peak_gib"],
            "throughput_img_s": round(stock_tput, 3), "te_gpu_s": rows["split"]["te_gpu_s"],
        },
        "ratios_vs_stock": {
            "denoise_speedup": round(stock_denoise / eng["denoise_s"], 2),
            "denoise_speedup_fp8": round(stock_denoise / fp8["fp8_denoise_s"], 2),
            "e2e_speedup": round(stock_e2e / ov["in_process_p50_s"], 2),
            "http_p50_vs_stock_e2e": round(ov["http_p50_s"] / stock_e2e, 2),
            "throughput_ratio": round(http["throughput_img_s"] / stock_tput, 2),
            "throughput_ratio_fp8": round(http_fp8["throughput_img_s"] / stock_tput, 2),
            "steady_throughput_ratio": round(http["steady_throughput_img_s"] / stock_tput, 2),
            "batch_job_ratio": round(s["batch"]["steady_img_s"] / stock_tput, 2),
            "cold_start_vs_stock_load": round(cold["eager_bytecode"]["first_image_s"] / stock_load, 2),
            "peak_vram_ratio_resident_cpu_te": round(eng["peak_vram_gib"] / rows["staged"]["peak_gib"], 3),
        },
        "serve_batch_run17": s["_serve_batch"],
        "http_p50_cpu_encoders_run28": s["_http_run28"]["p50_s"],
        "batch_job_run27": {k: s["_batch_run27"][k] for k in ("steady_img_s", "first_image_after_start_s")},
        "batch_job_run30_before_writers": s["_batch_run30"]["steady_img_s"],
        "cold_start_run32": {k: s["_coldstart_run32"][k]["first_image_s"] for k in ("eager", "eager_our_dependencies_only")},
        "http_run29": {k: s["_http_run29"][k] for k in ("p50_s", "throughput_img_s", "steady_throughput_img_s", "deploy_s")},
        "sources": {k: v["_run"] for k, v in s.items() if not k.startswith("_")},
    }


def other_device(run: Path) -> dict:
    """One run of the same steps on another machine kind (bench/results/<kind>-run<N>/: stock, engine, timeline,
    fp8), summarized on its own: its ratios are against the stock figures of that run only."""
    step = lambda name: json.loads((run / f"{name}.json").read_text())
    stock, eng, tl, fp8 = step("stock"), step("engine"), step("timeline"), step("fp8")
    rows = {r["stage"]: r for r in stock["rows"] if r.get("stage") != "batch"}
    batch4 = next(r for r in stock["rows"] if r.get("stage") == "batch" and (r["size"], r["n"]) == (1024, 4))
    header, values = (run / "gpu.txt").read_text().splitlines()[:2]
    gpu = dict(zip((h.strip() for h in header.split(",")), (v.strip() for v in values.split(","))))
    loop = tl["gpu"]["denoise_loop"]
    return {
        "run": run.name, "gpu": gpu,
        "stock": {"denoise_s": rows["split"]["denoise_s"], "e2e_s": rows["stock"]["e2e_med_s"],
                  "batch4_img_s": round(1 / batch4["per_image_s"], 3), "peak_vram_gib_resident_cpu_te": rows["staged"]["peak_gib"],
                  "load_s": round(rows["stock"]["load_cpu_s"] + rows["stock"]["to_gpu_s"], 1)},
        "engine": {k: eng[k] for k in ("denoise_s", "eager_denoise_s", "generate_s", "batch4_per_image_s", "peak_vram_gib",
                                       "compile_first_call_s", "load_s", "cpu_text_encoder_prompts_per_s")},
        "fp8": {k: fp8[k] for k in ("fp8_denoise_s", "bf16_denoise_s", "speedup", "psnr_db")},
        "power": {"matmul_8192_burst_tflops": tl["matmul_8192_burst_tflops"],
                  "matmul_8192_sustained_tflops": tl["matmul_8192_sustained_tflops"], "denoise_s": tl["denoise_s"],
                  "gpu_busy_share": round(tl["busy"][-1]["busy_ms"] / tl["busy"][-1]["span_ms"], 3),
                  "denoise_loop_power_w_median": round(loop["power_w_median"]), "power_limit_w": float(loop["power_limit_w"]),
                  "denoise_loop_sm_clock_mhz_median": loop["sm_clock_mhz_median"], "sw_power_cap_share": loop["sw_power_cap_share"],
                  "floor_at_sustained_matmul_s": round(8 * 56.6 / tl["matmul_8192_sustained_tflops"], 3)},
        "ratios_vs_stock": {"denoise_speedup": round(rows["split"]["denoise_s"] / eng["denoise_s"], 2),
                            "denoise_speedup_fp8": round(rows["split"]["denoise_s"] / fp8["fp8_denoise_s"], 2),
                            "batch4_throughput_ratio": round(batch4["per_image_s"] / eng["batch4_per_image_s"], 2),
                            "peak_vram_ratio_resident_cpu_te": round(eng["peak_vram_gib"] / rows["staged"]["peak_gib"], 3)},
    }


def _render_other(o: dict, h100: dict) -> str:
    st, e, f, pw, r = o["stock"], o["engine"], o["fp8"], o["power"], o["ratios_vs_stock"]
    hp = h100["power"]
    return f"""
## The same steps on {o['gpu']['name']} ({o['run']})

One device command on nvidia-h200 (2026-12-02), the wheel kit as above, then
`python3 bench/run.py build stock engine timeline fp8` (raw output in `bench/results/{o['run']}/`;
`gpu.txt` is nvidia-smi's view: {o['gpu']['power.limit [W]']} power limit, driver {o['gpu']['driver_version']}). Stock diffusers ran in the same run,
so each ratio is against that machine's own stock figure. The H100 column is this file's main table.

| figure | zimage-serve | stock diffusers | ratio | H100 (zimage-serve / stock) |
|---|---|---|---|---|
| denoise, 8 steps, bf16, as an 80 GB replica runs it | {e['denoise_s']} s | {st['denoise_s']} s | {r['denoise_speedup']}x faster | {h100['engine']['denoise_s']} / {h100['stock']['denoise_s']} s |
| denoise, FP8 (opt-in) / bf16 in the same step | {f['fp8_denoise_s']} / {f['bf16_denoise_s']} s ({f['speedup']}x; PSNR {f['psnr_db']} dB vs bf16) | {st['denoise_s']} s | {r['denoise_speedup_fp8']}x faster | {h100['fp8']['fp8_denoise_s']} / {h100['stock']['denoise_s']} s |
| one image in-process, prompt already encoded (denoise + decode) | {e['generate_s']} s | {st['e2e_s']} s (with GPU text encoding) | | {h100['engine']['generate_s']} s |
| GPU rate at batch 4, 1024² | {round(1 / e['batch4_per_image_s'], 3)} img/s ({e['batch4_per_image_s']} s an image) | {st['batch4_img_s']} img/s | {r['batch4_throughput_ratio']}x | {round(1 / h100['engine']['batch4_per_image_s'], 3)} / {h100['stock']['throughput_img_s']} img/s |
| peak VRAM, resident plan, prompts encoded on CPU (eager decoder) | {e['peak_vram_gib']} GiB | {st['peak_vram_gib_resident_cpu_te']} GiB | {r['peak_vram_ratio_resident_cpu_te']}x | {h100['engine']['peak_vram_gib_resident_cpu_te']} / {h100['stock']['peak_vram_gib_resident_cpu_te']} GiB |
| CPU text encoder, bf16, 16 threads, batch 8 | {e['cpu_text_encoder_prompts_per_s']} prompts/s | | | {h100['cpu_text_encoder']['prompts_per_s']} prompts/s |
| 8192³ bf16 matmul: burst / sustained | {pw['matmul_8192_burst_tflops']} / {pw['matmul_8192_sustained_tflops']} TFLOP/s | | | sustained {hp['matmul_8192_sustained_tflops']} TFLOP/s |
| denoise loop: GPU busy / power / SM clock / software power cap active | {round(100 * pw['gpu_busy_share'], 1)} % / {pw['denoise_loop_power_w_median']} of {pw['power_limit_w']:.0f} W / {pw['denoise_loop_sm_clock_mhz_median']:.0f} MHz / {round(100 * pw['sw_power_cap_share'])} % of samples | | | {round(100 * hp['gpu_busy_share'], 1)} % / {hp['phases']['denoise_loop']['power_w_median']:.0f} W / {hp['phases']['denoise_loop']['sm_clock_mhz_median']:.0f} MHz / {round(100 * hp['phases']['denoise_loop']['sw_power_cap_share'])} % |
| 8 steps' FLOPs at the sustained matmul rate (the bf16 floor) | {pw['floor_at_sustained_matmul_s']} s | | | {hp['floor_at_sustained_matmul_s']} s |

The H200 has the H100's compute and a 700 W limit too, and it behaves the same: the bf16 denoise runs at the
power cap ({pw['denoise_loop_power_w_median']} W, clock {pw['denoise_loop_sm_clock_mhz_median']:.0f} MHz), and the floor at the sustained matmul rate ({pw['floor_at_sustained_matmul_s']} s) is above 0.65 s.
Stock diffusers gains more from the H200 than we do ({st['denoise_s']} s against {h100['stock']['denoise_s']} s on the H100; ours
{e['denoise_s']} s against {h100['engine']['denoise_s']} s), so the ratio is a little lower here; the likely reason, not measured kernel by
kernel, is that stock's eager elementwise kernels are memory-bound and the H200's memory is faster, while ours are fused. Not run on the H200: HTTP, cold start,
offload, the batch job (the session's device time allowed one command).
"""


def _stages(seconds: dict) -> str:
    return ", ".join(f"{name} {value:.3f} s" for name, value in seconds.items())


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(s: dict) -> str:
    """BENCHMARKS.md from the summary: every number below comes from latest.json."""
    e, h, h8, o, f, c, st, r, v, d = (s[k] for k in ("engine", "http", "http_fp8", "offload", "fp8", "cpu_text_encoder",
                                                     "stock", "ratios_vs_stock", "vram", "denoise_steps"))
    m, src, pw = e["cold_start_marks_s"], s["sources"], s["power"]
    overhead = round((h["overhead_ratio"] - 1) * 100, 1)
    kc, kf = d["kernel_ms_per_step_compiled"] or {}, d["kernel_ms_per_step_fused"] or {}
    dv, dv20, pk, te = s["decode"]["variants"], s["decode"]["variants_run20"], s["peak_compiled_decoder"], s["text_encoder_gpu"]
    dc, ha = s["decode"]["current"], s["http"]["encode_on_auto"]
    ov22 = s["overhead_with_5ms_batch_wait_run22"]
    bj, att = s["batch_job"], {(row["batch"], row["seq"], row["backend"]): row for row in s["attention"]["rows"]}
    a = lambda batch, seq, backend: f"{att[(batch, seq, backend)]['ms']} ms ({att[(batch, seq, backend)]['tflops']:.0f} TFLOP/s)"
    return f"""# Benchmarks

Device: **{s['device']}** (16 CPU cores, Intel Xeon with AMX), torch 2.11 + CUDA 13, diffusers 0.42.1,
Ray 2.60. Date: 2026-11-25. The full-size Z-Image-Turbo layout with **random weights**, written on the
machine by `zimage_serve.testing.checkpoint.write_checkpoint(shape="full")` (fp32 transformer in shards, bf16
Qwen3-4B, bf16 VAE: 32.8 GB): speed and memory are real, images are noise. 1024x1024, 8 steps,
guidance 0. Stock diffusers is `bench/stock_baseline.py` (the shared reference script, unchanged) on
the same checkpoint.

Every figure is in `bench/results/latest.json`, which `python3 bench/report.py` makes (with this file)
from what the GPU runs wrote to `bench/results/run*/` (each step's latest run). Each run is one device
command of under 10 minutes on nvidia-h100-x1, starting with the wheel kit:

```
pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && python3 -m compileall -q -j 16 /tmp/site
export PYTHONPATH=$PWD:/tmp/site
python3 bench/run.py build stock engine             # run1 (session 1)
python3 bench/run.py build coldstart http offload   # run2: offload
python3 bench/run.py build http http_gpu            # run3: http (bf16, CPU encoders)
python3 bench/run.py build vram coldstart fusion    # run8: fusion (denoise step by step)
python3 bench/run.py build probe fp8                # run9: probe (imports, VAE peaks)
BENCH_QUICK=1 python3 bench/run.py build stock engine vram coldstart   # run10: stock, engine, coldstart
python3 bench/run.py build vram http_gpu http_fp8   # run11: vram, http_fp8
python3 bench/run.py build fp8 engine_gpu http_gpu http_gpu_fp8        # run12
python3 bench/run.py build overhead                 # run13: in-process and HTTP interleaved
python3 bench/run.py build graphs overhead          # run14: first CUDA graphs try (context refiner capture failed)
python3 bench/run.py build graphs overhead          # run15: overhead with Server-Timing stages, parallel PNG
python3 bench/run.py build graphs http_gpu_fp8 http # run16: graphs at 512², FP8 HTTP p50 (GPU encoding)
python3 bench/run.py build http_fp8 http            # run17: serve.batch made batches of 1 under load
python3 bench/run.py build http_fp8 http            # run18: throughput with batcher.GpuBatcher
python3 bench/run.py build decode overhead          # run19: VAE decode variants; overhead after all changes
python3 bench/run.py build te decode                # run20: GPU text encoder compiled; decoder channels_last, compiled
python3 bench/run.py build decode                   # run21: decoder compile variants (dynamic, banded convs eager)
python3 bench/run.py build overhead http_fp8        # run22: with the compiled decoder (batches waited 5 ms to fill)
python3 bench/run.py build overhead                 # run23: batches start at once on a free GPU
python3 bench/run.py build peak                     # run24: peak VRAM with the compiled decoder
python3 bench/run.py attn build stock engine        # run25: attention kernels alone (its engine step failed)
python3 bench/run.py build stock engine batch       # run26: stock and the engine as served, same run (batch ran out of time)
python3 bench/run.py build http batch               # run27: the batch job on one GPU
python3 bench/run.py build http http_gpu_fp8        # run28: FP8 p50 with the current build
python3 bench/run.py build http                     # run29: bf16 saturation, steady state counted in whole batches
python3 bench/run.py build batch                    # run30: the batch job with encoder blocks of one GPU batch
python3 bench/run.py build timeline offload coldstart   # run31: GPU busy time, clock and power; offload
python3 bench/run.py build coldstart                # run32: import times with and without bytecode; the bf16 weights cache
python3 bench/run.py build batch coldstart          # run33: the batch job with CPU writers; cold start with bytecode kept
BENCH_IMPORTS=0 BENCH_COLDSTART=served_cold_cache,served_warm_cache python3 bench/run.py build coldstart http
                                                    # run34: served start with the compile cache where asked
BENCH_REDEPLOY=1 python3 bench/run.py build http_gpu   # run35: GPU encoding; the app redeployed on a warm cache
BENCH_DECODE=lean,lean_compiled_norms,lean_compiled python3 bench/run.py build decode peak fp8
                                                    # run36: the decoder's GroupNorm+SiLU compiled, against the whole decoder
python3 bench/run.py build overhead coldstart       # run37: overhead (its coldstart inherited a filled compile cache: not used)
BENCH_IMPORTS=0 BENCH_COLDSTART=served_cold_cache,served_warm_cache python3 bench/run.py build coldstart http_fp8
                                                    # run38: served start with the new decoder; FP8 throughput
python3 bench/run.py build http_gpu_fp8 http        # run39: FP8 p50; bf16 throughput with CPU encoders
python3 bench/run.py build http_auto                # run40: encode_on auto (the idle GPU encodes, the CPU encoders under load)
python3 bench/report.py                             # here
```

`.whl` is the wheel kit from `shared/gpu/make-device-wheels.sh torchao==0.17.0` (the device sets
PYTHONDONTWRITEBYTECODE, so `compileall` writes the bytecode that a normal `pip install` or the
Docker image has; the machine's own torch has none, see the cold start rows). Stock figures and the engine's bf16 figures are from the same run ({src['stock']}); the
others are from later runs on the same machine kind. Sources per step: {src}.

## Results against the targets of issue 5

| figure | zimage-serve | stock diffusers | ratio | target | |
|---|---|---|---|---|---|
| denoise, 8 steps, bf16, as an 80 GB replica runs it (fused projections, regional compile, CUDA graphs; {src['engine']}) | {e['denoise_s']} s | {st['denoise_s']} s | {r['denoise_speedup']}x faster | <= 0.65 s | {_met(e['denoise_s'] <= 0.65)} |
| denoise, 8 steps, FP8 (opt-in `generator.fp8`) | {f['fp8_denoise_s']} s ({f['denoise_speedup']}x the bf16 {f['bf16_denoise_s']} s of its run) | {st['denoise_s']} s | {r['denoise_speedup_fp8']}x faster | <= 0.65 s | {_met(f['fp8_denoise_s'] <= 0.65)} (FP8 only) |
| end to end in-process, one image (encode on GPU + denoise + decode + PNG, {src['overhead']}) | {e['e2e_s']} s | {st['e2e_s']} s (no PNG) | {r['e2e_speedup']}x faster | | |
| end to end in-process, prompt encoded on the CPU (16 threads) | {e['e2e_cpu_text_encoder_s']} s | | | | |
| HTTP p50 / p95, one request in flight, prompt never cached, encode on GPU, PNG ({src['overhead']}) | {h['p50_s']} / {h['p95_s']} s | {st['e2e_s']} s | {r['http_p50_vs_stock_e2e']}x the stock time | p50 <= 0.80 s | {_met(h['p50_s'] <= 0.8)} |
| same, PNG / JPEG (`output_format: jpeg`), measured in a later run ({src['http_gpu']}) | {h['p50_s_http_gpu_step']} / {h['p50_jpeg_s']} s | | | p50 <= 0.80 s | {_met(h['p50_jpeg_s'] <= 0.8)} |
| same app, GPU encoding: saturation throughput, 64 requests ({src['http_gpu']}): all / steady state | {h['throughput_gpu_text_encoder_img_s']} / {h['steady_throughput_gpu_text_encoder_img_s']} img/s (the encoder's GPU time is taken from the denoise: why `serve_config.yaml` encodes on CPUs) | {st['throughput_img_s']} img/s | | | |
| the whole Serve app deployed until ready (encoders, ingress, a generator that compiles and warms up; {src['http_gpu']}): compile cache cold / redeployed on the cache it filled | {h['deploy_s_cold_compile_cache']} / {h['redeploy_s_warm_compile_cache']} s | | | | |
| same with FP8: PNG / JPEG ({src['http_gpu_fp8']}) | {h8['p50_s']} / {h8['p50_jpeg_s']} s | | | p50 <= 0.80 s | {_met(h8['p50_s'] <= 0.8)} (PNG), {_met(h8['p50_jpeg_s'] <= 0.8)} (FP8 + JPEG) |
| HTTP p50 / p95, prompts encoded by the CPU encoders (8 threads, bf16, {src['http']}; run29: {s['http_run29']['p50_s']} s, run28: {s['http_p50_cpu_encoders_run28']} s: the CPU encoder varies) | {h['p50_cpu_text_encoder_s']} / {h['p95_cpu_text_encoder_s']} s | | | | |
| the same app as `serve_config.yaml` runs it, `encode_on: auto` (the generator encodes a prompt when nothing else is in flight, the CPU encoders under load; {src['http_auto']}): p50 / p95, one request in flight; saturation all / steady | {ha['p50_s']} / {ha['p95_s']} s; {ha['throughput_img_s']} / {ha['steady_throughput_img_s']} img/s (prompts encoded on the GPU: {ha['encoded_on_generator']['single']} of {ha['encoded_on_generator']['single']} alone, {ha['encoded_on_generator']['saturation']} of 64 at saturation) | {st['e2e_s']} s; {st['throughput_img_s']} img/s | | p50 <= 0.80 s; >= 1.4 img/s | {_met(ha['p50_s'] <= 0.8)}; {_met(ha['throughput_img_s'] >= 1.4)} |
| serving overhead: HTTP p50 over in-process p50, interleaved on one GPU ({src['overhead']}) | {overhead} % ({h['overhead_interleaved']['http_p50_s']} vs {h['overhead_interleaved']['in_process_p50_s']} s) | | | <= 5 % | {_met(h['overhead_ratio'] <= 1.05)} |
| same, when batches waited 5 ms to fill (`batch_wait_timeout_s` 0.005, run22) | {round(ov22['overhead_ratio'] * 100, 1)} % ({ov22['http_p50_s']} vs {ov22['in_process_p50_s']} s) | | | <= 5 % | {_met(ov22['overhead_ratio'] <= 0.05)} |
| throughput at saturation, 64 requests from 16 clients, CPU encoders, bf16 ({src['http']}): all requests / steady state (whole batches after the first 8 answers; run29: {s['http_run29']['throughput_img_s']} / {s['http_run29']['steady_throughput_img_s']}) | {h['throughput_img_s']} / {h['steady_throughput_img_s']} img/s | {st['throughput_img_s']} img/s (batch 4) | {r['throughput_ratio']}x / {r['steady_throughput_ratio']}x | >= 1.4 img/s | {_met(h['throughput_img_s'] >= 1.4)} |
| same with FP8 ({src['http_fp8']}) / FP8 with prompts encoded on the GPU ({src['http_gpu_fp8']}, 64 requests) | {h8['throughput_img_s']} / {h8['throughput_gpu_text_encoder_img_s']} img/s | {st['throughput_img_s']} img/s | {r['throughput_ratio_fp8']}x | >= 1.4 img/s | {_met(h8['throughput_img_s'] >= 1.4)} (FP8 only) |
| batch job (`python -m zimage_serve.batch`, Ray Data, one GPU, 40 prompts, bf16, {src['batch']}): steady images/s (image files' times after the first batch; {s['batch_job_run30_before_writers']} in run30, before the CPU writers) | {bj['steady_img_s']} img/s (whole job {bj['job_wall_s']} s, first image at {bj['first_image_after_start_s']} s: Ray, loads, a cold compile; {s['batch_job_run27']['first_image_after_start_s']} s in run27, after the http step had filled the compile cache) | {st['throughput_img_s']} img/s (batch 4) | {r['batch_job_ratio']}x | | |
| the batch job's prompt-encoding stage: as it was ({bj['encode_stage_before']['threads']} thread, float32) / now ({bj['encode_stage_now']['threads']} threads, {bj['encode_stage_now']['dtype'].removeprefix('torch.')}) | {bj['encode_stage_before']['prompts_per_s']} / {bj['encode_stage_now']['prompts_per_s']} prompts/s | | {round(bj['encode_stage_now']['prompts_per_s'] / bj['encode_stage_before']['prompts_per_s'], 1)}x | | |
| cold start: process start to first image, fp32 hub layout, page cache warm, eager, as in our image (only our dependencies importable, Python's bytecode kept; run33) | {e['cold_start_s']} s | {st['load_s']} s to load alone | {r['cold_start_vs_stock_load']}x | <= 20 s | {_met(e['cold_start_s'] <= 20)} |
| same, with the bf16 weights cache (`ZIMAGE_WEIGHTS_CACHE=1`; written once in {e['weights_cache_write_s']} s) | {e['cold_start_weights_cache_s']} s (transformer read in {e['transformer_load_s']['bf16_weights_cache']} s instead of {e['transformer_load_s']['fp32_checkpoint']} s) | | | <= 20 s | {_met(e['cold_start_weights_cache_s'] <= 20)} |
| same on the machine as it is (PYTHONDONTWRITEBYTECODE set, its torch without bytecode, extra packages) / only our dependencies | {e['cold_start_machine_as_is_s']} / {e['cold_start_our_dependencies_only_s']} s (run32: {s['cold_start_run32']['eager']} / {s['cold_start_run32']['eager_our_dependencies_only']} s) | | | <= 20 s | {_met(e['cold_start_machine_as_is_s'] <= 20)} |
| a served replica ready and its first image: compile, CUDA graphs, compiled decoder, warm-up at batch 1 and 2 ({src['coldstart']}): compile cache warm / cold (run34, with the whole decoder compiled: {e['served_start_whole_decoder_run34']['served_warm_cache']['first_image_s']} / {e['served_start_whole_decoder_run34']['served_cold_cache']['first_image_s']} s) | {e['cold_start_served_warm_cache_s']} / {e['cold_start_served_cold_cache_s']} s | | | | |
| peak VRAM, resident plan, prompts encoded on CPU (lean VAE decoder, eager, untiled; {src['engine']}) | {e['peak_vram_gib_resident_cpu_te']} GiB | {st['peak_vram_gib_resident_cpu_te']} GiB | {r['peak_vram_ratio_resident_cpu_te']}x | <= 13.5 GiB | {_met(e['peak_vram_gib_resident_cpu_te'] <= 13.5)} |
| same plan as served: the VAE decoder's GroupNorm+SiLU pairs compiled (the default wherever the transformer is compiled; {src['peak']}) | {pk['peak_vram_gib']} GiB (decode {pk['seconds']['decode']} s) | {st['peak_vram_gib_resident_cpu_te']} GiB | {round(pk['peak_vram_gib'] / st['peak_vram_gib_resident_cpu_te'], 3)}x | <= 13.5 GiB | {_met(pk['peak_vram_gib'] <= 13.5)} |
| same process, the whole decoder compiled instead (the default before run36) | {pk['whole_decoder_compiled']['peak_vram_gib']} GiB (decode {pk['whole_decoder_compiled']['seconds']['decode']} s) | | | | |
| same plan, diffusers' decoder in its place ({src['vram']}) | {v['stock_decoder_peak_gib']} GiB (lean: {v['lean_decoder_peak_gib']} GiB, same pixels: max diff {v['lean_vs_stock_decoder_max_abs_pixel_diff']}) | | | | |
| same with tiled VAE decode (512 px tiles) | {v['tiled_peak_gib']} GiB; generate {v['tiled_generate_s']} s vs {v['lean_decoder_generate_s']} s | | | | |
| peak VRAM, everything on GPU | | {st['peak_vram_gib']} GiB | | | |
| streamed-offload plan (`policy: sequential`): peak VRAM / latency over resident (both eager, {src['offload']}) | {o['peak_vram_gib']} GiB / {o['latency_ratio']}x ({o['sequential_latency_s']} s vs {o['resident_latency_s']} s) | | | < 6 GiB at <= 2x | {_met(o['peak_vram_gib'] < 6 and o['latency_ratio'] <= 2)} |
| FP8 (own e4m3 rowwise Linear, opt-in), denoise over bf16, same run | {f['fp8_denoise_s']} s vs {f['bf16_denoise_s']} s; PSNR {f['psnr_db_vs_bf16_random_weights']} dB vs bf16 | | {f['denoise_speedup']}x | >= 1.3x | {_met(f['denoise_speedup'] >= 1.3)} |
| CPU text encoder, bf16 on AMX, 16 threads, batch 8 / batch 1 | {c['batch8_per_prompt_s']} s / {c['batch1_s']} s a prompt ({c['prompts_per_s']} prompts/s) | 0.18 / 0.53 s (shared README, not this run) | | | |
| VAE decode of one 1024² image, bf16: lean eager / GroupNorm+SiLU compiled (the default) / whole decoder compiled ({src['decode']}) | {dc['lean']['decode_s']} / {dc['lean_compiled_norms']['decode_s']} / {dc['lean_compiled']['decode_s']} s | {dv['diffusers']['decode_s']} s (diffusers' decoder, eager, run21) | {round(dv['diffusers']['decode_s'] / dc['lean_compiled_norms']['decode_s'], 2)}x | | |
| Qwen3-4B text encoder on the GPU, one prompt of {te['tokens']['long']} tokens: eager / compiled (run20; not adopted, see below) | {te['eager']['long_b1_s']} / {te['compiled']['long_b1_s']} s | | | | |

## Where the gains come from

- **Serving path ({src['overhead']}, `Server-Timing` of /generate, medians of 15 interleaved requests)**: over HTTP
  {_stages(h['stages_p50_s'])}; in-process {_stages(h['in_process_stages_p50_s'])}. "generator" is the replica's part
  (batch start to encoded image), "ingress" adds the encoder/generator hops, "client" the proxy and HTTP.
  PNG encoding (`png.py`: numpy Up filter and zlib in parallel row bands, one joined zlib stream) takes
  about 0.03 s where Pillow took 0.17 s ({src['engine']}, `png_s`). Pixels become uint8 on the GPU
  (`engine._to_pil`, diffusers' arithmetic): {s['decode']['to_pil_on_gpu_s']} s instead of {s['decode']['diffusers_postprocess_s']} s for diffusers'
  postprocess ({src['decode']}). cuDNN benchmark mode changes nothing for the decode
  ({s['decode']['cudnn_benchmark_run19']['decode_cudnn_benchmark_s']} s against {s['decode']['cudnn_benchmark_run19']['decode_s']} s, run19), so it stays off.
  Batches start at once when the GPU is free (`batch_wait_timeout_s: 0`; under load the queue fills
  each batch while the previous one runs): the queue stage went from {ov22['http_stages_p50_s']['queue']} s (run22, 5 ms wait) to
  {h['stages_p50_s']['queue']} s, the overhead from {round(ov22['overhead_ratio'] * 100, 1)} % to {overhead} %. The text-encode stage varies by about 5 ms
  from run to run (run22: {ov22['http_stages_p50_s']['text_encode']} s over HTTP, {src['overhead']}: {h['stages_p50_s']['text_encode']} s), the size of that difference.
- **VAE decode ({src['decode']}, run20, run21, `accel.accelerate_vae`)**: eager GroupNorm at full resolution is much of
  the decode. Compiled, each of the decoder's 29 GroupNorm+SiLU pairs (`lean_vae.GroupNormSiLU`) is one kernel that
  reads its input once and writes one output: {dc['lean']['decode_s']} s -> {dc['lean_compiled_norms']['decode_s']} s with the same activation peak as eager
  ({dc['lean_compiled_norms']['activation_peak_gib']} GiB against {dc['lean']['activation_peak_gib']}; max pixel difference {dc['lean_compiled_norms']['max_abs_pixel_diff']}/255 on random weights), compiled in
  {dc['lean_compiled_norms']['first_call_s']} s on a cold cache. The whole decoder compiled (the default before {src['decode']}) also fuses the residual
  adds and decodes in {dc['lean_compiled']['decode_s']} s, but its activations peak at {dc['lean_compiled']['activation_peak_gib']} GiB and it compiles in {dc['lean_compiled']['first_call_s']} s: in the
  whole pipeline {pk['whole_decoder_compiled']['peak_vram_gib']} GiB against {pk['peak_vram_gib']} GiB (same process, {src['peak']}), so Engine.load compiled it
  only with headroom and the served plan missed the 13.5 GiB target. Now the decoder is compiled wherever the
  transformer is (not when it decodes in tiles). Measured and
  not used: channels_last ({dv20['lean_channels_last']['decode_s']} s eager: GroupNorm converts the layout back; no gain compiled),
  dynamic shapes ({dv['lean_compiled_whole']['decode_s']} s for the whole decoder, and a new size still compiled again for
  {dv['lean_compiled_whole']['first_call_768x640_s']} s), the whole decoder with its banded convolutions kept out of the graph ({dv['lean_compiled_banded_eager_static']['decode_s']} s static,
  {dv['lean_compiled_banded_eager_static']['activation_peak_gib']} GiB: the convolutions are not what raised the peak).
  A static graph compiles again for each new size ({dv['lean_compiled_banded_eager_static']['first_call_768x640_s']} s in run21), so the engine compiles for
  the plan's size only (at warmup) and decodes any other size eagerly, under torch.compiler's
  `eager_on_recompile` stance ({dc['lean_compiled_norms']['first_call_768x640_s']} s for a first 768x640 decode).
- **Text encoder on the GPU (run20, not adopted)**: regional compile of Qwen3's 35 layers gives the same
  embeddings (max difference {te['max_abs_diff']}) and {te['eager']['long_b1_s']} -> {te['compiled']['long_b1_s']} s for one {te['tokens']['long']}-token prompt, but
  {te['eager']['short_b1_s']} -> {te['compiled']['short_b1_s']} s for a {te['tokens']['short']}-token one and nothing at batch 8
  ({te['eager']['long_b8_s']} -> {te['compiled']['long_b8_s']} s), for {te['compile_first_calls_s']} s of compile on every replica without a warm cache.
- **Batching under load**: `@serve.batch` forms a batch before it waits for a free slot, so with a batch on
  the GPU each arrival became a batch of one (`bench/results/run17/http*.json`: batches of 1 and 2, bf16 {s['serve_batch_run17']['bf16']} img/s,
  FP8 {s['serve_batch_run17']['fp8']}). `batcher.GpuBatcher` forms the batch when the GPU is free: batches of 4 at saturation ({src['http']}).
- **CUDA graphs ({src['graphs']})**: the noise-refiner and main-layer stacks replay as one graph per shape
  (`graphs.py`; max pixel diff against no graphs 0 in run15, {s['cuda_graphs']['graphs_vs_none_max_abs_pixel_diff']} in {src['graphs']}: the same kernels, but cuBLAS may
  pick other algorithms on the capture stream). At 1024² the GPU is the bottleneck and they
  change nothing ({s['cuda_graphs']['denoise_s']} -> {s['cuda_graphs']['graphs_denoise_s']} s); at 512² denoise goes
  {s['cuda_graphs']['denoise_512_s']} -> {s['cuda_graphs']['graphs_denoise_512_s']} s ({s['cuda_graphs']['speedup_512']}x). Another thread
  encoding PNGs meanwhile costs nothing measurable ({s['cuda_graphs']['denoise_while_pillow_png_s']} s with Pillow,
  {s['cuda_graphs']['denoise_while_ours_png_s']} s with png.py). The context refiners stay eager (their capture failed inside
  cuDNN's execution-plan finalize, run14). Graphs keep their captured inputs and outputs: the bf16 replica with graphs at batch 4
  ({src['http']}) peaked at {h['replica_peak_gib']} GiB allocated against its plan's {h['plan_peak_gib']} GiB estimate (the graphs' share of
  that was not measured apart), so Engine.load uses graphs only with 1 GiB + the plan's activations of headroom.

- **Denoise, step by step ({src['fusion']}, one process)**: eager {d['eager_s']} s -> regional compile
  (`compile_repeated_blocks(fullgraph=True)` on the 34 repeated blocks: Inductor fuses RMSNorm, adaLN
  modulation and SwiGLU around the matmuls) {d['regional_compile_s']} s -> fused projections {d['compile_plus_fused_projections_s']} s
  (`fusion.py`: q/k/v as one matmul, SwiGLU's gate and up as one, RoPE in real arithmetic, which
  Inductor can fuse, instead of complex numbers, which it can't; mean pixel difference
  {d['fused_vs_unfused_mean_abs_pixel_diff']}/255 from float rounding) -> max-autotune GEMMs {d['plus_max_autotune_s']} s (after {d['max_autotune_compile_s']} s of autotuning: not worth it, not used).
  GPU time per transformer call (profiler): compiled {kc}; fused {kf}.
  The GEMMs already run at about 760 TFLOP/s (about 48 of the 56.9 TFLOP a step, in 63 ms), close
  to the 798 TFLOP/s ceiling measured on this GPU. The "attention" family includes the Inductor kernels
  that prepare q/k/v for it (about 4 ms); the cuDNN kernel itself takes about 17 ms a step. The rest is
  small. The kernels add up to about 92 ms a step, so bf16 is bounded near 0.74 s by them.
- **Attention kernels alone ({src['attn']}, `attn` step; cuDNN {s['attention']['cudnn_version']})**: at the denoiser's shape (30 heads of
  128, 4096 image tokens + 96 caption tokens, batch 1) SDPA's default picks cuDNN: {a(1, 4192, 'cudnn')},
  against PyTorch's flash kernel {a(1, 4192, 'flash')}, memory-efficient {a(1, 4192, 'efficient')} and FlexAttention
  compiled {a(1, 4192, 'flex (compiled)')}. The layout q/k/v arrive in (views of the fused projection, or
  contiguous) changes nothing. A sequence that is a multiple of 128 runs faster ({a(1, 4224, 'cudnn')} at 4224
  tokens), but the caption padding is attended to (the model pads captions to a multiple of 32 with a learned
  token and no mask at batch 1), so padding further would change the images. So the attention kernel in use is
  already the fastest one available here; 0.65 s in bf16 would need an FA3-class kernel (not on the machine) or
  FP8 GEMMs (the opt-in FP8 mode).
- **FP8** (`fp8.py`): weights stored once in e4m3 with a scale per output row, activations scaled per
  row on the fly, `torch._scaled_mm` with fast accumulation, in the 136 wide Linear layers of the
  blocks. Plain tensors, so the regional compile traces one block: {f['compile_s']} s to compile, where
  torchao's float8 tensor subclass took {f['torchao_run4']['compile_s']} s ({f['torchao_run4']['denoise_s']} s denoise, run4; its image had NaN
  values on these random weights: numpy's invalid-cast warning in run4's log). The transformer takes {f['transformer_gib_fp8']} GiB instead of {f['transformer_gib_bf16']}. On random weights the FP8 image
  is {f['psnr_db_vs_bf16_random_weights']} dB PSNR from the bf16 one (mean difference {f['mean_abs_pixel_diff_vs_bf16']}/255); quality on the real weights
  could not be measured (they can't be downloaded), so it stays opt-in.
- **Text encoder off the GPU**: the CPU encoders pad to the batch's longest prompt and skip the unused
  last decoder layer; on AMX in bf16 they encode {c['prompts_per_s']} prompts/s at batch 8, more than one GPU
  consumes. With one request in flight the GPU encodes faster ({h['stages_p50_s']['text_encode']} s, {src['overhead']}), and taking that time from the
  denoise under load costs throughput (GPU encoding only: {h['throughput_gpu_text_encoder_img_s']} / {h['steady_throughput_gpu_text_encoder_img_s']} img/s, {src['http_gpu']}). So with
  `encode_on: auto` (what `serve_config.yaml` runs) a plan with room keeps the encoder on the GPU too, and the
  ingress sends a prompt there only when it has nothing else in flight (`service.ImageService._encode_on_generator`):
  {ha['p50_s']} s p50 with one request in flight against {h['p50_cpu_text_encoder_s']} s through the CPU encoders ({src['http']}), and at
  saturation {ha['encoded_on_generator']['saturation']} of 64 prompts went to the GPU: {ha['throughput_img_s']} / {ha['steady_throughput_img_s']} img/s against {h['throughput_img_s']} / {h['steady_throughput_img_s']} ({src['http_auto']}, {src['http']}).
- **Throughput**: transformer batches of up to 4 images of one shape ({e['batch4_per_image_s']} s an image
  in a batch of 4 vs {e['generate_s']} s alone, {src['engine']}), and each image's PNG/JPEG encoding done per request,
  outside the batch, while the next batch runs on the GPU. In steady state the Serve app delivers
  {h['steady_throughput_img_s']} img/s ({src['http']}; {s['http_run29']['steady_throughput_img_s']} in run29), about that batch-of-4 rate (1 / {e['batch4_per_image_s']} s): the GPU is the bottleneck, the
  CPU encoders keep up (the last batches at saturation: {h['saturation_batches']}). Over all 64
  requests it is {h['throughput_img_s']} img/s: the first batches wait for the CPU encoders.
- **Batch job ({src['batch']})**: Ray Data sets OMP_NUM_THREADS to an actor's CPUs, so the prompt-encoding
  stage (1 CPU, float32) encoded {bj['encode_stage_before']['prompts_per_s']} prompts/s and would have held one GPU to that rate. It now takes
  half the CPUs the GPU actors leave (7 on this 16-core host, `--encoder-cpus`) and bf16 on AMX CPUs,
  the choice the serving encoders make (`--encoder-dtype`, `encoding.cpu_encoder_dtype`): {bj['encode_stage_now']['prompts_per_s']} prompts/s.
  The encoder's blocks hold one GPU batch, so the driver's manifest and progress bar advance batch by
  batch; with blocks of 8 they lagged about two batches behind the images written. The GPU actor
  used to encode and write each batch's PNGs before taking the next batch (about 0.03 s an image);
  CPU writers (`batch.WriteStage`, one per GPU actor) now do that while the GPU goes on: {s['batch_job_run30_before_writers']} img/s
  (run30) -> {bj['steady_img_s']} img/s ({src['batch']}), {r['batch_job_ratio']}x stock's batch of 4 and the GPU's own batch-of-4 rate
  (1 / {e['batch4_per_image_s']} s). A file still exists before the manifest lists it.
- **Memory** (`lean_vae.py`): the resident plan peaks in the VAE decode, not the transformer (probe,
  {src['probe']}: the first full-resolution resnet and the last upsampler). In-place SiLU after each GroupNorm,
  and every large 3x3 conv (and upsample + conv) run in bands of rows with a one-row halo: the same
  convolution, the same pixels (max difference {v['lean_vs_stock_decoder_max_abs_pixel_diff']}), the same time ({v['lean_decoder_generate_s']} s vs {v['stock_decoder_generate_s']} s), and
  {v['lean_decoder_peak_gib']} GiB instead of {v['stock_decoder_peak_gib']} GiB. The planner still has tiled decode
  ({v['tiled_peak_gib']} GiB, +{round(v['tiled_generate_s'] - v['lean_decoder_generate_s'], 3)} s, mean seam difference {v['tiled_mean_abs_pixel_diff']}/255), model offload and streamed offload
  ({o['peak_vram_gib']} GiB at {o['latency_ratio']}x) for smaller cards.
- **Loading and start-up (run33, {src['coldstart']})**: each component goes from safetensors straight to its device, fp32
  converted to bf16 on the way, shards read in parallel (stock: {st['load_s']} s through host memory). Of the {e['cold_start_s']} s
  cold start: {m['imports']} s importing torch and our modules, {round(m['imports_diffusers_transformers'] - m['imports'], 1)} s importing diffusers and transformers,
  {round(m['loaded'] - m['planned'], 1)} s loading (the transformer {e['transformer_load_s']['fp32_checkpoint']} s), {round(m['generated'] - m['loaded'], 1)} s the first encode and image. Imports are most of
  it, and this machine makes them slower than an image would: it sets PYTHONDONTWRITEBYTECODE and its torch
  has no bytecode, so every process compiles torch's modules again (`_import_times`, run33: torch
  {s['imports']['bytecode']['as_is_2']['torch_s']} s and diffusers + transformers {s['imports']['bytecode']['as_is_2']['diffusers_transformers_s']} s as it is; {s['imports']['bytecode']['pycache_prefix_2']['torch_s']} s and {s['imports']['bytecode']['pycache_prefix_2']['diffusers_transformers_s']} s once the bytecode is kept).
  `pip install` (cluster/Dockerfile) writes the bytecode, so the table's cold start keeps it. The machine
  also has peft, scikit-learn, scipy, torchvision and narwhals, which diffusers and transformers import
  when present ({s['imports']['top_cumulative_ms'][0][1]} ms for `diffusers` alone in {src['probe']}'s importtime).
  The optional bf16 weights cache (`weights_cache.py`, `ZIMAGE_WEIGHTS_CACHE=1`, set in cluster/Dockerfile)
  keeps the converted transformer, 12.3 GB instead of 24.6 GB: {e['transformer_load_s']['fp32_checkpoint']} -> {e['transformer_load_s']['bf16_weights_cache']} s from a warm page cache (the first load
  writes it, {e['weights_cache_write_s']} s once). From a network volume read cold it halves the bytes; that was not measured here.
  A served replica compiles and warms up before it reports ready: {e['cold_start_served_warm_cache_s']} s with the compile cache warm,
  {e['cold_start_served_cold_cache_s']} s cold (warm-up calls, as (batch, caption tokens, seconds): {e['served_start']['served_warm_cache']['warmup_calls']} warm,
  {e['served_start']['served_cold_cache']['warmup_calls']} cold, {src['coldstart']}); with the whole decoder compiled it took
  {e['served_start_whole_decoder_run34']['served_warm_cache']['first_image_s']} s and {e['served_start_whole_decoder_run34']['served_cold_cache']['first_image_s']} s (run34: {e['served_start_whole_decoder_run34']['served_warm_cache']['warmup_calls']} warm,
  {e['served_start_whole_decoder_run34']['served_cold_cache']['warmup_calls']} cold). Before run34 the compile cache was kept only
  where torch's default put it: importing torch._dynamo (diffusers does) sets TORCHINDUCTOR_CACHE_DIR
  to a directory under /tmp, which turned our default into a no-op, so a new pod never found the cache on
  the shared volume. `accel.use_compile_cache` now puts it in ZIMAGE_CACHE_DIR/compile (tests/test_accel.py)
  and keeps Dynamo's profile of dynamic dimensions there (`torch.compiler.config.job_id`): a warm
  replica compiled {e['served_start_whole_decoder_run34']['served_warm_cache']['dynamo_stats']['unique_graphs']} graphs instead of {e['served_warm_cache_before_dynamo_profile']['run33']['dynamo_stats']['unique_graphs']} (run34, whole decoder), skipping the block's static first try. Its warm-up took
  {round(sum(c[2] for c in e['served_start_whole_decoder_run34']['served_warm_cache']['warmup_calls']), 1)} s (run34) against {round(sum(c[2] for c in e['served_warm_cache_before_dynamo_profile']['run32']['warmup_calls']), 1)} and {round(sum(c[2] for c in e['served_warm_cache_before_dynamo_profile']['run33']['warmup_calls']), 1)} s without (run32, run33), so the saving is
  smaller than the spread between runs. The dynamic-shape kernels a replica ends with denoise in
  {e['served_start']['served_warm_cache']['denoise_s']} s ({src['coldstart']}), against {e['denoise_s']} s for the static ones.
- **Power, the bound under bf16 ({src['timeline']}, `timeline` step)**: over an 8-step denoise ({pw['denoise_s']} s) the GPU
  is busy {round(100 * pw['gpu_busy_share'], 1)} % of the span from its first kernel to its last ({pw['gpu_busy_ms']} of {pw['gpu_span_ms']} ms; the largest gap,
  {pw['largest_gap'][0]} ms, is the initial noise copied from the CPU), so launches and syncs cost about 2 %. The
  kernels run slower than in a short burst because the GPU is at its power limit: through the denoise
  loop it draws a median {pw['phases']['denoise_loop']['power_w_median']:.0f} W of its {float(pw['phases']['denoise_loop']['power_limit_w']):.0f} W limit, the driver's software power cap is
  active in {round(100 * pw['phases']['denoise_loop']['sw_power_cap_share'])} % of the samples (nvidia-smi every 0.1 s), and the SM clock runs at a median
  {pw['phases']['denoise_loop']['sm_clock_mhz_median']:.0f} MHz ({pw['phases']['idle']['sm_clock_mhz_median']:.0f} MHz idle). Sustained 8192³ bf16 matmuls reach {pw['matmul_8192_sustained_tflops']} TFLOP/s here, also power-capped
  (median {pw['phases']['matmul_sustained']['sm_clock_mhz_median']:.0f} MHz); the 798 TFLOP/s ceiling is a short-burst figure. At {pw['matmul_8192_sustained_tflops']} TFLOP/s, 8 steps
  of 56.6 TFLOP take {pw['floor_at_sustained_matmul_s']} s even if every FLOP ran at matmul speed, and attention and the
  normalizations run below it: 0.65 s in bf16 is beyond what this GPU sustains at 700 W. FP8 does the
  matmuls with less energy, hence its {f['fp8_denoise_s']} s.

## Not met, and not measured

- bf16 denoise {e['denoise_s']} s against 0.65 s: met only with FP8 ({f['fp8_denoise_s']} s). The GPU is busy {round(100 * pw['gpu_busy_share'], 1)} % of
  the denoise and at its 700 W power cap throughout ({src['timeline']}); at the {pw['matmul_8192_sustained_tflops']} TFLOP/s that bf16 matmuls sustain
  under that cap, the 8 steps' FLOPs alone take {pw['floor_at_sustained_matmul_s']} s. CUDA graphs did not move 1024²
  ({e['compiled_denoise_no_graphs_s']} s without, {e['denoise_s']} s with, {src['engine']}), and the attention kernel is the fastest available
  ({src['attn']}). Not tried: a fused attention+RoPE kernel, FA3 (absent).
- HTTP p50 {h['p50_s']} s (bf16, PNG) against 0.80 s; with FP8 it is {h8['p50_s']} s (PNG) and {h8['p50_jpeg_s']} s (JPEG), met.
  The bf16 stages: denoise {h['stages_p50_s']['denoise']} s, decode + uint8 {h['stages_p50_s']['decode']} s, prompt
  encoding on the GPU {h['stages_p50_s']['text_encode']} s (Qwen3-4B, eager: launch-bound), PNG {h['stages_p50_s']['image_encode']} s.
  The denoise alone takes {h['stages_p50_s']['denoise']} s of the 0.80 s.
- bf16 throughput {h['throughput_img_s']} img/s ({h['steady_throughput_img_s']} in steady state) against 1.4 (FP8: {h8['throughput_img_s']}, met): one bf16
  image costs {e['batch4_per_image_s']} s of GPU time at batch 4 ({src['engine']}), so bf16 is bounded near {round(1 / e['batch4_per_image_s'], 2)} img/s, which
  the steady state reaches (power-bound like the denoise).
- The steady-state figures that run28 wrote (`steady_throughput_img_s`) came from an earlier formula that
  counted the rest of the first counted batch as free; they are not used. run29 has the formula in the script.
- Real-weight image quality of any mode; the multi-GPU figures of issue 7 (no machine with several GPUs
  was lent).
"""


def main() -> None:
    steps = load_steps()
    steps["_torchao"] = json.loads((RESULTS / "run4" / "fp8.json").read_text())  # the torchao float8 it replaced
    for run, step in (("run19", "decode"), ("run20", "decode"), ("run21", "decode"), ("run22", "overhead"),
                      ("run34", "coldstart")):  # variants by run
        steps[f"_{step}_{run}"] = json.loads((RESULTS / run / f"{step}.json").read_text())
    steps["_http_run28"] = json.loads((RESULTS / "run28" / "http.json").read_text())
    steps["_batch_run27"] = json.loads((RESULTS / "run27" / "batch.json").read_text())  # encoder blocks of 8
    steps["_batch_run30"] = json.loads((RESULTS / "run30" / "batch.json").read_text())  # before the CPU writers
    steps["_http_run29"] = json.loads((RESULTS / "run29" / "http.json").read_text())
    for run in ("run32", "run33"):  # every eager variant (run33); served starts before Dynamo's profile was kept
        steps[f"_coldstart_{run}"] = json.loads((RESULTS / run / "coldstart.json").read_text())
    steps["_serve_batch"] = {name: json.loads((RESULTS / "run17" / f"http{suffix}.json").read_text())["throughput_img_s"]
                             for name, suffix in (("bf16", ""), ("fp8", "_fp8"))}  # before batcher.GpuBatcher
    summary = summarize(steps)
    summary["other_devices"] = {run.name: other_device(run) for run in sorted(RESULTS.glob("*-run*"))}
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS.parents[1] / "BENCHMARKS.md").write_text(
        render(summary) + "".join(_render_other(o, summary) for o in summary["other_devices"].values()))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
