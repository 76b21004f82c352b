"""BENCHMARKS.md's sections of the features added after text-to-image, from bench/report_features.py's parts of
the summary (bench/report_md.py renders the engine's and serving's)."""

from __future__ import annotations

from bench.report_md import said, short


def render_edits(x: dict) -> str:
    """The image-edits section (bench/steps/edits.py), from its own run: another device than the sections above."""
    env, st, o, c, p, p0 = (x["environment"], x["stock"], x["ours"], x["encode_on_cpu_run41"], x["profile_run44"],
                            x["profile_run43"])
    met = lambda ok: "met" if ok else "not met"
    stages = lambda ms: ", ".join(f"{k} {v}" for k, v in ms.items())
    return f"""
## Image edits ({x['run']}: {short(said(env['gpu']))}, {said(env['date'])}, torch {said(env['torch'])}, diffusers {said(env['diffusers'])})

`python3 bench/run.py build edits` (`bench/steps/edits.py`), in one device command: full-size random weights,
1024² input and output, 8 steps, a centre-square mask. Stock diffusers: `ZImagePipeline.from_pretrained(bf16)`
all on the GPU, `ZImageImg2ImgPipeline` / `ZImageInpaintPipeline` built from its components (as
../shared/gpu/stock_features.py does), end to end from the prompt to PNG bytes, median of 5. Ours: the Serve
app over HTTP, `POST /v1/images/edits` as the openai client sends it (multipart, the 1024² PNG uploaded),
one request in flight, median of 10, with serve_config.yaml's generator (resident plan, compiled, CUDA graphs,
`encode_on: auto`, 2 CPUs for its PNG threads). Mixed traffic: 64 requests from 16 clients, generations alone, then a quarter image to
image, a quarter inpainting and half generations.

| | stock diffusers | zimage-serve over HTTP | ratio (target) |
|---|---|---|---|
| image to image, strength 0.6 (5 transformer calls) | {st['img2img_p50_s']} s | {o['img2img_http_p50_s']} s | **{x['img2img_ratio']}** (≤ 0.75: {met(x['img2img_ratio'] <= 0.75)}) |
| inpainting, strength 1.0 (8 calls) | {st['inpaint_p50_s']} s | {o['inpaint_http_p50_s']} s | **{x['inpaint_ratio']}** (≤ 0.75: {met(x['inpaint_ratio'] <= 0.75)}) |
| text to image in the same run, for reference | | {o['generate_http_p50_s']} s | |
| throughput, 16 clients: generations alone / mixed | | {o['generations_throughput_img_s']} / {o['mixed_throughput_img_s']} img/s | **{x['mixed_throughput_ratio']}** (≥ 0.9: {met(x['mixed_throughput_ratio'] >= 0.9)}) |

Where an image-to-image edit's time goes ({x['run']}, `Server-Timing` of the response, medians in ms):
{stages(o['img2img_server_timing_p50_ms'])}. `queue` runs from admission to the GPU batch: the upload's decode
and the prompt's encoding on the idle GPU, side by side (the ingress asks the generator for the embeddings before
it decodes the upload). In-process on the engine (`python3 bench/run.py build edits_profile`, run44): the edit
{p['img2img_0.6_generate_s']} s against text to image with the same 5 transformer calls {p['t2i_5_steps_generate_s']} s (run43, before the changes:
{p0['img2img_0.6_generate_s']} s against {p0['t2i_5_steps_generate_s']} s); the PNG decode of the 2.3 MB upload {p['upload_decode_s']} s, the pipeline's
preprocess {p['preprocess_s']} s, the VAE encode {p['vae_encode_eager_s']} s with its fused norms ({p0['vae_encode_s']} s unfused, run43;
compiling them gained nothing: {p['vae_encode_s']} s, so they run eagerly).

The same step after each change (stock diffusers' own figure moves between runs on this machine, from
{min(h['stock_img2img_p50_s'] for h in x['history'])} to {max(h['stock_img2img_p50_s'] for h in x['history'])} s; its reference figure on 2026-12-02 was 0.962 s, against which
{o['img2img_http_p50_s']} s would be {round(o['img2img_http_p50_s'] / 0.962, 3)}; each ratio is against the stock figure of its own run):

| run | change | stock img2img | ours | img2img ratio | inpaint ratio | mixed throughput |
|---|---|---|---|---|---|---|
""" + "".join(f"| {h['run']} | {h['change']} | {h['stock_img2img_p50_s']} s | {h['img2img_http_p50_s']} s | {h['img2img_ratio']} | "
              f"{h['inpaint_ratio']} | {h['mixed_throughput_ratio']} |\n" for h in x['history']) + f"""
With the prompt always on the CPU encoders (`BENCH_ENCODE_ON=cpu`, run41, before these changes) image to image
took {c['img2img_http_p50_s']} s (ratio {c['img2img_ratio']}): the idle GPU encoding a lone request's prompt is most of the gain.
"""


