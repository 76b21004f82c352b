"""Generator: one GPU per replica, the engine loaded with the staging plan for that GPU.

Concurrent calls are grouped by batcher.GpuBatcher, one batch at a time, formed when the GPU is free;
the engine puts images that may share a transformer batch (``GenerationRequest.batch_key``) into one,
each with its own seed. Each image is encoded (PNG/JPEG/WebP) here, on the replica, after its batch and
while the next one runs, so only compressed bytes travel back. A model that can't load, for whatever
reason, leaves the replica alive and not ready, with the reason in /readyz, rather than crash-looping.
torch is imported in the replica only, never by importing this module.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from ray import serve

from ..core.bounds import Bounds, parse_size
from ..core.control import INPAINT_NEEDS_2X
from ..core.errors import AdapterError, InvalidInput, NeedsEmbeddings, NotReady, Overloaded, ZImageError
from ..core.request import GenerationRequest
from ..settings import DRAIN_POLL_S, AppConfig
from . import metrics
from .batcher import GpuBatcher
from .replica_report import replica_report
from .step_events import StepEvents, Wanted, while_running

log = logging.getLogger("zimage_serve")


def deployment_options(config: AppConfig) -> dict:
    """The Generator's Serve options, from the config."""
    gen = config.generator
    return dict(ray_actor_options={"num_cpus": gen.num_cpus, "num_gpus": gen.num_gpus},
                max_ongoing_requests=gen.max_ongoing_requests, max_queued_requests=gen.max_queued_requests,
                graceful_shutdown_timeout_s=gen.graceful_shutdown_timeout_s, graceful_shutdown_wait_loop_s=DRAIN_POLL_S,
                health_check_period_s=gen.health_check_period_s, autoscaling_config=gen.autoscaling.to_serve())


