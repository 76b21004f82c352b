"""latest.json's sections of the features added after text-to-image (image edits, LoRA adapters, ControlNet, small
cards, streaming, scale-out), each from its steps' records; bench/report.py puts them beside the engine's summary."""

from __future__ import annotations

import json

from bench.report import RESULTS, recorded

# what each edits run measured, in order (bench/results/<run>/edits.json): the same step after each change
EDITS_CHANGES = {
    "run42": "first measured: the upload decoded at the ingress and again on the generator",
    "run44": "decoded once (Pixels in the request); the generator's PNG on 1 CPU (AppConfig's default)",
    "run45": "the VAE encoder's fused norms; JSON by pydantic's serializer; serve_config.yaml's generator (2 CPUs)",
    "run46": "admitted before decoding; the prompt encoded while the upload is decoded",
}



def edits(e: dict, cpu_encoders: dict) -> dict:
    """The edits step (bench/steps/edits.py), with the device and date of its own run (an H200 run, while the
    summary above is mostly H100 runs): ratios are against stock diffusers in that same run. ``cpu_encoders``:
    run41, the same step with every prompt on the CPU encoders."""
    return {"encode_on_cpu_run41": {"img2img_http_p50_s": cpu_encoders["ours"]["img2img_http_p50_s"],
                                    "inpaint_http_p50_s": cpu_encoders["ours"]["inpaint_http_p50_s"],
                                    "stock_img2img_p50_s": cpu_encoders["stock"]["img2img_p50_s"],
                                    "img2img_ratio": cpu_encoders["img2img_ratio"]},
            "encode_on": e.get("encode_on", "cpu"), "img2img_ratio": e["img2img_ratio"], "inpaint_ratio": e["inpaint_ratio"],
            "mixed_throughput_ratio": e["mixed_throughput_ratio"], "stock": e["stock"], "ours": e["ours"],
            "deploy_s": e["deploy_s"], "speedups": e["speedups"], "run": e["_run"],
            "environment": recorded(RESULTS / e["_run"]), "history": edits_history(),
            "profile_run44": json.loads((RESULTS / "run44" / "edits_profile.json").read_text()),
            "profile_run43": json.loads((RESULTS / "run43" / "edits_profile.json").read_text())}


def edits_history() -> list[dict]:
    rows = []
    for run, change in EDITS_CHANGES.items():
        e = json.loads((RESULTS / run / "edits.json").read_text())
        rows.append({"run": run, "change": change, "stock_img2img_p50_s": e["stock"]["img2img_p50_s"],
                     "img2img_http_p50_s": e["ours"]["img2img_http_p50_s"], "img2img_ratio": e["img2img_ratio"],
                     "inpaint_ratio": e["inpaint_ratio"], "mixed_throughput_ratio": e["mixed_throughput_ratio"]})
    return rows


def lora(x: dict, float32_slots: dict, http: dict | None) -> dict:
    """Issue 18's keys: over HTTP from the lora_http step where it ran (``http``), the recompiles from the engine's
    lora step (``x``, which also has the engine-level figures); ``float32_slots``: the lora step before the slots
    computed in the model's dtype (run47)."""
    engine_keys = {"p50_ratio": x["p50_ratio"], "cold_adapter_extra_s": x["cold_adapter_load_s"],
                   "switch_s": x["switch_s"], "mixed_throughput_ratio": x["mixed_ratio"]}
    out = {"run": (http or x)["_run"], "environment": recorded(RESULTS / (http or x)["_run"])}
    if http:
        served = http.get("recompiles") is not None  # the replica's own count (/readyz), where the run has it
        out.update({k: http[k] for k in engine_keys},
                   recompiles=http["recompiles"] if served else x["recompiles_after_warmup"],
                   measured=f"over HTTP ({http['_run']}, the production default generator); recompiles: "
                            + ("the replica's after its warm-up" if served else f"the engine's ({x['_run']})"),
                   http={k: v for k, v in http.items() if not k.startswith("_")})
    else:
        out.update(engine_keys, recompiles=x["recompiles_after_warmup"],
                   measured="engine denoise (8 steps, 1024², batch 1, compiled + fused), not over HTTP")
    return {**out, "engine": {**engine_keys, "run": x["_run"], "environment": recorded(RESULTS / x["_run"])},
            "step": {k: v for k, v in x.items() if not k.startswith("_")},
            "float32_slots_run47": {k: v for k, v in float32_slots.items() if not k.startswith("_")}}


