"""Small cards (issue 22): the engine's plan on emulated 24, 16, 12 and 8 GiB cards (another process holds the rest of
the H200, as ../shared/gpu/hold_memory.py does), bf16 and FP8 (``fp8: auto``) plans, against resident bf16 on the
24 GiB card; and stock diffusers' low-VRAM recipes at 12 and 8 GiB as anchors (``cards_stock``). Each
configuration runs in a fresh process (its own CUDA context, compile state and peak), the engine warm (serve_config's
speed-ups, warmed as a replica warms), 1024², 8 steps; the prompt's embeddings are made once on the CPU beforehand
(on these plans the CPU encoders encode), so e2e is the generation: denoise, decode and the PNG."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..common import PROMPT, checkpoint, save, size
from .controlnet import _hold

CARDS = (24, 16, 12, 8)
FP8_CARDS = (12, 8)


def _peak_mib(pid: int) -> int | None:
    """The GPU memory nvidia-smi shows for process ``pid`` now (MiB)."""
    r = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True)
    for line in r.stdout.splitlines():
        p, used = (x.strip() for x in line.split(","))
        if p == str(pid):
            return int(used)
    return None


def one(gib: float, fp8: str, extra_gib: float = 0.0) -> dict:
    """In this (fresh) process, on a card the parent emulates: the plan, load, warm-up, then 5 images; with the
    allocator a replica uses (model/machine.py's prepare_allocator, unless the parent set PYTORCH_CUDA_ALLOC_CONF).
    ``extra_gib``: an experiment, the plan made for that much more memory than the card has (less reserve)."""
    import os
    import threading

    from zimage_serve.model.machine import prepare_allocator

    prepare_allocator()  # before the first CUDA call, as start_engine does
    import torch

    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Job, plan_for_this_machine
    from zimage_serve.model.imaging import encode_image
    from zimage_serve.model.planner import Workload
    from zimage_serve.model.sources import resolve

    from .edits import _production_generator

    side, g = size(), _production_generator()
    out = {"card_gib": gib, "fp8": fp8, "free_gib_seen": round(torch.cuda.mem_get_info()[0] / 2**30, 2),
           "allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), **({"extra_gib": extra_gib} if extra_gib else {})}
    peak = {"mib": 0}
    stop = threading.Event()

    def watch():  # nvidia-smi's view of this process, every 0.2 s
        while not stop.is_set():
            peak["mib"] = max(peak["mib"], _peak_mib(os.getpid()) or 0)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()
    try:
        source = resolve(str(checkpoint()))
        plan = plan_for_this_machine(source, Workload(side, side, g["max_batch_size"]), "auto", "cpu",
                                     fp8={"off": False}.get(fp8, fp8), reserve_bytes=-int(extra_gib * 2**30))
        out.update(plan=plan.kind, weights=plan.weights, blocks_resident=plan.blocks_resident,
                   blocks_streamed=plan.blocks_streamed, plan_peak_gib=plan.peak_gib, describe=plan.describe())
        engine, load_s, warmup_s = _warm_engine(source, plan)
        out.update(load_s=round(load_s, 1), warmup_s=round(warmup_s, 1))
        out["speedups"] = engine.speedups
        embeds = torch.load(str(Path("/tmp/cards-embeds.pt")))
        denoise, e2e = [], []
        for i in range(6):
            request = GenerationRequest(PROMPT, seed=i, width=side, height=side)
            torch.cuda.synchronize()
            t = time.perf_counter()
            result = engine.generate([Job(request, embeds)])
            encode_image(result.images[0], "png")
            e2e.append(time.perf_counter() - t)
            denoise.append(result.seconds["denoise"])
        out.update(denoise_s=round(statistics.median(denoise[1:]), 3), e2e_s=round(statistics.median(e2e[1:]), 3),
                   peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2))
        out["envelope"] = _envelope(engine, embeds, side, g["max_batch_size"], peak)
    except torch.OutOfMemoryError as e:
        out["error"] = "CUDA OOM: " + str(e).splitlines()[0][:200]
    except Exception as e:  # noqa: BLE001 (the figure says what failed)
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    stop.set()
    time.sleep(0.3)
    out["peak_mib"] = peak.get("before_envelope_mib", peak["mib"])
    return out


def _warm_engine(source, plan):
    """(the engine, its load's seconds, its warm-up's) for ``plan``, with serve_config's speed-ups, warmed as a
    replica warms (batch 1 and 2 at plan_size), without its text encoder (the CPU encoders encode)."""
    from zimage_serve.model.engine import Engine
    from zimage_serve.model.startup import warm_up

    from ..common import compile_cache
    from .edits import _production_generator

    side, batch = size(), _production_generator()["max_batch_size"]
    t = time.perf_counter()
    engine = Engine.load(source, plan, with_text_encoder=False, speedups={
        "compile": True, "fuse": True, "cuda_graphs": True, "cache_dir": compile_cache()})
    engine.set_progress(False)
    load_s = time.perf_counter() - t
    return engine, load_s, warm_up(engine, side, side, sorted({1, min(2, batch)})).seconds


def _envelope(engine, embeds, side: int, batch: int, peak: dict) -> dict:
    """The plan's envelope itself: a batch of ``batch`` images at ``side``² (serve_config's max_batch_size at its
    plan_size, which the warm-up did not run), which the plan must serve without running out of memory: twice, the
    second timed (the first captures its CUDA graphs); the peaks of both (``peak``: the nvidia-smi watcher's,
    restarted for them), or the error."""
    import torch

    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Job

    peak["before_envelope_mib"], peak["mib"] = peak["mib"], 0
    torch.cuda.reset_peak_memory_stats()
    jobs = [Job(GenerationRequest(PROMPT, seed=i, width=side, height=side), embeds) for i in range(batch)]
    try:
        engine.generate(jobs)
        torch.cuda.synchronize()
        t = time.perf_counter()
        result = engine.generate(jobs)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 (out of memory, however it comes: the figure says what failed)
        return {"batch": batch, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    seconds = time.perf_counter() - t
    time.sleep(0.5)  # (the watcher's next look)
    return {"batch": batch, "images": len(result.images), "seconds": round(seconds, 2),
            "denoise_s": round(result.seconds["denoise"], 2),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2), "peak_mib": peak["mib"]}


def _embeds() -> None:
    """The prompt's embeddings, made once on the CPU (as the CPU encoders make them) for every configuration."""
    import torch

    from zimage_serve.model.encoding import PromptEncoder
    from zimage_serve.model.loader import load_text_encoder
    from zimage_serve.model.sources import resolve

    path = Path("/tmp/cards-embeds.pt")
    if not path.exists():
        encoder = PromptEncoder(*load_text_encoder(resolve(str(checkpoint())), torch.device("cpu"), torch.bfloat16))
        torch.save(encoder.encode([PROMPT])[0].float(), str(path))