def render_lora(x: dict) -> str:
    """The LoRA section (bench/steps/lora.py), from its own run."""
    env, s, f, e = x["environment"], x["step"], x["float32_slots_run47"], x["engine"]
    said = lambda field: field["value"] if isinstance(field, dict) else field
    h = x.get("http") or {}
    counted = ("the replica's own count after its warm-up, /readyz `compiles_since_ready`"
               if h.get("recompiles") is not None else f"counted on the engine, {e['run']}")
    folded = "folded" in str(h.get("speedups", {}).get("lora_slots", ""))
    folded_note = (f"""
The slots are **folded** here (`{h['speedups']['lora_slots']}`, model/optim/lora_slots.py): on resident CUDA plans
without FP8 each targeted layer's weight carries the adapter's scaled `lora_b` as extra input columns and its input
is widened by `lora_a(x)`, so the update is summed inside the base matmul. The engine figures below (run48) are the
earlier slots, peft's arithmetic beside the matmul (`result + B(A(x)) * scale`), which cost {e['p50_ratio']}x: four
passes over every layer's output.
""" if folded else "")
    over_http = "" if not h else f"""
### Over HTTP ({x['run']}: {said(env['gpu'])}, {said(env['date'])}; the keys in latest.json's `lora`)

`python3 bench/run.py build lora_http` (`bench/steps/lora.py` `lora_http`): the Serve app with serve_config.yaml's
generator (one replica; fused, compiled, CUDA graphs, `encode_on: auto`), first without adapters (the base), then
serving 4 rank-{h['rank']} adapters; `POST /v1/images/generations` at 1024², 8 steps, a new prompt each request; one in
flight, median of 20; then 64 requests from 16 clients.

| | seconds | ratio | target |
|---|---|---|---|
| base, an app without adapters (p50) | {h['base_p50_s']} | 1 | |
| base, on the app with adapters (the slots at scale 0) | {h['slots_base_p50_s']} | {h['slots_base_p50_ratio']} | |
| an adapter (`p50_ratio`) | {h['adapter_p50_s']} | **{h['p50_ratio']}** | 1.05: {'met' if h['p50_ratio'] <= 1.05 else '**not met**'} |
| first request for an adapter the replica does not hold (`cold_adapter_extra_s`: over the adapter's p50) | {h['cold_adapter_s']} | +{h['cold_adapter_extra_s']} s | 1.5 s |
| two held adapters alternating (`switch_s`: p50 over the adapter's) | {h['alternating_p50_s']} | +{h['switch_s']} s | 0.05 s |
| throughput, 16 clients: the base alone / 4 adapters round-robin (`mixed_throughput_ratio`) | {h['base_throughput_img_s']} / {h['round_robin_throughput_img_s']} img/s | **{h['mixed_throughput_ratio']}** | 0.9 |
| recompiles after warm-up (`recompiles`, {counted}) | {x['recompiles']} | | 0 |
{folded_note}
Base requests on a replica that serves adapters pay the slots too ({h['slots_base_p50_ratio']}x). Stock
diffusers was not run over HTTP: its peft path, measured on the engine in run48 beside ours, is in the table below
(ours with the adapter took {s['ours_vs_stock_adapter']}x its time there).
"""

    return f"""
## LoRA adapters ({x['run']}: {said(env['gpu'])}, {said(env['date'])}, torch {said(env['torch'])}, diffusers {said(env['diffusers'])})
{over_http}
### On the engine ({e['run']})

`python3 bench/run.py build lora` (run47), then `python3 bench/run.py lora` on the same warm machine ({e['run']}), each
step in one process (`bench/steps/lora.py`): full-size random weights,
a rank-{s['rank']} adapter written by `make-lora` on attention and feed-forward of every block, 1024², 8 steps,
batch 1, the **engine's denoise** (compiled, fused projections; no CUDA graphs), the same prompt embeddings.

| | seconds | ratio |
|---|---|---|
| base, engine without LoRA slots | {s['base_no_slots_denoise_s']} | 1 |
| base, engine with slots (every scale 0) | {s['slots_base_denoise_s']} | {s['slots_base_denoise_s'] / s['base_no_slots_denoise_s']:.3f} |
| adapter through the slots | {s['adapter_denoise_s']} | **{e['p50_ratio']}** (target 1.05: not met by these, unfolded, slots) |
| 4 adapters round-robin, per image (base / this) | {s['round_robin_denoise_s']} | **{e['mixed_throughput_ratio']}** (target 0.9) |
| cold adapter: file (page cache) to the GPU | {s['cold_adapter_load_s']} | target 1.5 |
| switch between two held adapters (median of 20) | {s['switch_s']} | target 0.05 |
| recompiles after warm-up, 4 adapters and the base | {s['recompiles_after_warmup']} | target 0 |
| stock diffusers, base (uncompiled) | {s['stock_base_denoise_s']} | |
| stock `load_lora_weights` (peft wrappers) | {s['stock_load_lora_s']} | |
| stock `set_adapters` between two | {s['stock_set_adapters_s']} | |
| stock with the adapter (peft, unfused) | {s['stock_adapter_denoise_s']} | {s['stock_p50_ratio']} of stock's base |
| ours with the adapter / stock with it | | **{s['ours_vs_stock_adapter']}** |

The slots compute in the model's dtype on the GPU (bf16). Computed in float32 as peft does (run47), the adapter cost
{f['p50_ratio']}x the base ({f['adapter_denoise_s']} s: the input cast to float32 and matmuls without tensor cores in every
targeted layer). The remaining {e['p50_ratio']}x is the slots' two small matmuls per layer, paid by base requests too
on a replica that serves adapters (a replica with no adapters configured makes no slots).
"""