def controlnet(c: dict, card: dict | None) -> dict:
    """Issue 20's keys (the controlnet step), and the emulated-card run (controlnet_24) beside them."""
    keep = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}
    return {"run": c["_run"], "environment": recorded(RESULTS / c["_run"]), "p50_ratio": c["p50_ratio"],
            "extra_over_plain_s": c["extra_over_plain_s"], "peak_vram_gib": c["peak_vram_gib"],
            "step": keep(c), **({"card_24gib": {"run": card["_run"], "environment": recorded(RESULTS / card["_run"]),
                                                **keep(card)}} if card else {})}


def streaming(s: dict) -> dict:
    """Issue 21's keys (the streaming step): the throughput with previews against without, the first preview."""
    return {"run": s["_run"], "environment": recorded(RESULTS / s["_run"]),
            "preview_throughput_ratio": s["preview_throughput_ratio"], "first_preview_s": s["first_preview_s"],
            "step": {k: v for k, v in s.items() if not k.startswith("_")}}


def scaleout(cold: dict | None, warm: dict | None, zero: dict | None, reader: dict | None = None,
             profile: dict | None = None, no_preload: dict | None = None, preload_check: dict | None = None) -> dict:
    """Issue 23's keys from the scaleout_cold, scaleout and scaleout_zero steps (bench/steps/scaleout.py): the app's
    start on a cold and a warm node, a killed replica's replacement, the first request from zero; each start's
    stages (model/startup.py) beside its figure; the weights reader checked against diffusers (``reader``, the
    reader_check step) and where a replica's imports go (``profile``, the startup_profile step); the replacement
    with Ray's idle workers importing nothing ahead (``no_preload``, the scaleout_no_preload step: model/preload.py's
    baseline, in the same run); whether a preload initialises CUDA (``preload_check``, the preload_check step). A step
    not run gives None."""
    cold, warm, zero = cold or {}, warm or {}, zero or {}
    runs = sorted({x["_run"] for x in (cold, warm, zero) if "_run" in x})
    checked = {"reader_check": {k: v for k, v in reader.items() if not k.startswith("_")} | {"run": reader["_run"]}} \
        if reader else {}
    after_kill = lambda x: {k: x.get(k) for k in ("replica_ready_s", "first_image_after_kill_s", "lost", "requests",
                                                   "ray_workers_before_kill")}  # (a scaleout step's)
    return {"app_ready_cold_s": cold.get("app_ready_s"), "app_ready_warm_s": warm.get("app_ready_s"),
            **after_kill(warm),
            "first_request_from_zero_s": zero.get("first_request_from_zero_s"),
            "app_ready_scaled_to_zero_s": zero.get("app_ready_s"),
            "stages": {"cold_start": cold.get("start"), "warm_start": warm.get("start"),
                       "replacement": warm.get("new_replica_start"), "from_zero": zero.get("started_replica")},
            # `zimage-serve serve`'s own account of the app's start (its "up" line) and its stop after Ctrl-C
            "command_start": {"cold": cold.get("command_start"), "warm": warm.get("command_start")},
            "stop_s": {"cold": cold.get("stop_s"), "warm": warm.get("stop_s")},
            **({"without_preload": {"run": no_preload["_run"], **after_kill(no_preload),
                                    "replacement": no_preload.get("new_replica_start")}} if no_preload else {}),
            **({"preload_check": {k: v for k, v in preload_check.items() if k != "_run"} | {"run": preload_check["_run"]}}
               if preload_check else {}),
            "runs": runs, "gpus": {run: recorded(RESULTS / run)["gpu"]["value"] for run in runs},
            "history": scaleout_history(), **checked, **({"startup_profile": _profile(profile)} if profile else {})}


def _profile(p: dict) -> dict:
    """The startup_profile step, shortened: the imports' total and the modules that take longest (with what they
    import, and by their own time), and each way of reading the transformer's weights to the GPU."""
    it, remembered = p["importtime"], p.get("importtime_remembered")  # (the second: runs after 2026-12-06)
    return {"run": p["_run"], "importtime_total_s": it["total_s"], "by_cumulative": it["by_cumulative_depth_le_3"][:12],
            "by_self": it["by_self"][:8],
            **({"importtime_remembered_total_s": remembered["total_s"], "by_self_remembered": remembered["by_self"][:8]}
               if remembered else {}),
            "reads": {k: v for k, v in p.items()
                      if not k.startswith(("importtime", "_")) and k != "step"}}


