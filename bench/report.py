"""Merge the step results of bench/run.py (bench/results/run*/) into bench/results/latest.json, and write
BENCHMARKS.md from it (bench/report_md.py).

    python bench/report.py          # prints the summary that BENCHMARKS.md is written from

Every figure is read from a file the GPU run wrote; nothing is typed in by hand. So are the dates, versions
and device names: from each run's meta.json (bench/common.py records it), or for the runs made before it,
from what the run's log printed (nvidia-smi, lscpu, torch's version, Ray's timestamps), each with where it
came from; what neither holds is said to be not recorded.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
META = "meta.json"  # bench/common.py's record of a run: not a step
NOT_RECORDED = {"value": None, "from": "not recorded"}
RUN_FIELDS = ("date", "gpu", "gpus", "driver", "cpu_count", "cpu_model", "torch", "diffusers", "transformers", "ray",
              "command")
LOG_FIELDS = {  # what the runs' logs printed before meta.json: torch's version, lscpu
    "torch": re.compile(r"^torch (\S+)\s*$", re.M),
    "cpu_count": re.compile(r"^CPU\(s\):\s+(\d+)\s*$", re.M),
    "cpu_model": re.compile(r"^Model name:\s+(.+?)\s*$", re.M),
}
LOG_DATE = re.compile(r"\b(20\d\d-\d\d-\d\d) \d\d:\d\d:\d\d,\d{3}\b")  # Ray's log lines
NVIDIA_SMI = re.compile(r"^name, [^\n]*\n((?:[^\n]+\n?)+)", re.M)  # nvidia-smi --query-gpu=name,... csv


def _run_number(path: Path) -> int:
    return int(path.name[3:]) if path.name[3:].isdigit() else -1


def load_steps() -> dict:
    """Each step's latest successful result (runs in numeric order: run13 after run9)."""
    steps = {}
    for run in sorted(RESULTS.glob("run*"), key=_run_number):
        for f in run.glob("*.json"):
            if f.name == META:
                continue
            data = json.loads(f.read_text())
            if "error" not in data:
                steps[f.stem] = {**data, "_run": run.name}
    return steps


def _csv_rows(text: str) -> list[dict]:
    """nvidia-smi's CSV (a header line, a row per GPU) as dicts."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header, *rows = lines
    names = [h.strip() for h in header.split(",")]
    return [dict(zip(names, (v.strip() for v in row.split(",")))) for row in rows]


def recorded(run: Path) -> dict:
    """Where and when ``run`` ran: for each of RUN_FIELDS {"value", "from"}: from its meta.json, else from what
    its logs (and gpu.txt) printed, else NOT_RECORDED."""
    found: dict = {}

    def put(name, value, origin):
        if value not in (None, "") and name not in found:
            found[name] = {"value": value, "from": origin}

    def put_gpus(gpus: list[dict], origin: str):
        if gpus:
            put("gpu", gpus[0].get("name"), origin)
            put("gpus", len(gpus), origin)
            put("driver", gpus[0].get("driver_version"), origin)

    if (run / META).exists():
        m, origin = json.loads((run / META).read_text()), f"{run.name}/{META}"
        put("date", (m.get("date") or "")[:10], origin)
        put("command", m.get("command"), origin)
        put_gpus(m.get("gpus") or [], origin)
        put("cpu_count", (m.get("cpu") or {}).get("count"), origin)
        put("cpu_model", (m.get("cpu") or {}).get("model"), origin)
        for package in ("torch", "diffusers", "transformers", "ray"):
            put(package, (m.get("versions") or {}).get(package), origin)
    for log in sorted(run.glob("log*.txt")) + sorted(run.glob("gpu.txt")):
        text, origin = log.read_text(errors="replace"), f"{run.name}/{log.name}"
        smi = [text] if log.name == "gpu.txt" else [g.group(0) for g in NVIDIA_SMI.finditer(text)][:1]
        put_gpus(_csv_rows(smi[0]) if smi else [], origin)
        for name, pattern in LOG_FIELDS.items():
            hit = pattern.search(text)
            put(name, hit and (int(hit.group(1)) if name == "cpu_count" else hit.group(1)), origin)
        date = LOG_DATE.search(text)
        put("date", date and date.group(1), f"{origin} (Ray's log timestamps)")
    return {name: found.get(name, NOT_RECORDED) for name in RUN_FIELDS}


def environment(sources: dict) -> dict:
    """Where the main table's runs ran: each field from the stock step's run (the engine's bf16 figures are from
    the same run), else from the first other source run that recorded it; and each source run's date."""
    runs = sorted(set(sources.values()), key=lambda r: _run_number(RESULTS / r))
    runs.remove(sources["stock"])
    per_run = {run: recorded(RESULTS / run) for run in [sources["stock"], *runs]}
    merged = {name: next((r[name] for r in per_run.values() if r[name]["value"] is not None), NOT_RECORDED)
              for name in RUN_FIELDS if name not in ("date", "command")}
    dates = {run: r["date"]["value"] for run, r in sorted(per_run.items(), key=lambda kv: _run_number(RESULTS / kv[0]))}
    return {**merged, "dates": dates}


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
    tflop = rows["split"]["flops_per_step"] / 1e12  # stock_baseline.py's count for this prompt (linear + attention)
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
                  "floor_at_sustained_matmul_s": round(8 * tflop / tl["matmul_8192_sustained_tflops"], 3)},
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
            "flops_per_step": rows["split"]["flops_per_step"], "text_tokens": rows["split"]["text_tokens"],
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
        "environment": environment({k: v["_run"] for k, v in s.items() if not k.startswith("_")}),
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
    tflop = rows["split"]["flops_per_step"] / 1e12
    return {
        "run": run.name, "gpu": gpu, "environment": recorded(run),
        "stock": {"denoise_s": rows["split"]["denoise_s"], "e2e_s": rows["stock"]["e2e_med_s"],
                  "flops_per_step": rows["split"]["flops_per_step"], "text_tokens": rows["split"]["text_tokens"],
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
                  "floor_at_sustained_matmul_s": round(8 * tflop / tl["matmul_8192_sustained_tflops"], 3)},
        "ratios_vs_stock": {"denoise_speedup": round(rows["split"]["denoise_s"] / eng["denoise_s"], 2),
                            "denoise_speedup_fp8": round(rows["split"]["denoise_s"] / fp8["fp8_denoise_s"], 2),
                            "batch4_throughput_ratio": round(batch4["per_image_s"] / eng["batch4_per_image_s"], 2),
                            "peak_vram_ratio_resident_cpu_te": round(eng["peak_vram_gib"] / rows["staged"]["peak_gib"], 3)},
    }