def render_controlnet(x: dict) -> str:
    """The ControlNet section (bench/steps/controlnet.py), from its own run."""
    env, s = x["environment"], x["step"]
    st, ours = s["stock"], s["ours"]
    said = lambda field: field["value"] if isinstance(field, dict) else field
    card = x.get("card_24gib")
    card_part = "" if not card else f"""
### On a 24 GiB card ({card['run']}: `python3 bench/run.py build controlnet_24`)

Another process holds all of the H200's memory but 24 GiB (../shared/gpu/hold_memory.py's method; compute stays the
H200's). The engine makes its plan there with serve_config.yaml's generator options, warms up as a replica does
({card['warmup_s']} s), then makes a control image and a plain one in process, PNG bytes included, prompts encoded
off the GPU as this plan says (not timed), median of 5:

```
{card['plan']}
```

| | seconds |
|---|---|
| a control image | {card['controlnet_p50_s']} |
| a plain image | {card['plain_p50_s']} |
| peak allocated | {card['peak_allocated_gib']} GiB of the 24 |

The plan leaves no room for CUDA graphs there (speed-ups: {', '.join(f'{k}: {v}' for k, v in card['speedups'].items())}).
Stock diffusers all on the GPU needs {st['controlnet_peak_gib']} GiB with the text encoder (above): it does not fit.
"""
    return f"""
## ControlNet ({x['run']}: {said(env['gpu'])}, {said(env['date'])}, torch {said(env['torch'])}, diffusers {said(env['diffusers'])}; the keys in latest.json's `controlnet`)

`python3 bench/run.py build controlnet` (`bench/steps/controlnet.py`): a full-size random Union-2.1 ControlNet
(15 control layers at 0, 2, ..., 28, control noise refiner, 33 control channels; {st['controlnet_params'] / 1e9:.2f} B
parameters, the single .safetensors file as published, written by `testing/controlnet.py`), 1024², 8 steps, a
1024² control map. Stock: `ZImagePipeline.from_pretrained` (bf16, on the GPU) with
`ZImageControlNetModel.from_single_file` and `ZImageControlNetPipeline`, end to end from the prompt to a PNG's bytes,
median of 5. Ours: the Serve app with serve_config.yaml's generator and `controlnet:` set, `POST
/v1/images/generations` with `control_image` (base64 PNG), one in flight, median of 10.

| | stock | ours over HTTP | ratio | target |
|---|---|---|---|---|
| a control request (`p50_ratio`) | {st['controlnet_p50_s']} s | {ours['controlnet_http_p50_s']} s | **{x['p50_ratio']}** | 0.75: {'met' if x['p50_ratio'] <= 0.75 else '**not met**'} |
| a plain generation | {st['plain_p50_s']} s | {ours['plain_http_p50_s']} s | {ours['plain_http_p50_s'] / st['plain_p50_s']:.3f} | |
| the control's extra (`extra_over_plain_s`) | +{s['stock_extra_over_plain_s']} s | **+{x['extra_over_plain_s']} s** | | |
| peak VRAM (`peak_vram_gib`: ours as served, the replica's peak allocated with its warm-up at batch 1 and 2) | {st['controlnet_peak_gib']} GiB | **{x['peak_vram_gib']} GiB** | | |

Ours, per stage (Server-Timing p50, ms): control {ours['controlnet_server_timing_p50_ms']}; plain
{ours['plain_server_timing_p50_ms']}. The replica's speed-ups: {', '.join(f'{k}: {v}' for k, v in s['speedups'].items())}.
The ControlNet's blocks run fused and compiled as one graph for all 17 (`model/optim/control_blocks.py`); during a
control batch the transformer's block stacks run block by block (the hints are added between blocks), not from
their CUDA graphs. Deploying the app took {s['deploy_s']} s (the generator's load and warm-up {s['load_seconds']} s,
with the ControlNet's path warmed too).
{card_part}"""