def _in_a_fresh_process(code: str, gib: float, env: dict | None = None, args: tuple = (), timeout: int = 420,
                        emulate: bool = True) -> dict:
    """``python -c code *args`` on an emulated ``gib`` GiB card (``emulate`` False: on the whole GPU): the JSON it
    prints after "CARD ", or its error."""
    import os

    holder = _hold(gib) if emulate else None
    try:
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    lines = [line for line in r.stdout.splitlines() if line.startswith("CARD ")]
    if not lines:
        return {"card_gib": gib, "error": (r.stderr or r.stdout)[-600:]}
    return json.loads(lines[-1][5:])


def _card(function: str, gib: float, fp8: str, env: dict | None = None, emulate: bool = True, **kwargs) -> dict:
    """This module's ``function(gib, fp8, **kwargs)`` in a fresh process (:func:`_in_a_fresh_process`): what it
    returned."""
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    code = ("import json, sys; sys.path.insert(0, '.'); from bench.steps.cards import " + function + "; "
            f"print('CARD ' + json.dumps({function}({gib}, {fp8!r}{extra})))")
    return _in_a_fresh_process(code, gib, env, emulate=emulate)


def cards(bf16_cards=CARDS, fp8_cards=FP8_CARDS, name: str = "cards", alloc_conf: str | None = None,
          extra_gib: float = 0.0):
    """Issue 22's figures: each card's plan, peak (nvidia-smi and allocated), denoise and e2e, bf16 and FP8 plans,
    and each one's ratio to resident bf16 on the 24 GiB card. ``alloc_conf``: the children's
    PYTORCH_CUDA_ALLOC_CONF (unset: a replica's, expandable segments; before 2026-12-06 the default allocator).
    ``extra_gib``: :func:`one`'s experiment."""
    _embeds()
    results: dict = {"cards": {}, "cards_fp8": {}, "alloc_conf": alloc_conf}
    env = {"PYTORCH_CUDA_ALLOC_CONF": alloc_conf} if alloc_conf else {}
    for key, fp8, cards_ in (("cards", "off", bf16_cards), ("cards_fp8", "auto", fp8_cards)):
        for gib in cards_:
            results[key][str(gib)] = _card("one", gib, fp8, env, extra_gib=extra_gib)
            save(name, **results)
    base = results["cards"].get("24", {}).get("e2e_s")
    base_denoise = results["cards"].get("24", {}).get("denoise_s")
    for key in ("cards", "cards_fp8"):
        for r in results[key].values():  # (the 24 GiB card's figures are the base: a run without it has no ratios)
            if base and r.get("e2e_s"):
                r["ratio_to_resident"] = round(r["e2e_s"] / base, 3)
                r["denoise_ratio_to_resident"] = round(r["denoise_s"] / base_denoise, 3)
                r["budget_used"] = round(r["peak_mib"] / 1024 / r["card_gib"], 3) if r.get("peak_mib") else None
    save(name, **results)
    print("CARDS", json.dumps({k: {g: (r.get("plan"), r.get("weights"), r.get("e2e_s"), r.get("ratio_to_resident"),
                                        r.get("peak_mib"), r.get("error")) for g, r in v.items()}
                               for k, v in results.items() if isinstance(v, dict)}), flush=True)