def main() -> None:
    sys.path.insert(0, str(RESULTS.parents[1]))  # run as a file: the repository root, for the bench package
    from bench.report_features import cards, controlnet, edits, lora, scaleout, streaming
    from bench.report_md import render, render_other
    from bench.report_md_features import (render_cards, render_controlnet, render_edits, render_lora, render_scaleout,
                                          render_streaming)

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
    own = ("edits", "lora", "lora_http", "controlnet", "controlnet_card_24", "cards", "cards_expandable",
           "cards_stock", "streaming", "scaleout_cold", "scaleout", "scaleout_zero",
           "startup_profile", "reader_check", "cards_min", "cards_partial", "envelopes", "scaleout_no_preload",
           "preload_check", "cards_8_tight")  # steps with sections of their own
    summary = summarize({k: v for k, v in steps.items() if k not in own})
    if "edits" in steps:
        summary["edits"] = edits(steps["edits"], json.loads((RESULTS / "run41" / "edits.json").read_text()))
    if "lora" in steps:
        summary["lora"] = lora(steps["lora"], json.loads((RESULTS / "run47" / "lora.json").read_text()),
                               steps.get("lora_http"))
    if "controlnet" in steps:
        summary["controlnet"] = controlnet(steps["controlnet"], steps.get("controlnet_card_24"))
    if "cards" in steps:
        figures = cards(steps["cards"], steps.get("cards_expandable"), steps.get("cards_stock"),
                        steps.get("cards_partial"), steps.get("cards_min"), steps.get("envelopes"),
                        steps.get("cards_8_tight"))
        summary["cards"], summary["cards_fp8"] = figures["cards"], figures["cards_fp8"]
        summary["cards_run"] = {k: v for k, v in figures.items() if k not in ("cards", "cards_fp8")}
    if "streaming" in steps:
        summary["streaming"] = streaming(steps["streaming"])
    if "scaleout" in steps:  # measured on the GPU machine
        summary["scaleout"] = scaleout(steps.get("scaleout_cold"), steps["scaleout"], steps.get("scaleout_zero"),
                                       steps.get("reader_check"), steps.get("startup_profile"),
                                       steps.get("scaleout_no_preload"), steps.get("preload_check"))
    smoke = RESULTS / "cpu" / "scaleout.json"
    if smoke.exists():  # the same steps on a CPU machine with the tiny checkpoint: the code paths, not the GPU's times
        run = json.loads(smoke.read_text())
        summary["scaleout_cpu_smoke"] = {**{k: v for k, v in run.items() if k != "steps"},
                                         **scaleout(*(run["steps"].get(n) for n in ("scaleout_cold", "scaleout",
                                                                                    "scaleout_zero")))}
    warm = RESULTS / "cpu" / "warm_start.json"
    if warm.exists():  # bench/warm_start_cpu.py: a warm replica's compiled warm-up on the CPU, against a base revision
        summary["warm_start_cpu"] = json.loads(warm.read_text())
    app = RESULTS / "cpu" / "app_start.json"
    if app.exists():  # bench/app_start_cpu.py: the whole app's start on the CPU, against a base revision and serve run
        summary["app_start_cpu"] = json.loads(app.read_text())
    aot = RESULTS / "cpu" / "aot_blocks.json"
    if aot.exists():  # bench/aot_blocks_cpu.py: an experiment (blocks' compiled code loaded without Dynamo)
        summary["aot_blocks_cpu"] = json.loads(aot.read_text())
    summary["other_devices"] = {run.name: other_device(run) for run in sorted(RESULTS.glob("*-run*"))}
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS.parents[1] / "BENCHMARKS.md").write_text(
        render(summary) + (render_edits(summary["edits"]) if "edits" in summary else "")
        + (render_lora(summary["lora"]) if "lora" in summary else "")
        + (render_controlnet(summary["controlnet"]) if "controlnet" in summary else "")
        + (render_cards(summary) if "cards" in summary else "")
        + (render_streaming(summary["streaming"]) if "streaming" in summary else "")
        + render_scaleout(summary.get("scaleout"), summary.get("scaleout_cpu_smoke"), summary.get("warm_start_cpu"),
                         summary.get("aot_blocks_cpu"), summary.get("app_start_cpu"))
        + "".join(render_other(o, summary) for o in summary["other_devices"].values()))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