def render_cards(summary: dict) -> str:
    """The small-cards section (bench/steps/cards.py)."""
    meta, c8 = summary["cards_run"], summary["cards_fp8"]
    env = meta["environment"]
    said = lambda field: field["value"] if isinstance(field, dict) else field
    target = {("cards", "12"): 1.25, ("cards", "8"): 1.6, ("cards_fp8", "12"): 0.9, ("cards_fp8", "8"): 1.1}

    def row(key, gib, r):
        if r.get("error"):
            return f"| {gib} GiB | {r.get('plan')} {r.get('weights')} | | | | | | {r['error'].splitlines()[0]} |"
        split = f", {r['blocks_resident']} resident / {r['blocks_streamed']} streamed" if r.get("blocks_streamed") else ""
        t = target.get((key, gib))
        verdict = "" if t is None else f" (target {t}: {'met' if r['ratio_to_resident'] <= t else '**not met**'})"
        how = ", ".join([f"`{r.get('step', 'cards_partial')}`", *([r["allocator"]] if r.get("allocator") else []),
                         *([f"planned for {r['extra_gib']} GiB more than the card had"] if r.get("extra_gib") else [])])
        note = (f" {r['run']}, after {r['first_run_error'][:40]}... without expandable segments" if r.get("first_run_error")
                else f" {r['run']} ({how}), against its own 24 GiB card's {r['base_e2e_s']} s" if r.get("run")
                else "")
        return (f"| {gib} GiB | {r['plan']} {r['weights']}{split} | {r['peak_mib']} MiB ({r['budget_used']:.0%}) | "
                f"{r['denoise_s']} | {r['e2e_s']} | **{r['ratio_to_resident']}**{verdict} (denoise "
                f"{r['denoise_ratio_to_resident']}) | {_envelope(r.get('envelope'))} |{note} |")

    rows = "\n".join(row("cards", g, r) for g, r in summary["cards"].items())
    rows8 = "\n".join(row("cards_fp8", g, r) for g, r in c8.items())
    stock = meta.get("stock", {})
    stock_rows = "\n".join(
        f"| {gib} GiB | {recipe} | " + (f"{r['e2e_s']} s, peak {r['peak_allocated_gib']} GiB ({r['note']})" if "e2e_s" in r
                                       else r.get("error", "")[:60]) + " |"
        for gib, recipes in stock.items() if isinstance(recipes, dict) for recipe, r in recipes.items())
    return f"""
## Small cards ({meta['run']}: {said(env['gpu'])}, {said(env['date'])}; the keys in latest.json's `cards` and `cards_fp8`)

`python3 bench/run.py build cards` (`bench/steps/cards.py`): another process holds all of the H200's memory but the
card's (../shared/gpu/hold_memory.py's method: compute and bandwidth stay the H200's, so compare the ratios); each
configuration in a fresh process plans for what it sees free, loads, warms up as a replica does (serve_config's
speed-ups: fused, compiled, CUDA graphs where the plan has room), then makes 6 images at 1024², 8 steps, the
median of the last 5; the prompt's embeddings are made on the CPU beforehand (these plans encode on the CPU
encoders), so e2e is denoise + decode + PNG. `peak` is what nvidia-smi showed for the process (its CUDA context
included), and the share of the card it used.

| card | plan | peak | denoise s | e2e s | e2e / resident bf16 on 24 GiB | the envelope: its batch at 1024² |  |
|---|---|---|---|---|---|---|---|
{rows}

FP8 weights as the memory plan (`generator.fp8: auto`):

| card | plan | peak | denoise s | e2e s | e2e / resident bf16 on 24 GiB | the envelope: its batch at 1024² |  |
|---|---|---|---|---|---|---|---|
{rows8}

The 16 GiB card's resident plan (estimated peak 14.23 GiB) ran out of memory in its warm-up in {meta['run']} with
PyTorch's default allocator; with expandable segments it served at 0.95 s ({c16_run(summary)}). GPU processes now set
`PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` unless the user set it (`model/machine.py`); the other cards ran
with the default allocator. The partial plans stream some main blocks through two GPU buffers
(`model/optim/streamer.py`) while the resident blocks compute. In {meta['run']} they streamed the last blocks, one after
another, and the copy engine idled behind the run of resident blocks; they now stream blocks spread among the
resident ones (`streamed_positions`), the first two prefetched for the next call. Measured again with that
(the rows marked `cards_partial`, each ratio against its own run's 24 GiB card): run60 (`python3 bench/run.py
build cards_partial cards_min`, 2026-12-06, an H100) took the 12 GiB card from 1.222x to 1.019x and FP8 at 8 GiB
from 0.847x to 0.769x, and left bf16 at 8 GiB at **1.624x**; run63 (`python3 bench/run.py cards_partial`, 2026-12-06,
another H100 host, the code unchanged there) measured 1.012x, 0.762x and **1.477x**. At 8 GiB bf16, 22 of 30 blocks
stream, 7.41 GiB a step, and the step is the copy: 0.163 s a step in run60 (49 GB/s) and 0.154 s in run63 (52 GB/s,
its resident step 0.0955 s): PCIe 5.0 x16's practical rate, which differs from host to host, decides whether the
1.6x target is met (run63: met; run60: not). Only fewer streamed bytes make it faster (FP8 weights: 0.76x).

The envelope column (run63 and run62, `_envelope` in bench/steps/cards.py): serve_config's largest batch, 4 images at
1024² in one batch, run twice and the second timed, as a request at the plan's envelope would be. On the bf16 plans
its peak is that of one image (the VAE decodes one image at a time, and its peak bounds the transformer's at batch
4), and at batch 4 the 8 GiB partial plan is as fast an image as resident (0.815 s against 0.81: four images' compute
hides the copies). **Two plans ran out of memory at their envelope**: FP8 partial at 8 GiB (21 resident blocks, est.
peak 7.42 of 7.49 GiB; it failed to allocate 656 MiB, one [4 x ~4200 tokens, 20480] bf16 tensor: the fused w1/w3
output) and the 4 GiB card's sequential plan (est. 3.44 of 3.49 GiB, eager: 328 MiB, a [4 x ~4200, 10240] tensor).
Their batch of one served (the timings above). A replica that meets this retries the batch one image at a time
(serving/generator.py's out-of-memory fallback, tested with injected failures, not measured here).

Why (run65, `envelopes`, below): on the whole GPU, each of these plans' batch of 4 peaked within or near its
estimated tensors (FP8 partial 6.61 GiB allocated against 6.67 estimated; the eager streamed plan 2.79 against 2.70),
but a process holds more than its tensors: nvidia-smi's peak less the CUDA context less torch's peak allocated was
0.72-0.79 GiB on the compiled plans (run63), more than the 0.75 GiB the plans kept for it at the FP8 plan's batch of
4, and 1.46 GiB on the eager streamed plan (run62). The plans then kept 1.0 GiB (1.5 GiB and 16 hidden-sized tensors
a token for the eager streamed plan), and run66 (`python3 bench/run.py build cards_partial`, 2026-12-06, an H200) ran
every envelope within its card: 12 GiB 310 MiB under it, 8 GiB bf16 (7 blocks) 434 MiB, 8 GiB FP8 (19 blocks) 234
MiB; and run67 (`python3 bench/run.py build preload_check cards_min_bf16`, the same H200) the smallest card, 5.0 GiB,
50 MiB under it. But with 7 blocks the 8 GiB bf16 card took **1.604x** there, just over its target.

Those runs, like every one before, ran the cards with PyTorch's default allocator, while a replica, the batch job and
the CLI use expandable segments (`model/machine.py`); the bench's children now do as they do. run68 (`python3
bench/run.py build cards_8_tight`, 2026-12-06, an H100: the 8 GiB plans made for 0.35 GiB more than the card had,
one more bf16 block and two more FP8 ones, each ratio against the same run's 24 GiB card) measured what a process holds
beyond its tensors with expandable segments: **0.36 GiB** on the partial bf16 plan at its envelope (0.72 with the
default allocator in run66) and 0.61 GiB on the FP8 one (1.0 in run66); both envelopes served, 470 and 284 MiB under
the card; the bf16 plan with 8 blocks took **1.531x**. The planner's reserves are now those measurements with about
0.4 GiB over them (planner.py): 0.75 GiB for bf16 plans, 1.0 for FP8 ones, and 0.5 GiB more where the allocator
has fixed segments (PyTorch's default, or a PYTORCH_CUDA_ALLOC_CONF without expandable segments). The 8 GiB card's
bf16 plan is then run68's (8 blocks, the row above; run69, `python3 bench/run.py build cards_min_bf16 cards_8`, an
H100, ran it as the planner now makes it: its envelope 7722 MiB again, e2e 1.377 s, that run's 24 GiB card not run),
its FP8 plan run66's (19 blocks), the 12 GiB card's 19 blocks as in run66. The streamed plan is the exception:
expandable segments don't shrink what it holds beyond its tensors (run69: 1.67 GiB at its envelope, torch's
reserved memory 1.44 GiB over its allocated, against 1.65 in run67; its 5.0 GiB card served the envelope 44 MiB under
the card, on the estimate's own margin). Its reserve is now 2.0 GiB, so the smallest workable card is 4.95 GiB free
(a 5.5 GiB card), 0.5 GiB more than run67 and run69 ran; not run on the GPU since. tests/model/test_planner.py holds
every plan to a measured envelope and every reserve to what the runs held beyond their tensors.

{_minimum(meta)}{_envelopes(meta)}Stock diffusers' low-VRAM recipes in the same way ({meta.get('stock_run')}, `python3 bench/run.py build cards_stock`;
one warm-up, median of 3, `enable_sequential_cpu_offload` one timed image):

| card | recipe | e2e |
|---|---|---|
{stock_rows}
"""