class Generator:
    """The replica's logic (deployed as :data:`GeneratorDeployment`; testing/faults.py subclasses it)."""

    def __init__(self, config: dict):
        from ..model.startup import StartClock  # (no torch) the start's stages begin now: see _load

        self.start = StartClock()
        self.config = AppConfig.model_validate(config)
        opts = self.config.generator
        self.engine, self.reason, self.batches, self.batches_run = None, None, [], 0
        self.controlnet = None  # the ControlNet served (model.controlnet.ControlNetSource), once loading found it
        self.prompts_encoded = 0  # texts this replica's own text encoder encoded (plans that encode on the GPU)
        self.text_encoder: str | None = None  # "loading", "ready" or "failed: why" when added after the start
        self.warm_up: str | None = None  # "finishing", "done" or "failed: why" when it finishes after the start
        self._gpu = threading.Lock()  # a batch (_denoise) or a lone prompt (encode): one at a time on the GPU
        self._batcher = GpuBatcher(self._generate_batch, opts.max_batch_size, opts.batch_wait_timeout_s)
        # LoRA adapters: {name: file} of those that passed their checks at start, {name: reason} of the others
        self.adapter_files: dict[str, str] = {}
        self.adapter_errors: dict[str, str] = {}
        self.adapter_stats = {"loads": 0, "hits": 0, "evictions": 0, "load_seconds": 0.0}
        if self.config.adapters:
            async def load(name: str):  # a plain function: Serve keeps its multiplexing state on it
                return await self._load_adapter(name)

            # Serve's model multiplexing: at most max_adapters_per_replica held, least recently used evicted
            self._held_adapter = serve.multiplexed(max_num_models_per_replica=opts.max_adapters_per_replica)(load)
        try:
            self._load()
        except Exception as e:  # CUDA OOM, a corrupt file, a bug: stay up, not ready, and say why
            self.engine, self.reason = None, str(e) if isinstance(e, ZImageError) else f"{type(e).__name__}: {e}"
            log.error("Generator not ready: %s", self.reason, exc_info=not isinstance(e, ZImageError))

    def _load(self) -> None:
        """Load as the config says, stage by stage (model/startup.py; /readyz and the metrics report them)."""
        from ..model.planner import Workload  # in the replica: importing the deployment loads no torch
        from ..model.startup import compiled_graphs, finish_start_in_background, start_engine, warm_up

        opts = self.config.generator
        t0 = time.perf_counter()
        workload = Workload(*parse_size(opts.plan_size, Bounds(max_side=8192)), opts.max_batch_size)
        speedups = {"compile": opts.compile, "attention_backend": opts.attention_backend,
                    "fuse": opts.fuse_projections, "cuda_graphs": opts.cuda_graphs,
                    "compile_artifacts": opts.compile_artifacts}
        started = start_engine(self.config.model, workload, self.start, policy=opts.policy, encode_on=opts.encode_on,
                               device=None if opts.device == "auto" else opts.device, fp8=opts.fp8,
                               adapters={n: a.source for n, a in self.config.adapters.items()},
                               adapters_held=opts.max_adapters_per_replica, controlnet=self.config.controlnet,
                               speedups=speedups, checked=self._checked,
                               # encode_on auto: the CPU encoders encode every prompt until the GPU's encoder is added
                               text_encoder_later=opts.encode_on == "auto")
        engine = started.engine
        engine.set_progress(False)
        if opts.vae_tiling:
            engine.enable_vae_tiling()
        warm = None
        if opts.warmup and engine.device.type == "cuda":
            with self.start.stage("warmup"):  # its first call; the others after the start where nothing compiles
                warm = warm_up(engine, workload.width, workload.height, sorted({1, min(2, opts.max_batch_size)}),
                               later=True)
            self.start.details.update(warmup_compile_s=warm.compile_s, warmup_cuda_graph_capture_s=warm.cuda_graph_capture_s,
                                      warmup_calls=str(warm.calls))
            if warm.saved:  # the first replica on this node: the blocks' compiled code, for the next ones
                self.start.details["warmup_saved_compiled_blocks"] = str(warm.saved)
        self.graphs_when_ready = compiled_graphs()  # /readyz reports those made since: recompiles requests waited for
        self.engine, self.load_seconds = engine, time.perf_counter() - t0
        metrics.set_plan(engine.plan)
        metrics.set_start(self.start.finish().report())
        log.info("Generator ready in %.1fs: %s; start stages (s): %s", self.load_seconds, engine.source.label,
                 self.start.report()["stages_s"])
        if started.text_encoder_later:  # meanwhile Generator.encode and generate refuse prompts without embeddings
            self.text_encoder = "loading"  # (NeedsEmbeddings): the ingress has them encoded on the CPU encoders
        if warm is not None and warm.rest:
            self.warm_up = "finishing"
        if self.text_encoder or self.warm_up:  # the warm-up's last calls, then the text encoder, beside batches
            finish_start_in_background(engine, self._gpu, warm, self._warmed_up, started.text_encoder_later,
                                       self._text_encoder_added)

    def _warmed_up(self, seconds: float | None, calls) -> None:
        """The warm-up's last calls are done (``calls``: all of them), or failed (``calls``: why). Whatever they
        compiled counts in /readyz's compiles_since_ready (they are meant to compile nothing: warm_up's ``later``)."""
        self.warm_up = "done" if seconds is not None else f"failed: {calls}"
        if seconds is not None:  # (a new dict: the event loop's thread may be reading the old one)
            self.start.details = {**self.start.details, "warmup_after_ready_s": round(seconds, 2),
                                  "warmup_calls": str(calls)}

    def _text_encoder_added(self, state: str, seconds: float | None) -> None:
        self.text_encoder = state  # "ready": a lone prompt is encoded here again; failed: on the CPU encoders
        if seconds is not None:  # (a new dict: the event loop's thread may be reading the old one)
            self.start.details = {**self.start.details, "text_encoder_after_ready_s": round(seconds, 2)}

    def _checked(self, adapters: dict, errors: dict, controlnet) -> None:
        """What the start found of the configured adapters and ControlNet (reported even when the load then fails)."""
        self.adapter_files = {name: str(w.path) for name, w in adapters.items()}
        self.adapter_errors, self.controlnet = errors, controlnet
        for name, reason in errors.items():  # the base and the other adapters serve on
            log.error("adapter %r not served: %s", name, reason)

    async def _load_adapter(self, name: str):
        """Serve's multiplexed loader: the adapter ``name`` read from its file (the node's disk or page cache) onto
        this replica's GPU; what it returns Serve keeps until it evicts it (calling its ``__del__``)."""
        if name in self.adapter_errors:
            raise AdapterError(self.adapter_errors[name], param="model")
        t0 = time.perf_counter()
        held = await asyncio.to_thread(self.engine.load_adapter, name, self.adapter_files[name],
                                       self.config.adapters[name].scale)
        seconds = time.perf_counter() - t0
        self.adapter_stats["loads"] += 1
        self.adapter_stats["load_seconds"] += seconds
        metrics.count_adapter("load", name, seconds)
        log.info("adapter %r held in %.2fs (%.0f MiB)", name, seconds, held.nbytes / 2**20)
        return _Evictable(held, self._evicted)

    def _evicted(self, name: str) -> None:
        if self.engine is not None:
            self.engine.unload_adapter(name)
        self.adapter_stats["evictions"] += 1
        metrics.count_adapter("eviction", name)

    async def _adapter_for(self, request: GenerationRequest):
        """The held adapter ``request`` names (loaded here first when this replica does not hold it), or None."""
        name = request.adapter
        if name is None:
            return None
        if name in self.adapter_errors:
            raise AdapterError(self.adapter_errors[name], param="model")
        if name not in self.adapter_files:
            raise InvalidInput(f"adapter {name!r} is not configured on this replica", param="model",
                               code="model_not_found")
        hit = name in self.engine.adapters
        held = await self._held_adapter(name)
        if hit:
            self.adapter_stats["hits"] += 1
            metrics.count_adapter("hit", name)
        return held.held

    def _check_control(self, request: GenerationRequest) -> None:
        """A control request this replica can serve, or InvalidInput naming what is missing (before batching)."""
        controlnet = self.engine.controlnet
        if controlnet is None:
            raise InvalidInput("control_image needs a ControlNet, and this deployment serves none: set `controlnet` "
                               "in the app's args (or zimage-serve serve --controlnet SOURCE)", param="control_image",
                               code="controlnet_not_configured")
        if request.mode == "controlnet-inpaint" and not self.controlnet.inpaint:
            raise InvalidInput(f"{INPAINT_NEEDS_2X}; the one served is 1.0", param="control_image",
                               code="unsupported_value")

    def check_health(self) -> None:
        """Fails when the GPU is unusable (Serve then replaces the replica)."""
        if self.engine is not None and self.engine.device.type == "cuda":
            self.engine.check_device()

    async def info(self) -> dict:
        """Readiness, the plan in force, and where this replica runs (replica_report.py)."""
        return replica_report(self)

    async def encode(self, request: GenerationRequest) -> tuple | None:
        """(embeds, negative embeds or None) of the request's texts, encoded on this replica's GPU, as the
        PromptEncoder returns them (float32 CPU tensors: bf16 widened, exactly). The ingress asks for them when
        an edit arrives on an idle GPU, so that its prompt is encoded while its uploads are decoded. It waits for
        a batch in progress (the GPU runs one thing at a time). None when this replica's text encoder does not stay
        where it is (offload plans move it in and out around the transformer): the batch encodes it then."""
        if self.engine is None:
            raise NotReady(f"the model is not loaded: {self.reason}")
        if self.engine.encoder is None:
            raise NeedsEmbeddings(self._no_text_encoder())
        if not self.engine.plan.text_encoder_stays:  # moved in and out with the transformer
            return None
        from ..model.engine import OutOfMemory  # in the replica, with torch

        t0 = time.perf_counter()
        try:
            embeds = await asyncio.to_thread(self._encode_alone, list(request.texts))
        except OutOfMemory:
            self.engine.free_memory()
            raise Overloaded("out of GPU memory encoding the prompt; retry later") from None
        metrics.observe_stage("text_encode", time.perf_counter() - t0)
        return embeds[0], (embeds[1] if len(embeds) > 1 else None)

    def _no_text_encoder(self) -> str:
        if self.text_encoder == "loading":
            return "this generator replica's text encoder is still loading"
        if self.text_encoder:  # failed
            return f"this generator replica's text encoder {self.text_encoder}"
        return f"this generator replica's {self.engine.plan.kind} plan holds no text encoder"

    def _encode_alone(self, texts: list[str]) -> list:
        with self._gpu:
            self.prompts_encoded += len(texts)
            return [e.float().cpu() for e in self.engine.encode(texts)]

    async def generate(self, request: GenerationRequest, encoded: tuple | None, watch: Wanted | None = None) -> dict:
        """One image of ``request``. ``encoded``: (embeds, negative embeds or None) from the PromptEncoder (Serve
        resolves its response here), or None when this replica encodes the request's texts on its GPU. A caller
        that leaves (Serve cancels the call) is no longer waited for: its batch stops at its next step when no
        other image of it is wanted (``watch``: :meth:`generate_stream`'s)."""
        if self.engine is None:
            raise NotReady(f"the model is not loaded: {self.reason}")
        if encoded is None and self.engine.encoder is None:  # refused before batching: no other request fails with it
            raise NeedsEmbeddings(self._no_text_encoder())
        if request.control_image is not None:
            self._check_control(request)
        start = time.time()
        watch = watch or Wanted()
        try:
            held = await self._adapter_for(request)  # refused before batching: no other request fails with it
            image, seconds, batch_size = await self._batcher.submit((request, encoded, held, watch))
        except asyncio.CancelledError:
            watch.cancelled = True
            raise
        # Encoded here, outside the batch: the next batch forms and runs on the GPU meanwhile.
        t0 = time.perf_counter()
        data = await asyncio.to_thread(self._encode_image, image, request)
        seconds["image_encode"] = time.perf_counter() - t0
        metrics.observe_stage("image_encode", seconds["image_encode"])
        seconds["generator"] = time.time() - start  # what the ingress reports in its Server-Timing header
        return {"image": data, "seed": request.seed, "batch_size": batch_size, "seconds": seconds}

    async def generate_stream(self, request: GenerationRequest, encoded: tuple | None):
        """:meth:`generate`, streamed (Serve's streaming handle): ``{"step", "total", "preview"}`` after each
        denoising step (``preview``: the encoded preview image at the steps ``request.partial_images`` fall on, else
        None), then ``{"result": what generate returns}``. A consumer that leaves stops the image as
        :meth:`generate` says."""
        watch = StepEvents(request, asyncio.get_running_loop())
        task = asyncio.ensure_future(self.generate(request, encoded, watch))
        try:
            async for step in while_running(task, watch.queue):
                yield await self._step_event(step, request)
            yield {"result": task.result()}
        finally:
            if not task.done():
                watch.cancelled = True
                task.cancel()

    async def _step_event(self, step: dict, request: GenerationRequest) -> dict:
        preview = step["preview"]
        if preview is not None:  # encoded off the event loop, as the images are
            preview = await asyncio.to_thread(self._encode_image, preview, request)
        return {**step, "preview": preview}

    async def _generate_batch(self, items: list[tuple]) -> list[tuple]:
        """(PIL image, seconds, batch size) per item: the GPU part (prompt encoding on plans that do it there,
        denoise, decode)."""
        start = time.time()
        queued = [max(0.0, start - (request.enqueued_at or start)) for request, *_ in items]
        for q in queued:
            metrics.observe_stage("queue", q)
        result = await asyncio.to_thread(self._denoise, items)  # the batcher runs one batch at a time
        if result.batch_sizes:  # (none: every image of it was cancelled, and stopped early)
            self._record_batch(result, len(items))
        return [(image, {**result.seconds, "queue": q}, len(items)) for image, q in zip(result.images, queued)]

    def _denoise(self, items: list[tuple]):
        with self._gpu:  # never beside a lone prompt's encode()
            return self._denoise_batch(items)

    def _denoise_batch(self, items: list[tuple]):
        from ..model.engine import Job  # in the replica, with torch

        # what this replica encodes itself (plans that encode on the GPU), each text once: the n images of one
        # request share their prompt
        texts = list(dict.fromkeys(t for request, encoded, *_ in items if encoded is None for t in request.texts))
        t0 = time.perf_counter()
        own = dict(zip(texts, self.engine.encode(texts))) if texts else {}
        encode_s = time.perf_counter() - t0
        self.prompts_encoded += len(texts)
        jobs = [Job.of(request, list(encoded) if encoded is not None else [own[t] for t in request.texts], held, watch)
                for request, encoded, held, watch in items]
        result = self._generate_with_oom_fallback(jobs)
        if texts:
            result.seconds["text_encode"] = encode_s
        return result

    def _encode_image(self, image, request: GenerationRequest) -> bytes:
        from ..model.imaging import encode_image  # model/ in the replica only

        # PNG bands on the CPUs this replica reserved (generator.num_cpus), at least one
        return encode_image(image, request.output_format, self.config.png_compress_level, request.quality,
                            workers=max(1, int(self.config.generator.num_cpus)))

    def _record_batch(self, result, size: int) -> None:
        self.batches.append(size)
        del self.batches[:-1000]
        self.batches_run += 1
        metrics.observe_stage("denoise", result.seconds["denoise"])
        metrics.observe_stage("decode", result.seconds["decode"])
        metrics.observe_batch("generate", size)
        metrics.count_images(self.engine.source.spec, size)
        # the replica's gauges again: Ray's exporter stops reporting a gauge that nothing has set for a while
        metrics.set_plan(self.engine.plan)
        metrics.set_start(self.start.report())
        peak = self.engine.peak_memory_bytes()
        if peak is not None:
            metrics.set_peak_vram(peak)

    def _engine_generate(self, jobs):
        """The one call into the engine (testing/faults.py injects failures here)."""
        return self.engine.generate(jobs)

    def _generate_with_oom_fallback(self, jobs):
        """On GPU out-of-memory: free, retry one image at a time, then give up with Overloaded (503)."""
        from ..model.engine import OutOfMemory, Result  # in the replica, with torch

        try:
            return self._engine_generate(jobs)
        except OutOfMemory:
            log.warning("out of GPU memory for a batch of %d; retrying one by one", len(jobs))
        self.engine.free_memory()
        try:
            merged = Result(images=[], seconds={"denoise": 0.0, "decode": 0.0})
            for job in jobs:
                if job.watch is not None and job.watch.cancelled:  # its caller left: no image is wanted
                    merged.images.append(None)
                    continue
                r = self._engine_generate([job])
                merged.images += r.images
                merged.batch_sizes += r.batch_sizes
                for k, v in r.seconds.items():
                    merged.seconds[k] += v
            return merged
        except OutOfMemory:
            self.engine.free_memory()
            raise Overloaded("out of GPU memory for this request; retry later or ask for a smaller size") from None


class _Evictable:
    """What Serve's multiplexing keeps for a held adapter: on eviction Serve calls ``__del__``, which lets the
    engine forget it (a batch already given it still runs with it)."""

    def __init__(self, held, on_evict):
        self.held, self._on_evict = held, on_evict

    def __del__(self):
        on_evict, self._on_evict = getattr(self, "_on_evict", None), None  # once: Serve calls it, then the GC
        if on_evict is not None:
            on_evict(self.held.name)


GeneratorDeployment = serve.deployment(name="Generator")(Generator)
