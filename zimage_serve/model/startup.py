"""How a GPU worker's start went, stage by stage: what /readyz and the metrics report for a generator replica's
last start, and the batch job's GPU actors log.

Stages, in order, each the wall-clock seconds it took (they add up to the start's total):

| stage | what |
|---|---|
| process | from this process's start to the worker's constructor: Ray's worker, Python, the deployment's imports |
| imports | torch, then diffusers and transformers (the transformer's weights are being read meanwhile); on a worker that preloaded them (preload.py), what was left of its preload |
| resolve | finding the checkpoint, downloading it on a node that has none |
| plan | adapters and ControlNet checked, the GPU measured, the staging plan made |
| load | what was left of reading the weights once the imports were done, the other components, the weights cache written (a cold node) |
| speedups | fusing, LoRA slots, FP8, wrapping for compile (or loading the blocks' saved compiled code) and CUDA graphs (compiling itself happens in the warm-up) |
| warmup | the warm-up calls: compiling (or loading compiled code from the cache), capturing CUDA graphs, running; on a node's first replica, the blocks' code compiled ahead of time and saved first (optim/aot.py) |

``details`` adds where the load and the warm-up went (the reads in the background, compile and capture seconds).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger("zimage_serve")


def process_age_s() -> float | None:
    """Seconds since this process started (Linux's /proc), or None where that can't be read."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class StartClock:
    """The stages of one start (see the module's table), timed as they run; made when the worker's constructor begins."""

    def __init__(self):
        self.stages: dict[str, float] = {}
        self.details: dict[str, float | int | str] = {}
        process = process_age_s()
        if process is not None:
            self.stages["process"] = process
        self._t0 = time.perf_counter()
        self.finished_at: float | None = None

    @contextmanager
    def stage(self, name: str, detail: str | None = None):
        """Time the block as (part of) stage ``name``: a stage entered twice adds up; ``detail``: its seconds in
        the details too, under that name."""
        t = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t
            self.stages[name] = self.stages.get(name, 0.0) + seconds
            if detail is not None:
                self.details[detail] = seconds

    def finish(self) -> "StartClock":
        self.finished_at = time.time()
        return self

    def report(self) -> dict:
        """The start as /readyz shows it: {total_s, stages_s, details}, seconds rounded to hundredths."""
        stages = {name: round(s, 2) for name, s in self.stages.items()}
        return {"total_s": round(sum(self.stages.values()), 2), "stages_s": stages,
                "details": {k: round(v, 2) if isinstance(v, float) else v for k, v in self.details.items()},
                **({"ready_at": self.finished_at} if self.finished_at else {})}


def compile_seconds() -> float:
    """Seconds this process has spent compiling with torch.compile (Dynamo's tracing and Inductor's compile, or
    loading its result from the cache); 0 when nothing compiled."""
    utils = sys.modules.get("torch._dynamo.utils")  # loaded only where something compiled
    if utils is None:
        return 0.0
    return float(sum(utils.compilation_time_metrics.get("_compile.compile_inner", ())))


def compiled_graphs() -> int:
    """Graphs torch.compile has made (or loaded from its cache) in this process, Dynamo's count; 0 when nothing
    compiled. One made after the warm-up is a recompile a request waited for."""
    utils = sys.modules.get("torch._dynamo.utils")
    return 0 if utils is None else int(utils.counters["stats"].get("unique_graphs", 0))


@dataclass
class Started:
    """What :func:`start_engine` made: the engine, and the adapters and ControlNet it checked on the way."""

    engine: object  # engine.Engine
    adapters: dict  # {name: the adapter's weights, read and checked (adapters.AdapterWeights)}
    adapter_errors: dict  # {name: why it can't be served}
    controlnet: object | None  # controlnet.ControlNetSource
    text_encoder_later: bool = False  # the plan encodes on this GPU, and the encoder is for the caller to add (later)


def start_engine(model: str, workload, clock: StartClock, *, gpu: bool | None = None, policy: str = "auto",
                 encode_on: str = "cpu", device: str | None = None, fp8: bool | str = False,
                 adapters: dict[str, str] | None = None, adapters_held: int | None = None,
                 controlnet: str | None = None, speedups: dict | None = None, checked=None,
                 text_encoder_later: bool = False) -> Started:
    """A GPU worker's engine (a generator replica's, a batch job actor's), stage by stage on ``clock``: ``model``
    resolved (``gpu``: whether ``auto`` may be the hub model; default: whether this process has a GPU), its
    ``adapters`` ({name: source}) read and checked, room kept for ``adapters_held`` of them (default: all) in the
    plan for ``workload``, the transformer's weights read in threads while diffusers and transformers are imported,
    then loaded with ``speedups`` (Engine.load's). The text encoder is loaded where the plan encodes on the GPU.
    ``checked(adapters, adapter_errors, controlnet)``, when given, is told of those as soon as they are checked
    (before the plan and the load, which may still fail: a replica reports them either way). ``text_encoder_later``:
    a text encoder the plan keeps resident is left out of the start, for the caller to add once it serves
    (:func:`add_text_encoder`; ``Started.text_encoder_later`` says whether there is one to add)."""
    with clock.stage("imports", "imports_torch_s"):  # torch (and the model layer's light modules)
        # after this worker's preload (its imports are then done), before diffusers and transformers are imported:
        # their scans of installed packages
        clock.details.update(remember_installed_packages())
        from .loader import start_reading  # this module loads no torch: the GPU worker does, here
        from .machine import gpu_free_bytes, plan_for_this_machine, prepare_allocator
        from .sources import resolve

    prepare_allocator()  # before this process's first CUDA allocation
    with clock.stage("resolve"):
        source = resolve(model, gpu=gpu if gpu is not None else gpu_free_bytes(device) is not None)
    with clock.stage("plan"):
        spec, reserve, weights, errors = None, 0, {}, {}
        if adapters:
            from .adapters import read_adapters, slot_reserve_bytes, slot_spec, transformer_shapes  # adapters served

            shapes = transformer_shapes(source.path)
            weights, errors = read_adapters(adapters, shapes)
            if weights:  # the LoRA slots that fit them all, and room for the adapters held at once
                spec = slot_spec(list(weights.values()))
                reserve = slot_reserve_bytes(spec, shapes, min(adapters_held or len(weights), len(weights)))
        cn = None
        if controlnet:
            from .controlnet import find_controlnet  # a ControlNet served

            cn = find_controlnet(controlnet)
        if checked is not None:
            checked(weights, errors, cn)
        plan = plan_for_this_machine(source, workload, policy, encode_on, device, reserve_bytes=reserve, controlnet=cn,
                                     fp8=fp8,  # FP8 weights where the plan says
                                     partial_ok=spec is None,  # LoRA slots need every block resident
                                     compiled=bool((speedups or {}).get("compile")))
        transformer = start_reading(source, plan)  # in threads, from now: beside the imports below
    with clock.stage("imports", "imports_diffusers_s"):  # (beside the transformer's reads)
        from .engine import Engine  # diffusers and transformers

    later = text_encoder_later and plan.encode_on == "gpu" and plan.text_encoder_stays
    engine = Engine.load(source, plan, with_text_encoder=plan.encode_on == "gpu" and not later, speedups=speedups,
                         lora=spec, controlnet=cn, transformer=transformer, clock=clock)
    return Started(engine, weights, errors, cn, later)


def add_text_encoder(engine, beside=None) -> float:
    """Load the text encoder of an engine started without it (``start_engine(text_encoder_later=True)``) where the
    plan keeps it ("gpu" or "cpu": an offload plan's hooks are made with the others at the load), and start encoding
    with it; the seconds it took. Beside batches, ``beside`` is the lock they hold (loader.load_text_encoder's): they
    use the encoder only through ``Engine.encode``, and it is set once loaded."""
    from .encoding import PromptEncoder  # (see start_engine)
    from .loader import load_text_encoder

    if not engine.plan.text_encoder_stays:
        raise ValueError(f"the {engine.plan.kind} plan's text encoder is loaded with the rest (Engine.load)")
    if engine.encoder is not None:
        return 0.0
    t0 = time.perf_counter()
    model, tokenizer = load_text_encoder(engine.source, engine.device if engine.plan.text_encoder == "gpu" else "cpu",
                                         engine.loaded.dtype, beside)
    engine.loaded.text_model, engine.loaded.tokenizer = model, tokenizer
    engine.encoder = PromptEncoder(model, tokenizer)
    return time.perf_counter() - t0


def remember_installed_packages(wait: bool = True) -> dict:
    """The installed packages' import names from the node's cache (package_map.py), for this process's imports;
    first (``wait``) the end of this worker's preload, if one started (preload.py: its details, for a start's)."""
    from ..settings import environment  # (this module's imports stay light: see start_engine)
    from .package_map import remember_package_map as remember
    from .preload import wait as wait_for_preload

    preloaded = wait_for_preload() if wait else {}
    remember(environment().cache_dir / "imports")
    return preloaded


@dataclass
class WarmUp:
    """What :func:`warm_up` did: its seconds, each call's (batch, caption tokens, seconds[, "controlnet"]), and how
    many of the seconds went to compiling and to capturing CUDA graphs."""

    seconds: float
    calls: list
    compile_s: float
    cuda_graph_capture_s: float
    saved: dict | None = None  # {block kind: seconds}: the blocks' compiled code this warm-up saved (the node's first replica)
    rest: list = field(default_factory=list)  # the calls left for after the start (warm_up's ``later``): functions


def _save_compiled_blocks(engine, record) -> dict | None:
    """On the node's first replica (compile_artifacts, and nothing recorded under the engine's directory yet):
    ``record()`` the block calls (an eager pass, optim/aot.py's Recorder), compile and save their code for the next
    replicas; then, on any replica whose blocks don't run saved code yet (the first, or one that started while the
    first was saving), load it, as the next replicas will at their start. Before anything compiled the blocks: the
    warm-up's first compiled call comes after. {block kind: seconds} saved here, or None."""
    import torch  # (see start_engine)

    from .optim import aot  # (see warm_up)
    from .optim.aot_key import call_threads

    transformer, directory, saved = engine.pipe.transformer, engine.artefacts_dir, None
    if aot.needs_recording(directory, transformer):
        failed = None
        try:
            # at the CPU threads the loads will call it at (aot_key.call_threads: decided by the transformer)
            saved = aot.save(record(), directory, engine.compile_mode, threads=call_threads(transformer))
        except torch.AcceleratorError:  # the GPU itself failed: no replica can go on from here
            raise
        except Exception as e:  # (out of memory on a card with little room, most likely): an optimization, not a
            failed = e  # reason not to serve; a later replica tries again
        if failed is not None:
            log.warning("the blocks' compiled code was not saved (%s: %s); they compile as usual",
                        type(failed).__name__, str(failed)[:300],
                        exc_info=not isinstance(failed, torch.OutOfMemoryError))
            del failed
            torch.cuda.empty_cache()
        elif saved:
            log.info("saved the compiled code of %s to %s (seconds)", saved, directory)
    if aot.saved_variants(directory) - aot.loaded_variants(transformer):  # (saved here, or by another meanwhile)
        loaded = aot.load(transformer, directory, engine.compile_mode)
        if loaded and "loaded" not in engine.speedups["compile"]:
            engine.speedups["compile"] += f", saved code of {len(loaded)} block kinds loaded"
    return saved


def warm_up(engine, width: int, height: int, batch_sizes=(1,), steps: int = 1, caption_tokens=(16, 80),
            later: bool = False) -> WarmUp:
    """Run ``engine`` once per batch size and prompt length (compiles, autotunes, captures CUDA graphs), with its
    ControlNet too when one is served. Two prompt lengths make torch.compile build its dynamic-shape kernels here,
    not on the first request whose prompt length differs; a batch of both lengths (its captions padded to the
    longest, with a mask: graphs of their own) here, not on the first batch of prompts of different lengths. One
    step is enough: later steps change no shape (/readyz counts what compiles after the warm-up). Only the first
    call decodes (the VAE decodes one image at a time, whatever the batch: its compiled decoder is warm after one).

    When the engine's blocks' compiled code is to be saved (``compile_artifacts``, and nothing recorded for blocks
    like these on the node yet: its first replica), a first, eager pass records one call of each block kind
    (optim/aot.py): one step at the largest batch, prompts of equal and of different lengths; the code compiled
    out of them is saved (``saved``), and the calls after run it, as the next replicas will.

    ``later``: when every block variant runs saved compiled code and no ControlNet is served (nothing is left to
    compile but the VAE, which the first call compiles), only the first call runs here, and the others are left in
    ``WarmUp.rest`` for a replica to run once it serves (:func:`finish_start_in_background`): they only capture CUDA
    graphs for their shapes, as a request of a new shape does. Otherwise every call runs here."""
    import torch  # (see start_engine)

    from ..core.pixels import Pixels
    from ..core.request import GenerationRequest
    from .engine import Job
    from .optim.graphs import capture_seconds

    t0 = time.perf_counter()
    compiled, captured = compile_seconds(), capture_seconds(engine.pipe.transformer)
    hidden = engine.pipe.transformer.config.cap_feat_dim
    calls = []

    def jobs(per_job, image=None):
        return [Job(GenerationRequest("warm-up", seed=i, width=width, height=height, steps=steps, control_image=image),
                    torch.zeros(tokens, hidden)) for i, tokens in enumerate(per_job)]

    def record() -> dict:  # one call of each block kind, eagerly (see _save_compiled_blocks)
        from .optim import aot  # (the blocks' compiled code, saved per node)

        n, lengths = max(batch_sizes), sorted(set(caption_tokens))
        batches = [(lengths[0],) * n]
        if n > 1 and len(lengths) > 1:
            batches.append(tuple(lengths[i % len(lengths)] for i in range(n)))
        t = time.perf_counter()
        # block by block: no CUDA graph captured from eager kernels
        with torch.compiler.set_stance("force_eager"), engine.blocks_one_by_one(), \
                aot.Recorder(engine.pipe.transformer) as recorder:
            for per_job in batches:
                engine.generate(jobs(per_job))
        calls.append((n, "record", round(time.perf_counter() - t, 2)))
        return recorder.examples

    saved = None
    if engine.artefacts_dir is not None:
        t = time.perf_counter()
        saved = _save_compiled_blocks(engine, record)
        if saved is not None:
            calls.append((max(batch_sizes), "save compiled", round(time.perf_counter() - t - calls[-1][2], 2)))
    control = None
    if engine.controlnet is not None:  # the ControlNet's path too (its blocks compile on their first call)
        control = Pixels("RGB", width, height, bytes(width * height * 3))
    todo = []  # (batch size, each job's caption tokens, control image or None)
    for n in batch_sizes:
        lengths = [(tokens,) * n for tokens in caption_tokens]  # each job's caption tokens
        if n > 1 and len(set(caption_tokens)) > 1:  # prompts of different lengths in one batch
            lengths.append(tuple(caption_tokens[i % len(caption_tokens)] for i in range(n)))
        todo += [(n, per_job, image) for per_job in lengths
                 for image in ((None, control) if control is not None else (None,))]

    def call(n, per_job, image, decode=False) -> None:
        t = time.perf_counter()
        engine.generate(jobs(per_job, image), decode=decode)  # (the VAE decodes one image at a time: once is enough)
        label = per_job[0] if len(set(per_job)) == 1 else "/".join(map(str, per_job))
        calls.append((n, label, round(time.perf_counter() - t, 2)) + (("controlnet",) if image else ()))

    from .optim import aot  # (see _save_compiled_blocks)

    if todo:
        call(*todo[0], decode=True)
    rest = [lambda c=c: call(*c) for c in todo[1:]]
    if not (later and engine.controlnet is None and aot.runs_saved_code_only(engine.pipe.transformer)):
        for run in rest:
            run()
        rest = []
    log.info("warm-up calls (batch, caption tokens, seconds): %s%s", calls,
             f"; {len(rest)} more after the start" if rest else "")
    return WarmUp(time.perf_counter() - t0, calls, compile_seconds() - compiled,
                  capture_seconds(engine.pipe.transformer) - captured, saved, rest)


def _ignore(*_) -> None:
    pass


def finish_start_in_background(engine, beside, warm: WarmUp | None = None, warmed=_ignore, text_encoder: bool = False,
                                added=_ignore) -> None:
    """What a replica's start left for after it serves, in a thread of its own, beside the batches that hold
    ``beside`` (its lock: a request waits at most one warm-up call, or the text encoder's skeleton):

    - the warm-up's last calls (``warm.rest``, :func:`warm_up`'s ``later``), each holding ``beside``; then
      ``warmed(seconds, calls)``, with every call's (batch, caption tokens, seconds), or ``warmed(None, why)`` (the
      replica serves on: a request of that shape captures its graphs itself);
    - then the text encoder (``text_encoder``: start_engine's ``text_encoder_later``, :func:`add_text_encoder`);
      ``added("ready", seconds)``, or ``added("failed: why", None)`` (out of memory beside a batch, a bad file: the
      prompts are encoded elsewhere, slower, not broken). It comes after the warm-up's calls: until it is added, the
      CPU encoders encode this replica's prompts."""

    def finish_warm_up():
        t = time.perf_counter()
        try:
            for run in warm.rest:
                with beside:
                    run()
        except BaseException as e:  # noqa: BLE001 (an optimization: the requests' shapes warm as they come)
            log.warning("the warm-up's last calls failed (%s: %s)", type(e).__name__, e)
            with beside:
                engine.free_memory()  # (what an out-of-memory left cached, before the text encoder's load)
            return warmed(None, f"{type(e).__name__}: {str(e)[:300]}")
        log.info("warm-up finished after the start in %.1fs: %s", time.perf_counter() - t, warm.calls)
        warmed(time.perf_counter() - t, list(warm.calls))

    def add():
        try:
            seconds = add_text_encoder(engine, beside)
        except BaseException as e:  # noqa: BLE001 (see the docstring)
            log.warning("the text encoder was not loaded (%s: %s)", type(e).__name__, e)
            return added(f"failed: {type(e).__name__}: {str(e)[:300]}", None)
        log.info("text encoder loaded in %.1fs, after the start", seconds)
        added("ready", seconds)

    def finish():
        if warm is not None and warm.rest:
            finish_warm_up()
        if text_encoder:
            add()

    threading.Thread(target=finish, name="after-the-start", daemon=True).start()