def _envelope(e: dict | None) -> str:
    """The plan's envelope (serve_config's max_batch_size at its plan_size, in one batch): its seconds and peak, its
    error, or that the run measured none (the runs before 2026-12-06)."""
    if not e:
        return "not measured"
    if e.get("error"):
        return f"**failed**: {e['error'][:80]}"
    return (f"{e['batch']} images: {e['seconds']} s ({round(e['seconds'] / e['batch'], 3)} s an image), peak "
            f"{e['peak_allocated_gib']} GiB allocated, {e['peak_mib']} MiB")


def _envelopes(meta: dict) -> str:
    """The envelopes step: each card's plan on the whole GPU, its peaks at batch 1, 2 and 4 against its estimate."""
    runs = meta.get("envelopes")
    if not runs:
        return ""
    rows = "".join(
        f"| {r.get('card_gib')} GiB | {r.get('plan')} {r.get('weights')} | {r.get('plan_peak_gib')} = weights "
        f"{r.get('plan_weights_gib')} + activations {r.get('plan_activations_gib')} + reserve | "
        f"{r.get('allocated_after_warmup_gib')} | {r.get('batch1_peak_allocated_gib')} / "
        f"{r.get('batch2_peak_allocated_gib')} / {r.get('batch4_peak_allocated_gib')} | {r.get('error') or ''} |\n"
        for r in runs.values())
    return f"""Each plan's peaks ({meta['envelopes_run']}, `python3 bench/run.py build envelopes`): the plan the engine makes
on each card, loaded on the whole GPU (so a batch that would not fit the card still runs and shows by how much its
estimate falls short), warmed as a replica warms, then batches of 1, 2 and 4 images at 1024², each run twice and the
second measured (GiB allocated; the plans as the planner made them then, with a 0.75 GiB reserve; the 12 GiB FP8
plan runs CUDA graphs, which add about 1.1 GiB at batch 4 inside the headroom the engine keeps for them):

| card | plan | its estimated peak | after the warm-up | peak at batch 1 / 2 / 4 | error |
|---|---|---|---|---|---|
{rows}
"""


def _minimum(meta: dict) -> str:
    """The smallest workable card (the cards_min step), bf16 and FP8."""
    if "minimum" not in meta:
        return ""

    def card(r: dict) -> str:
        if not r:
            return ""
        if r.get("error"):
            first = r["error"].strip().splitlines()[0]
            if first.startswith("PlanError"):
                return f"{r['card_gib']} GiB: refused at the start: {first[:160]}"
            return f"{r['card_gib']} GiB: {r.get('plan')} {r.get('weights')} **failed**: {first[:160]}"
        return (f"{r['card_gib']} GiB: {r['plan']} {r['weights']}, {r.get('blocks_resident')} resident / "
                f"{r.get('blocks_streamed')} streamed, peak {r['peak_mib']} MiB, e2e {r['e2e_s']} s; the envelope: "
                f"{_envelope(r.get('envelope'))}")

    compiled_stream = f"""
In {meta['minimum_run']} the card just above the minimum failed its warm-up: its plan streams every block with
diffusers' group offloading (`sequential`), and the engine compiled that transformer too, whose hooks torch.compile
can't trace. The engine now runs a streamed plan's transformer eagerly (`Engine._accelerate`; tested on the CPU,
tests/model/test_engine.py); **not re-measured on a GPU** (the session's device time ran out):
`python3 bench/run.py build cards_min_bf16`.
"""
    rows = "\n".join(f"| {'bf16' if fp8 == 'off' else 'FP8 (`fp8: auto`)'} | {r.get('planner_smallest_free_gib')} GiB | "
                     f"{card(r.get('at_minimum', {}))} | {card(r.get('below', {}))} |"
                     for fp8, r in meta["minimum"].items())
    return f"""
The smallest workable card ({meta['minimum_run']}, `python3 bench/run.py build cards_min`): the planner's minimum free
memory for 1024², batch 4 (its error at 1 MiB names it), then a card just above it (the minimum plus the CUDA
context's 0.5 GiB, rounded up to 0.25 GiB) and one 0.75 GiB below that, each in a fresh process as above: the first
must serve, the second must refuse at the start with the planner's error, never run out of memory. FP8 weights
never stream, so at the minimum the FP8 setting plans bf16 streaming too.

| weights | planner's minimum | card just above it | card 0.75 GiB below |
|---|---|---|---|
{rows}
{compiled_stream if any("torch.compiler.disable" in (r.get("at_minimum") or {}).get("error", "")
                         for r in meta["minimum"].values()) else ""}
"""


def c16_run(summary: dict) -> str:
    return summary["cards"].get("16", {}).get("run", "")


def render_streaming(x: dict) -> str:
    """The streaming section (bench/steps/streaming.py), from its own run."""
    env, s = x["environment"], x["step"]
    said = lambda field: field["value"] if isinstance(field, dict) else field
    return f"""
## Streaming with previews ({x['run']}: {said(env['gpu'])}, {said(env['date'])}, torch {said(env['torch'])}; the keys in latest.json's `streaming`)

`python3 bench/run.py build streaming` (`bench/steps/streaming.py`): the Serve app with serve_config.yaml's generator
(one replica, {s['size']}, 8 steps, compiled, CUDA graphs), requests to `/v1/images/generations` streamed with
`partial_images: {s['partial_images']}` (previews from the latents' clean estimate projected to RGB, PNG, a quarter
of the image's side; no VAE decode) against the same requests not streamed, in the same run:

| | not streamed | streamed, {s['partial_images']} previews |
|---|---|---|
| throughput, 64 requests from 16 clients (two rounds, interleaved) | {', '.join(map(str, s['plain_throughput_img_s']))} img/s | {', '.join(map(str, s['streamed_throughput_img_s']))} img/s |
| one request in flight: the image (p50 of 15) | {s['plain_p50_s']} s | {s['streamed_p50_s']} s |
| one request in flight: the first preview (p50 of 15) | | {s['first_preview_s']} s |

`preview_throughput_ratio` {x['preview_throughput_ratio']} (streamed over not streamed; the target was >= 0.95),
`first_preview_s` {x['first_preview_s']}. Not measured: previews on the partial (streamed-block) and offload plans,
where the GPU's step is longer and the previews' share smaller; the jobs API's overhead (it runs the same calls).
"""