STOCK = '''
import json, statistics, sys, time, torch
from diffusers import ZImagePipeline
recipe, ckpt, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
res = {"recipe": recipe}
try:
    pipe = ZImagePipeline.from_pretrained(ckpt, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    embeds = None
    if recipe == "model_offload":
        pipe.enable_model_cpu_offload()
    elif recipe == "sequential_offload":
        pipe.enable_sequential_cpu_offload()
    else:
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        pipe.transformer.enable_group_offload(onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                                              offload_type="block_level", num_blocks_per_group=1, use_stream=True)
        pipe.vae.to("cuda")
    def once(seed):
        torch.cuda.synchronize(); t = time.perf_counter()
        kw = dict(height=1024, width=1024, num_inference_steps=8, guidance_scale=0.0,
                  generator=torch.Generator("cpu").manual_seed(seed))
        pipe(prompt_embeds=embeds, **kw) if embeds is not None else pipe(prompt=prompt, **kw)
        torch.cuda.synchronize()
        return time.perf_counter() - t
    torch.cuda.reset_peak_memory_stats()
    once(0)
    reps = 1 if recipe == "sequential_offload" else 3
    ts = [once(1 + i) for i in range(reps)]
    res.update(e2e_s=round(statistics.median(ts), 3), peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
               note="text encoded on the CPU, not timed" if embeds is not None else "text encoded by the recipe, timed")
except torch.OutOfMemoryError as e:
    res["error"] = "CUDA OOM: " + str(e).splitlines()[0][:160]
except Exception as e:
    res["error"] = f"{type(e).__name__}: {str(e)[:200]}"
print("CARD " + json.dumps(res), flush=True)
'''


def cards_stock():
    """Stock diffusers' low-VRAM recipes at 12 and 8 GiB, each in a fresh process: enable_model_cpu_offload,
    enable_sequential_cpu_offload (one timed image: it takes some 20 s) and block-level group offloading with CUDA
    streams (the text encoder on the CPU, not timed)."""
    results: dict = {}
    for gib in (12, 8):
        for recipe in ("model_offload", "group_offload", "sequential_offload"):
            results.setdefault(str(gib), {})[recipe] = _in_a_fresh_process(
                STOCK, gib, args=(recipe, str(checkpoint()), PROMPT), timeout=300)
            save("cards_stock", **results)
    print("CARDS_STOCK", json.dumps(results), flush=True)


