"""Batches that form when the GPU is free.

``@serve.batch`` forms a batch as soon as its wait runs out and only then waits for a free slot
(ray/serve/batching.py, ``_process_batches``: ``wait_for_batch`` before the semaphore). Under
load, with a batch on the GPU, each arrival becomes a batch of one waiting its turn: measured on
the H100 (bench/results/run17), saturation ran at batch 1. Here one worker takes everything queued
(up to ``max_batch_size``) when the previous batch is done, so a full queue makes full batches;
an idle server still answers a lone request after at most ``wait_s``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class GpuBatcher:
    def __init__(self, run_batch: Callable[[list], Awaitable[list]], max_batch_size: int, wait_s: float):
        self._run_batch, self.max_batch_size, self.wait_s = run_batch, max_batch_size, wait_s
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        """Queue ``item``; returns its result once its batch has run (or raises the batch's error)."""
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        future = loop.create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _next_batch(self) -> list:
        batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]  # drop cancelled callers

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await self._run_batch([item for item, _ in batch])
            except Exception as e:  # every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