def _from_constructor(start: dict | None) -> float | None:
    """A start's seconds from its worker's constructor: without "process" (from the process's start, which for a worker
    Ray kept idle in its pool is that worker's age)."""
    return round(start["total_s"] - start["stages_s"].get("process", 0), 2) if start else None


def _scaleout_rows(x: dict) -> str:
    stages = lambda start: ", ".join(f"{k} {v}" for k, v in (start or {}).get("stages_s", {}).items())
    st = x["stages"]
    cmd, stop = x.get("command_start") or {}, x.get("stop_s") or {}  # (not recorded by the runs before them: None)
    said = lambda c: f"{c['up_s']}: " + ", ".join(f"{k} {v}" for k, v in c["stages_s"].items()) if c else None
    return f"""| | seconds |
|---|---|
| app start to /readyz 200, cold node / warm node (`app_ready_cold_s` / `app_ready_warm_s`; target warm <= 30) | {x['app_ready_cold_s']} / {x['app_ready_warm_s']} |
| the generator's own start, cold / warm | {(st['cold_start'] or {}).get('total_s')}: {stages(st['cold_start'])} / {(st['warm_start'] or {}).get('total_s')}: {stages(st['warm_start'])} |
| the command's own account of the start (its "up" line), cold / warm | {said(cmd.get('cold'))} / {said(cmd.get('warm'))} |
| Ctrl-C to the command's exit, cold / warm | {stop.get('cold')} / {stop.get('warm')} |
| a generator replica SIGKILLed under light load: the replacement ready (`replica_ready_s`; target: serving <= 10 after its process starts) / the first image after the kill | {x['replica_ready_s']} / {x['first_image_after_kill_s']} ({x['lost']} of {x['requests']} requests lost) |
| the replacement's own start (process: the age of the worker process Ray gave it, which may have waited in Ray's pool of idle workers) / from its constructor | {(st['replacement'] or {}).get('total_s')}: {stages(st['replacement'])} / {_from_constructor(st['replacement'])} |
| `min_replicas: 0`: the app ready with no generator / the first request (`first_request_from_zero_s`; target <= 20) | {x['app_ready_scaled_to_zero_s']} / {x['first_request_from_zero_s']} |
| the replica it started / from its constructor | {(st['from_zero'] or {}).get('total_s')}: {stages(st['from_zero'])} / {_from_constructor(st['from_zero'])} |
""" + _without_preload(x)


def _without_preload(x: dict) -> str:
    """The rows of the scaleout_no_preload step (ZIMAGE_PRELOAD=0, the same run), and Ray's workers before each kill."""
    base = x.get("without_preload")
    if not base:
        return ""
    stages = lambda start: ", ".join(f"{k} {v}" for k, v in (start or {}).get("stages_s", {}).items())
    workers = lambda w: (f"{w['workers']} workers, {w['with_torch']} with torch loaded; {w['rss_mib']} MiB resident, "
                         f"{w['rss_with_torch_mib']} of it theirs") if w else None
    rep = base["replacement"] or {}
    return f"""| the same, Ray's idle workers importing nothing ahead (`ZIMAGE_PRELOAD=0`, step `scaleout_no_preload`, {base['run']}): the replacement ready / the first image after the kill | {base['replica_ready_s']} / {base['first_image_after_kill_s']} ({base['lost']} of {base['requests']} requests lost) |
| its own start / from its constructor | {rep.get('total_s')}: {stages(rep)} / {_from_constructor(rep) if rep else None} |
| Ray's worker processes before the kill, with the preload / without | {workers(x.get('ray_workers_before_kill'))} / {workers(base.get('ray_workers_before_kill'))} |
""" + _preload_check(x.get("preload_check"))


def _preload_check(c: dict | None) -> str:
    """The preload_check step's row: the GPUs a worker's CUDA sees once CUDA_VISIBLE_DEVICES is set to none after a
    preload (0: the preload initialised no CUDA), against no preload and against CUDA initialised first."""
    if not c:
        return ""
    seen = lambda k: (c.get(k) or {}).get("devices_seen")
    return (f"| a preload initialises no CUDA (step `preload_check`, {c['run']}): the GPUs seen after "
            f"CUDA_VISIBLE_DEVICES is set to none, after a preload / no preload / CUDA initialised first (the control) "
            f"| {seen('preload')} / {seen('none')} / {seen('cuda_first')} |\n")


def _warm_start_cpu(w: dict) -> str:
    """bench/warm_start_cpu.py's comparison: a node's first (cold) and a later (warm) replica's compiled warm-up, base
    revision against ours."""
    def row(r: dict, kind: str) -> str:
        x = r[kind]
        runs = " and ".join(str(run[kind]["warmup_s"]) for run in r.get("runs", []))
        then = x.get("requests_then")
        return (f"| {r['revision']} | {kind} | {x.get('process_s')} | {x['warmup_s']} ({runs}) | {x['compile_s']} | {x['graphs']} | "
                + " ".join(f"({b},{t}) {sec}" for b, t, sec in x["calls"])
                + (f" | {then['graphs_compiled']} graphs, {then['seconds']} s |" if then else " | |"))

    kinds = [k for k in ("cold", "warm") if k in w["base"] and k in w["ours"]]
    ratios = ", ".join(f"{k} **{w[f'{k}_warmup_ratio']}**" for k in kinds if f"{k}_warmup_ratio" in w)
    return f"""
A replica's compiled warm-up on this CPU machine ({w['machine']}, {w['date']}; `{w['command']}`): the tiny
checkpoint, the production speed-ups, three replicas started one after the other on one empty compile cache (the
GPU's `scaleout` starts in miniature; CPU seconds, not the GPU's): the first (cold) and the third (warm; the second
may still compile what the first compiled with static shapes), best of two runs taken in turn, each revision its own
warm-up. Ours / base: {ratios}. The base ({w['base']['revision']}) compiles the blocks through `torch.compile`'s
regional path, from the compile cache on a warm node; ours saves their compiled code on the node's first replica
(the "record" and "save compiled" calls: an eager pass recording one call of each block kind, then
`aot_compile`) and every replica runs it, later ones loading it at their start (model/optim/aot.py). Its graphs
count what Dynamo traced: the `aot_compile`s and the VAE decoder's norms; "of it compiling" is torch.compile's own
count of seconds, which leaves the `aot_compile`s out (they are the "save compiled" call). Process s: from the replica's process start
to the end of its warm-up (imports, load, speed-ups, warm-up), the best run's.

| revision | replica | process s | warm-up s (runs) | of it compiling | graphs | per call (batch, caption tokens) s | requests after it: compiled |
|---|---|---|---|---|---|---|---|
""" + "\n".join(row(r, k) for k in kinds for r in (w["base"], w["ours"])) + "\n"