def cards_min(weights=("off", "auto")):
    """The smallest workable card, bf16 and FP8: the planner's minimum (its PlanError at 1 MiB says it), then a card
    just above it (rounded up to 0.25 GiB, with the CUDA context's 0.5 GiB) and one 0.75 GiB below, each in a fresh
    process as ``cards`` runs them: the first must serve without running out of memory, the second must refuse with
    that PlanError, never an OOM. ``weights``: the ``fp8`` settings to run (FP8 never streams: at its minimum the
    plan is bf16's)."""
    import math

    from zimage_serve.core.errors import PlanError
    from zimage_serve.model.planner import Workload, make_plan
    from zimage_serve.model.sizes import sizes_of
    from zimage_serve.model.sources import resolve

    from .edits import _production_generator

    _embeds()
    sizes = sizes_of(resolve(str(checkpoint())))
    workload = Workload(size(), size(), _production_generator()["max_batch_size"])
    results: dict = {}
    for fp8 in weights:
        try:
            make_plan(sizes, 2**20, workload, encode_on="cpu", fp8={"off": False}.get(fp8, fp8))
            smallest = None
        except PlanError as e:
            smallest = e.smallest_gib
        r = results[fp8] = {"planner_smallest_free_gib": smallest}
        if smallest is None:
            continue
        card = math.ceil((smallest + 0.5) * 4) / 4
        for key, gib in (("at_minimum", card), ("below", card - 0.75)):
            r[key] = _card("one", gib, fp8)
            save("cards_min", **results)
    save("cards_min", **results)
    print("CARDS_MIN", json.dumps({k: (v.get("planner_smallest_free_gib"), v.get("at_minimum", {}).get("e2e_s"),
                                       v.get("at_minimum", {}).get("error"), v.get("below", {}).get("error"))
                                   for k, v in results.items()}), flush=True)


# the cards whose plans ran out of memory at their envelope (run62, run63), and those next to them, unconstrained
ENVELOPE_CARDS = ((16, "off"), (12, "off"), (8, "off"), (12, "auto"), (8, "auto"), (4, "off"))
CONTEXT_GIB = 0.51  # what the CUDA context takes of an emulated card (free_gib_seen in run63: card - 0.51)


def peaks(gib: float, fp8: str) -> dict:
    """In this (fresh) process, on the whole GPU: the plan the engine makes on a ``gib`` GiB card, loaded and warmed
    as ``one`` does, then one batch of 1, 2 and 4 images at plan_size (each twice: the first captures its graphs),
    each batch's peak allocated memory against the plan's estimate. Unconstrained, a batch that would not fit the
    card still runs: its peak says by how much the estimate falls short."""
    import torch

    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Job
    from zimage_serve.model.planner import Workload, make_plan
    from zimage_serve.model.sizes import sizes_of
    from zimage_serve.model.sources import resolve

    from .edits import _production_generator

    side, g, GiB = size(), _production_generator(), 2**30
    source = resolve(str(checkpoint()))
    plan = make_plan(sizes_of(source), int((gib - CONTEXT_GIB) * GiB), Workload(side, side, g["max_batch_size"]),
                     "auto", "cpu", fp8={"off": False}.get(fp8, fp8))
    out = {"card_gib": gib, "fp8": fp8, "plan": plan.kind, "weights": plan.weights,
           "blocks_resident": plan.blocks_resident, "plan_peak_gib": plan.peak_gib,
           "plan_weights_gib": plan.weights_on_gpu_gib, "plan_activations_gib": plan.activations_gib,
           "budget_gib": plan.budget_gib}
    try:
        engine = _warm_engine(source, plan)[0]
        out["speedups"] = engine.speedups
        embeds = torch.load(str(Path("/tmp/cards-embeds.pt")))
        torch.cuda.synchronize()
        out["allocated_after_warmup_gib"] = round(torch.cuda.memory_allocated() / GiB, 3)
        for batch in (1, 2, 4):
            jobs = [Job(GenerationRequest(PROMPT, seed=i, width=side, height=side), embeds) for i in range(batch)]
            engine.generate(jobs)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            engine.generate(jobs)
            torch.cuda.synchronize()
            out[f"batch{batch}_peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
    except Exception as e:  # noqa: BLE001 (the figure says what failed)
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return out


def envelopes(cards_=ENVELOPE_CARDS):
    """Issue 22's "never out of memory at plan_size": each card's plan (``ENVELOPE_CARDS``) run on the whole GPU,
    in a fresh process each, with its peaks at batch 1, 2 and 4 against the plan's estimate (``peaks``)."""
    _embeds()
    results: dict = {}
    for gib, fp8 in cards_:
        results[f"{gib}_{fp8}"] = _card("peaks", gib, fp8, emulate=False)
        save("envelopes", **results)
    print("ENVELOPES", json.dumps({k: (v.get("plan"), v.get("weights"), v.get("plan_peak_gib"),
                                       v.get("batch4_peak_allocated_gib"), v.get("error"))
                                   for k, v in results.items()}), flush=True)
