"""PromptEncoder: the CPU deployment that batches text-encoder work across concurrent requests.

Concurrent calls are grouped by ``@serve.batch`` into one forward pass (padded to the batch's longest
prompt). Embeddings are cached (LRU keyed by prompt and model revision), and a prompt already being
encoded is waited for, not encoded twice. torch is imported in the replica only (``__init__``), never by
importing this module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from ray import serve

from . import metrics
from ..settings import DRAIN_POLL_S, AppConfig
from .embedding_cache import EmbeddingCache
from ..core.errors import NotReady, ZImageError
from ..core.request import GenerationRequest

log = logging.getLogger("zimage_serve")


def deployment_options(config: AppConfig) -> dict:
    """The PromptEncoder's Serve options, from the config."""
    enc = config.encoder
    return dict(ray_actor_options={"num_cpus": enc.num_cpus}, max_ongoing_requests=enc.max_ongoing_requests,
                health_check_period_s=enc.health_check_period_s, autoscaling_config=enc.autoscaling.to_serve())


@serve.deployment(name="PromptEncoder", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                  graceful_shutdown_wait_loop_s=DRAIN_POLL_S)
class PromptEncoderDeployment:
    def __init__(self, config: dict):
        self.config = AppConfig.model_validate(config)
        opts = self.config.encoder
        self.cache = EmbeddingCache(opts.cache_size, int(opts.cache_gib * 2**30))
        self.inflight: dict[tuple, asyncio.Future] = {}
        self.stats = {"hits": 0, "misses": 0, "batches": [], "batches_run": 0, "pid": os.getpid()}
        self.source = self.reason = None
        self._encode_batch.set_max_batch_size(opts.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)
        try:
            self._load()
        except Exception as e:  # stay up and say why (the generator reports it in /readyz), no crash loop
            self.source, self.reason = None, str(e) if isinstance(e, ZImageError) else f"{type(e).__name__}: {e}"
            log.error("PromptEncoder not ready: %s", self.reason, exc_info=not isinstance(e, ZImageError))

    def _load(self) -> None:
        # imported here, in the replica: importing the deployment (the driver, the controller) loads no torch
        from ..model.startup import remember_installed_packages

        remember_installed_packages()  # before transformers is imported
        import torch  # (see above)

        from ..model.encoding import PromptEncoder, cpu_encoder_dtype
        from ..model.loader import load_text_encoder
        from ..model.sources import resolve

        opts = self.config.encoder
        torch.set_num_threads(opts.threads or max(1, int(opts.num_cpus)))
        source = resolve(self.config.model)
        dtype = cpu_encoder_dtype(opts.dtype)
        self.encoder = PromptEncoder(*load_text_encoder(source, torch.device("cpu"), dtype))
        self.source = source
        log.info("PromptEncoder ready: %s, %s, %d threads", source.label, dtype, torch.get_num_threads())

    async def encode(self, request: GenerationRequest) -> tuple:
        """(prompt embeddings, negative prompt embeddings or None): CPU tensors [tokens, hidden] of the texts
        the request says to encode (``GenerationRequest.texts``). Passed to the generator unresolved."""
        if self.source is None:
            raise NotReady(f"the model is not loaded: {self.reason}")
        embeds = await asyncio.gather(*(self._encode_text(text) for text in request.texts))
        return embeds[0], (embeds[1] if len(embeds) > 1 else None)

    async def _encode_text(self, prompt: str):
        key = (self.source.revision, prompt)
        cached = self.cache.get(key)
        if cached is not None:
            self.stats["hits"] += 1
            metrics.count_cache("hit")
            return cached
        if key in self.inflight:
            self.stats["hits"] += 1
            metrics.count_cache("inflight")
            return await asyncio.shield(self.inflight[key])
        self.stats["misses"] += 1
        metrics.count_cache("miss")
        future = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            embeds = await self._encode_batch(prompt)
            future.set_result(embeds)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # mark retrieved: waiters get it through shield
            raise
        finally:
            del self.inflight[key]
        self.cache.put(key, embeds)
        return embeds

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, prompts: list[str]):
        t0 = time.perf_counter()
        embeds = await asyncio.to_thread(self.encoder.encode, prompts)
        metrics.observe_stage("encode", time.perf_counter() - t0)
        metrics.observe_batch("encode", len(prompts))
        self.stats["batches"].append(len(prompts))
        del self.stats["batches"][:-1000]
        self.stats["batches_run"] += 1
        return [e.float().clone() for e in embeds]

    async def info(self) -> dict:
        """Counters for tests and operators: cache hits/misses, the last 1000 batches' sizes and how many ran."""
        if self.source is None:
            return {"ready": False, "reason": self.reason, **self.stats}
        return {"ready": True, "model": self.source.spec, "revision": self.source.revision, **self.stats,
                "cache_entries": len(self.cache), "cache_bytes": self.cache.bytes}