def _aot_blocks_cpu(a: dict) -> str:
    """bench/aot_blocks_cpu.py's experiment: the blocks' compiled code loaded without Dynamo, against today's path."""
    best = lambda mode: min(a[f"warm_{mode}"], key=lambda r: r["first_pass_s"])
    c, o = best("compile"), best("aot")
    runs = lambda mode: " and ".join(str(r["first_pass_s"]) for r in a[f"warm_{mode}"])
    return f"""
**The experiment that led to model/optim/aot.py** ({a['date']}; `{a['command']}`, {a['machine']}): the transformer blocks' compiled
code saved ahead of time (torch's `aot_compile`, one artefact per block variant, {', '.join(f"{k} {v} s" for k, v in
a['save']['aot_compile_s'].items())} to make) and loaded in a fresh process, against `compile_repeated_blocks` on
the warm compile cache, over the same {c['block_calls']} block calls (batches of 1 and 2 with captions of 16, 80, and
5 and 40 tokens; {c['block_calls_left_out']} calls of the unmodulated blocks without a mask, which have no artefact,
left out of both): first pass, best of two fresh processes each, {o['first_pass_s']} s against {c['first_pass_s']} s
(**{a['first_pass_ratio_aot_to_compile']}x**; runs {runs('aot')} against {runs('compile')}; Dynamo traced
{o['graphs_traced']} graphs against {c['graphs_traced']}), a second pass {o['second_pass_ms']} ms against
{c['second_pass_ms']} ms, the largest difference from eager {o['max_abs_diff_vs_eager']:.1e} against
{c['max_abs_diff_vs_eager']:.1e}. The artefacts drop the guards on globals (the attention backend, the processor's
type) and don't check the traced source: the engine's loader keys their directory by those. Untested on a GPU.
"""