def scaleout_history() -> list[dict]:
    """Every GPU run of the scaleout steps, oldest first: its GPU, what its code did with the blocks' saved compiled
    code (from the cold start's warm-up calls) and its headline figures, to read each change against."""
    from bench.report import _run_number

    rows = []
    for run in sorted((p for p in RESULTS.glob("run*") if (p / "scaleout.json").exists()), key=_run_number):
        read = lambda name: json.loads((run / name).read_text()) if (run / name).exists() else {}
        cold, warm, zero = read("scaleout_cold.json"), read("scaleout.json"), read("scaleout_zero.json")
        calls = str(((cold.get("start") or {}).get("details") or {}).get("warmup_calls", ""))
        saved = ((cold.get("start") or {}).get("details") or {}).get("warmup_saved_compiled_blocks")
        code = "saved and loaded" if saved else "none saved" if "save compiled" in calls else "not in the code yet"
        rows.append({"run": run.name, "gpu": recorded(run)["gpu"]["value"], "saved_code": code,
                     "replica_ready_s": warm.get("replica_ready_s"), "app_ready_warm_s": warm.get("app_ready_s"),
                     "app_ready_cold_s": cold.get("app_ready_s"),
                     "first_request_from_zero_s": zero.get("first_request_from_zero_s")})
    return rows


def cards(run: dict, expandable: dict | None, stock: dict | None, partial: dict | None = None,
          minimum: dict | None = None, envelopes: dict | None = None, tight: dict | None = None) -> dict:
    """Issue 22's keys: each card's figures (the cards step), the 16 GiB card from its rerun with expandable segments
    (``expandable``: the allocator the GPU processes now use) where the first run ran out of memory, each ratio to
    resident bf16 on the 24 GiB card; the partial plans from their later run (``partial``: the cards_partial step,
    each ratio to that run's own 24 GiB card) where there is one; stock diffusers' recipes (``stock``) and the
    smallest workable card (``minimum``: the cards_min step) beside them; each plan's peaks at batch 1, 2 and 4 on
    the whole GPU against its estimate (``envelopes``: the envelopes step). ``tight``: the cards_8_tight step, whose
    bf16 8 GiB plan (8 blocks, with expandable segments) is the one the planner makes since its reserves were
    measured there: that card's figures."""
    keys = ("plan", "weights", "blocks_resident", "blocks_streamed", "peak_mib", "denoise_s", "e2e_s",
            "ratio_to_resident", "denoise_ratio_to_resident", "budget_used", "plan_peak_gib", "peak_allocated_gib",
            "peak_reserved_gib", "warmup_s", "speedups", "describe", "error", "envelope")
    base = run["cards"]["24"]
    out = {"run": run["_run"], "environment": recorded(RESULTS / run["_run"]), "cards": {}, "cards_fp8": {}}
    for key in ("cards", "cards_fp8"):
        for gib, r in run[key].items():
            if expandable and gib in expandable.get(key, {}) and r.get("error"):
                first = r["error"].splitlines()[0]
                r = {**expandable[key][gib], "run": expandable["_run"], "first_run_error": first,
                     "allocator": expandable.get("alloc_conf")}
                r["ratio_to_resident"] = round(r["e2e_s"] / base["e2e_s"], 3)
                r["denoise_ratio_to_resident"] = round(r["denoise_s"] / base["denoise_s"], 3)
                r["budget_used"] = round(r["peak_mib"] / 1024 / r["card_gib"], 3)
            if partial and gib != "24" and gib in partial.get(key, {}) and not partial[key][gib].get("error"):
                r = {**partial[key][gib], "run": partial["_run"], "base_e2e_s": partial["cards"]["24"]["e2e_s"]}
            if (tight and key == "cards" and gib == "8" and "e2e_s" in tight["cards"].get("8", {})
                    and "e2e_s" in tight["cards"].get("24", {})):
                r = {**tight[key][gib], "run": tight["_run"], "base_e2e_s": tight["cards"]["24"]["e2e_s"],
                     "step": "cards_8_tight"}
            out[key][gib] = {k: r[k] for k in (*keys, "run", "first_run_error", "allocator", "base_e2e_s", "step",
                                               "extra_gib") if k in r}
    if minimum:
        out["minimum"] = {k: v for k, v in minimum.items() if not k.startswith("_") and k != "step"}
        out["minimum_run"] = minimum["_run"]
    if envelopes:
        out["envelopes"] = {k: v for k, v in envelopes.items() if not k.startswith("_") and k != "step"}
        out["envelopes_run"] = envelopes["_run"]
    if stock:
        out["stock"] = {k: v for k, v in stock.items() if not k.startswith("_")}
        out["stock_run"] = stock["_run"]
    return out
