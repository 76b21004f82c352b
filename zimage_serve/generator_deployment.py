"""Generator: one GPU per replica, the engine loaded with the staging plan for that GPU.

Concurrent calls are grouped by batcher.GpuBatcher, one batch at a time, formed when the GPU is free;
the engine puts images of the same shape and steps into one transformer batch, each with its own
seed. Each image is encoded (PNG/JPEG/WebP) here, on the replica, after its batch and while the next
one runs, so only compressed bytes travel back. A model that can't load leaves the replica
alive and not ready, with the reason, rather than crash-looping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from ray import serve

from . import metrics
from .app_config import AppConfig
from .batcher import GpuBatcher
from .errors import NeedsEmbeddings, NotReady, Overloaded, ZImageError

log = logging.getLogger("zimage_serve")


@serve.deployment(name="Generator", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8,
                  graceful_shutdown_timeout_s=120, health_check_period_s=10)
class GeneratorDeployment:
    def __init__(self, config: dict):
        from .engine import Engine, gpu_free_bytes, plan_for_this_machine
        from .limits import Bounds, parse_size
        from .planner import Workload
        from .sources import resolve

        self.config = AppConfig.model_validate(config)
        opts = self.config.generator
        self.engine, self.reason, self.batches = None, None, []
        self.prompts_encoded = 0  # texts this replica's own text encoder encoded (plans that encode on the GPU)
        self._inject_oom = opts.inject_oom
        self._batcher = GpuBatcher(self._generate_batch, opts.max_batch_size, opts.batch_wait_timeout_s)
        device = None if opts.device == "auto" else opts.device
        try:
            t0 = time.perf_counter()
            source = resolve(self.config.model, gpu=gpu_free_bytes(device) is not None)
            workload = Workload(*parse_size(opts.plan_size, Bounds(max_side=8192)), opts.max_batch_size)
            plan = plan_for_this_machine(source, workload, opts.policy, opts.encode_on, device)
            speedups = {"compile": opts.compile, "attention_backend": opts.attention_backend, "fp8": opts.fp8,
                        "fuse": opts.fuse_projections, "cuda_graphs": opts.cuda_graphs}
            self.engine = Engine.load(source, plan, with_text_encoder=plan.encode_on == "gpu", speedups=speedups)
            self.engine.set_progress(False)
            if opts.vae_tiling:
                self.engine.enable_vae_tiling()
            if opts.warmup and self.engine.device.type == "cuda":
                sizes = sorted({1, min(2, opts.max_batch_size)})
                log.info("warming up at %s, batch %s: %.1fs", opts.plan_size, sizes,
                         self.engine.warmup(workload.width, workload.height, sizes))
            self.load_seconds = time.perf_counter() - t0
            metrics.set_plan(plan)
            log.info("Generator ready in %.1fs: %s\n%s", self.load_seconds, source.label, plan.describe())
        except ZImageError as e:
            self.reason = str(e)
            log.error("Generator not ready: %s", e)

    def check_health(self) -> None:
        """Fails when the GPU is unusable (Serve then replaces the replica)."""
        if self.engine is not None and self.engine.device.type == "cuda":
            import torch

            torch.ones(1, device=self.engine.device).add_(1).item()

    async def info(self) -> dict:
        """Readiness, the plan in force, and where this replica runs."""
        if self.engine is None:
            return {"ready": False, "reason": self.reason}
        e = self.engine
        gpu = None
        if e.device.type == "cuda":
            import torch

            gpu = {"name": torch.cuda.get_device_name(e.device),
                   "memory_gib": round(torch.cuda.get_device_properties(e.device).total_memory / 2**30, 1),
                   "peak_allocated_gib": round(torch.cuda.max_memory_allocated(e.device) / 2**30, 2)}
        return {"ready": True, "model": e.source.spec, "revision": e.source.revision,
                "random_weights": e.source.random_weights, "plan": e.plan.to_dict(), "pid": os.getpid(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu": gpu,
                "load_seconds": round(self.load_seconds, 2), "speedups": e.speedups, "batches": self.batches[-200:],
                "prompts_encoded": self.prompts_encoded}

    async def generate(self, embeds, negative_embeds, params: dict) -> dict:
        """One image. ``embeds`` come from the PromptEncoder (Serve resolves its response here),
        or are None with ``params["prompt"]`` set when this replica encodes on its GPU."""
        if self.engine is None:
            raise NotReady(f"the model is not loaded: {self.reason}")
        if embeds is None and self.engine.encoder is None:  # refused before batching: no other request fails with it
            raise NeedsEmbeddings(f"this generator replica's {self.engine.plan.kind} plan holds no text encoder")
        start = time.time()
        image, seconds, batch_size = await self._batcher.submit((embeds, negative_embeds, params))
        # Encoded here, outside the batch: the next batch forms and runs on the GPU meanwhile.
        t0 = time.perf_counter()
        data = await asyncio.to_thread(self._encode_image, image, params)
        seconds["image_encode"] = time.perf_counter() - t0
        metrics.observe_stage("image_encode", seconds["image_encode"])
        seconds["generator"] = time.time() - start  # what the ingress reports in its Server-Timing header
        return {"image": data, "seed": params["seed"], "batch_size": batch_size, "seconds": seconds}

    async def _generate_batch(self, items: list[tuple]) -> list[tuple]:
        """(PIL image, seconds, batch size) per item: the GPU part (prompt encoding on plans that do it there,
        denoise, decode)."""
        start = time.time()
        queued = [max(0.0, start - params.get("enqueued_at", start)) for _, _, params in items]
        for q in queued:
            metrics.observe_stage("queue", q)
        result = await asyncio.to_thread(self._denoise, items)  # the batcher runs one batch at a time
        self._record_batch(result, len(items))
        return [(image, {**result.seconds, "queue": q}, len(items)) for image, q in zip(result.images, queued)]

    def _denoise(self, items: list[tuple]):
        from .engine import Job

        texts = []  # what this replica encodes itself (plans that encode on the GPU): prompt, then negative
        for embeds, _, p in items:
            if embeds is None:
                texts += [p["prompt"]] + ([p.get("negative_prompt") or ""] if p["guidance_scale"] > 0 else [])
        texts = list(dict.fromkeys(texts))  # each once: the n images of one request share their prompt
        t0 = time.perf_counter()
        encoded = dict(zip(texts, self.engine.encode(texts))) if texts else {}
        encode_s = time.perf_counter() - t0
        self.prompts_encoded += len(texts)
        jobs = []
        for embeds, negative, p in items:
            if embeds is None:
                embeds = encoded[p["prompt"]]
                negative = encoded[p.get("negative_prompt") or ""] if p["guidance_scale"] > 0 else None
            jobs.append(Job(embeds=embeds, seed=p["seed"], width=p["width"], height=p["height"], steps=p["steps"],
                            guidance_scale=p["guidance_scale"], negative_embeds=negative))
        result = self._generate_with_oom_fallback(jobs)
        if texts:
            result.seconds["text_encode"] = encode_s
        return result

    def _encode_image(self, image, params: dict) -> bytes:
        from .imaging import encode_image

        return encode_image(image, params["output_format"], self.config.png_compress_level, params.get("quality"))

    def _record_batch(self, result, size: int) -> None:
        self.batches.append(size)
        del self.batches[:-1000]
        metrics.observe_stage("denoise", result.seconds["denoise"])
        metrics.observe_stage("decode", result.seconds["decode"])
        metrics.observe_batch("generate", size)
        metrics.count_images(self.engine.source.spec, size)
        if self.engine.device.type == "cuda":
            import torch

            metrics.set_peak_vram(torch.cuda.max_memory_allocated(self.engine.device))

    def _engine_generate(self, jobs):
        import torch

        if self._inject_oom > 0:
            self._inject_oom -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected for a test)")
        return self.engine.generate(jobs)

    def _generate_with_oom_fallback(self, jobs):
        """On CUDA out-of-memory: free, retry one image at a time, then give up with Overloaded (503)."""
        import torch

        try:
            return self._engine_generate(jobs)
        except torch.OutOfMemoryError:
            log.warning("out of GPU memory for a batch of %d; retrying one by one", len(jobs))
        torch.cuda.empty_cache()
        try:
            from .engine import Result

            merged = Result(images=[], seconds={"denoise": 0.0, "decode": 0.0})
            for job in jobs:
                r = self._engine_generate([job])
                merged.images += r.images
                for k, v in r.seconds.items():
                    merged.seconds[k] += v
            return merged
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise Overloaded("out of GPU memory for this request; retry later or ask for a smaller size") from None