def _app_start_cpu(a: dict) -> str:
    """bench/app_start_cpu.py's comparison: the whole app's start to /readyz 200 on the CPU, ours against a base
    revision (when it ran with --base) and Ray Serve's `serve run` of the same application."""
    import statistics

    names = {"base": "`zimage-serve serve`, base", "ours": "`zimage-serve serve`, ours", "serve_run": "`serve run`, ours"}
    rows = ""
    for key in ("base", "ours", "serve_run"):
        if key not in a:
            continue
        r = a[key]
        gen = [run["generator_start"]["total_s"] for run in r["runs"] if run.get("generator_start")]
        lines = [run for run in r["runs"] if run.get("stages_s")]  # ours: its "up ..." line
        mid = sorted(lines, key=lambda run: run["up_s"])[len(lines) // 2] if lines else None
        said = (f"up {mid['up_s']}s: " + ", ".join(f"{k} {v}s" for k, v in mid["stages_s"].items())) if mid else ""
        rows += (f"| {names[key]} | {r['revision']} | **{r['median_ready_s']}** | "
                 + ", ".join(str(run["ready_s"]) for run in r["runs"])
                 + f" | {round(statistics.median(gen), 2) if gen else None} | {r.get('median_stop_s')} | {said} |\n")
    against = {"ours_to_base": "the base", "ours_to_serve_run": "`serve run`"}
    ratios = "; ".join(f"ours / {against[k]} **{a[k]}**" for k in against if k in a)
    base = ("The base starts Ray with a runtime_env (the workers' logging hook), so every worker's start (Serve's "
            "controller and proxy, the app's build, each replica) waits on Ray's runtime-env agent; ours hands the "
            "hook to a Ray it starts through the environment (arguments.ray_init_options). "
            if "base" in a else "")
    drain = ("ours drains each replica, which the base's replicas checked for their last requests every 2 s (Serve's "
             "default, also the least a stop took, one deployment after another) and ours every 0.2 s "
             "(settings.DRAIN_POLL_S)" if "base" in a else "ours drains each replica (settings.DRAIN_POLL_S)")
    return f"""
The whole app's start on this CPU machine ({a['machine']}, {a['date']}; `{a['command']}`): seconds from the command
to /readyz 200, the tiny checkpoint, each kind started in turn ({len(a['ours']['runs'])} times, a fresh local Ray each).
What differs here is Ray's and Serve's start and the replicas' processes, not the model's load. {base}Stop: SIGTERM
to the command's exit; {drain}; `serve run` exits on SIGTERM without shutting Serve down, so the stops don't
compare like for like. Medians; {ratios}.

| command | revision | ready s (median) | each start | the generator's own start (median) | stop s (median) | our command's "up" line (the median one) |
|---|---|---|---|---|---|---|
{rows}"""


def render_scaleout(gpu: dict | None, cpu: dict | None, warm_cpu: dict | None = None,
                    aot_cpu: dict | None = None, app_cpu: dict | None = None) -> str:
    """The scale-out section (issue 23, bench/steps/scaleout.py): the GPU's figures once measured, the same steps
    on a CPU machine with the tiny checkpoint, bench/app_start_cpu.py's comparison of the whole app's start,
    bench/warm_start_cpu.py's of a warm replica's warm-up and bench/aot_blocks_cpu.py's experiment."""
    how = """The steps (`bench/steps/scaleout.py`) start the production app as a user does (`zimage-serve serve --config` on
serve_config.yaml, full-size random weights, the jobs API off, only our dependencies importable and bytecode kept,
as in our image): `scaleout_cold` on a cold node (empty compile and weights caches, `ZIMAGE_WEIGHTS_CACHE=1`, the
checkpoint dropped from the page cache), `scaleout` on the warm node it left, SIGKILLing the generator replica under
light load, and `scaleout_zero` with `min_replicas: 0`. Each start's stages are the generator's own report
(`/readyz`'s `start`, model/startup.py). `startup_profile` adds import times by module and the transformer's weights
read to the GPU as safetensors does and as model/prefetch.py does, alone and beside the imports."""
    out = "\n## Scale-out and scale from zero (issue 23)\n\n" + how + "\n"
    if gpu:
        where = ", ".join(f"{run}: {gpu.get('gpus', {}).get(run) or 'GPU not recorded'}" for run in gpu["runs"])
        out += f"\nOn the GPU machine ({where}; the keys in latest.json's `scaleout`; None: not measured):\n\n" + _scaleout_rows(gpu)
        if len(gpu.get("history", [])) > 1:
            out += ("\nEvery GPU run of these steps (the blocks' saved compiled code: saved by the cold start and "
                    "loaded by the later ones, none saved, or not in the code yet):\n\n"
                    "| run | GPU | saved code | replacement ready | app ready warm / cold | first request from zero |\n"
                    "|---|---|---|---|---|---|\n")
            out += "".join(f"| {h['run']} | {h['gpu']} | {h['saved_code']} | {h['replica_ready_s']} | "
                           f"{h['app_ready_warm_s']} / {h['app_ready_cold_s']} | {h['first_request_from_zero_s']} |\n"
                           for h in gpu["history"])
        rep = gpu["stages"].get("replacement")
        if rep and rep["stages_s"].get("process", 0) > rep["total_s"] / 2:  # a worker that waited in Ray's pool
            st = rep["stages_s"]
            out += f"""
Reading the replacement's start: its worker process was {st['process']} s old when its constructor ran: Ray handed
the replica a worker it had started earlier and kept idle, so "process" is that worker's age, not a stage of this
start. From its constructor it was ready in {_from_constructor(rep)} s (imports {st['imports']},
load {st['load']}, speed-ups {st['speedups']}, warm-up {st['warmup']}), {gpu['replica_ready_s']} s after the kill (Serve
notices a dead replica by its health check, every 2 s, then asks Ray for a new one), and it served the first image
{gpu['first_image_after_kill_s']} s after the kill. The text encoder, added after it was ready, took
{rep['details'].get('text_encoder_after_ready_s')} s more, in the background.
"""
            if "preload_s" in rep["details"]:
                out += f"""Its worker had imported the model layer while it waited (model/preload.py, `ZIMAGE_PRELOAD`:
{rep['details']['preload_s']} s of imports in its own thread; the replica waited {rep['details']['preload_waited_s']} s
for the end of them). The cold node's start (`scaleout_cold`) is run62's, on an H100, from before the preload.
"""
            if "warmup_after_ready_s" in rep["details"]:
                out += f"""Its warm-up ran its first call before it was ready and the others after, beside requests
({rep['details']['warmup_after_ready_s']} s; its blocks ran saved compiled code, so those calls only capture CUDA graphs
for their shapes): {rep['details'].get('warmup_calls')}.
"""
        prof = gpu.get("startup_profile")
        if prof:
            reads = prof["reads"]
            row = lambda name: f"{name} {reads[name]['seconds']} s ({reads[name]['gib_per_s']} GiB/s)" if name in reads else ""
            out += f"""
Where a replica's imports go ({prof['run']}, `startup_profile`: `python -X importtime` of what a replica imports, in a
fresh process, bytecode kept): {prof['importtime_total_s']} s in all; with what they import, """ + ", ".join(
                f"`{name}` {cum}" for _, cum, _, name in prof["by_cumulative"][:8]) + "; by their own time, " + ", ".join(
                f"`{name}` {own}" for own, _, _, name in prof["by_self"][:6]) + (
                f""". With the installed packages' import names read from the node's cache, as a replica imports them
(model/package_map.py): {prof['importtime_remembered_total_s']} s in all; by their own time, """ + ", ".join(
                f"`{name}` {own}" for own, _, _, name in prof["by_self_remembered"][:6])
                if "importtime_remembered_total_s" in prof else "") + f""". The transformer's weights to the GPU,
each way in a fresh process: {row('safetensors')} as safetensors reads them, {row('reader8')} with model/prefetch.py's 8
threads, {row('reader16')} with 16; diffusers' and transformers' imports alone {reads.get('imports_alone', {}).get('imports_s')} s,
beside the 8 threads' reads {reads.get('reader8_with_imports', {}).get('imports_s')} s (the reads then ending at
{reads.get('reader8_with_imports', {}).get('seconds')} s).
"""
        r = gpu.get("reader_check")
        if r:
            out += f"""
The weights reader (model/prefetch.py) checked on the GPU ({r['run']}, `reader_check`): the full-size transformer read
by it (the fp32 files converted to bf16 on the GPU, 8 threads, page cache warm) in {r['reader_s']} s against
diffusers' `from_pretrained(dtype=bf16, device_map=cuda)` in {r['from_pretrained_s']} s; {r['tensors']} tensors,
{'every one bit for bit equal' if r['equal'] else f"{r['differ']} differ ({r['differ_names']})"}.
"""
    else:
        out += """
**Not measured on a GPU yet**: no device was lent to the session that wrote these steps. The device command to run:
`python3 bench/run.py build startup_profile scaleout_cold scaleout scaleout_zero` (split after scaleout_cold if it
nears 10 minutes; scaleout needs the node scaleout_cold left). Until then the targets (a replica serving <= 10 s
after its process starts, the app ready <= 30 s on a warm node, the first request from zero <= 20 s) are unmeasured.
"""
    if cpu:
        out += f"""
The same steps on this CPU machine ({cpu['machine']}, {cpu['date']}; `{cpu['command']}`), the tiny checkpoint on
the CPU: the code paths and Serve's own delays, not the GPU's times (the bench step's smoke test; latest.json's
`scaleout_cpu_smoke`):

""" + _scaleout_rows(cpu)
    if app_cpu:
        out += _app_start_cpu(app_cpu)
    if warm_cpu and "base" in warm_cpu:
        out += _warm_start_cpu(warm_cpu)
    if aot_cpu:
        out += _aot_blocks_cpu(aot_cpu)
    return out
