"""PromptEncoder: the CPU deployment that batches text-encoder work across concurrent requests.

Concurrent calls are grouped by ``@serve.batch`` into one forward pass (padded to the batch's longest
prompt). Embeddings are cached (LRU keyed by prompt and model revision), and a prompt already being
encoded is waited for, not encoded twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from ray import serve

from . import metrics
from .app_config import AppConfig
from .embedding_cache import EmbeddingCache
from .errors import NotReady, ZImageError

log = logging.getLogger("zimage_serve")


@serve.deployment(name="PromptEncoder", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class PromptEncoderDeployment:
    def __init__(self, config: dict):
        import torch

        from .encoding import PromptEncoder, cpu_encoder_dtype
        from .loader import load_text_encoder
        from .sources import resolve

        self.config = AppConfig.model_validate(config)
        opts = self.config.encoder
        torch.set_num_threads(opts.threads or max(1, int(opts.num_cpus)))
        self.cache = EmbeddingCache(opts.cache_size, int(opts.cache_gib * 2**30))
        self.inflight: dict[tuple, asyncio.Future] = {}
        self.stats = {"hits": 0, "misses": 0, "batches": [], "pid": os.getpid()}
        self.reason = None
        try:
            self.source = resolve(self.config.model)
        except ZImageError as e:  # stay up and say why (the generator reports it in /readyz), no crash loop
            self.source, self.reason = None, str(e)
            log.error("PromptEncoder not ready: %s", e)
            return
        dtype = cpu_encoder_dtype(opts.dtype)
        model, tokenizer = load_text_encoder(self.source, torch.device("cpu"), dtype)
        self.encoder = PromptEncoder(model, tokenizer)
        self._encode_batch.set_max_batch_size(opts.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)
        log.info("PromptEncoder ready: %s, %s, %d threads", self.source.label, dtype, torch.get_num_threads())

    async def encode(self, prompt: str):
        """Embeddings of one prompt: a CPU tensor [tokens, hidden]."""
        if self.source is None:
            raise NotReady(f"the model is not loaded: {self.reason}")
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
        return [e.float().clone() for e in embeds]

    async def info(self) -> dict:
        """Counters for tests and operators: cache hits/misses, recent batch sizes."""
        if self.source is None:
            return {"ready": False, "reason": self.reason, **self.stats}
        return {"ready": True, "model": self.source.spec, "revision": self.source.revision, **self.stats,
                "cache_entries": len(self.cache), "cache_bytes": self.cache.bytes}
