"""The generator's side of watching a request denoise (model.watch.StepWatch, told by the engine's thread): whether
its caller still wants it, and, for a streamed request, its steps and previews as they happen, handed to the
replica's event loop; and :func:`while_running`, how a stream reads such events while the work runs.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from ..core.request import GenerationRequest, preview_steps


class Wanted:
    """A request nobody streams: its batch may stop early once it (and every other image of its batch) is
    cancelled (its caller left: an HTTP client that disconnected, a cancelled job)."""

    def __init__(self):
        self.cancelled = False

    def wants_preview(self, done: int, total: int) -> bool:
        return False

    def step(self, done: int, total: int, preview) -> None:
        pass


class StepEvents(Wanted):
    """A streamed request: each step's ``{"step", "total", "preview"}`` (a PIL image at the steps its
    ``partial_images`` fall on, else None) put in :attr:`queue`, on the replica's event loop."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self.previews = request.partial_images
        self._loop, self.queue = loop, asyncio.Queue()

    def wants_preview(self, done: int, total: int) -> bool:
        return done in preview_steps(total, self.previews)

    def step(self, done: int, total: int, preview) -> None:
        event = {"step": done, "total": total, "preview": preview}
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the replica's loop is closed (shutting down): nobody is listening
            self.cancelled = True


async def while_running(task: asyncio.Future, queue: asyncio.Queue) -> AsyncIterator:
    """The items put in ``queue`` as they come while ``task`` runs, then those left once it ended (its result or
    error is the caller's to take)."""
    while True:
        item = asyncio.ensure_future(queue.get())
        await asyncio.wait({item, task}, return_when=asyncio.FIRST_COMPLETED)
        if not item.done():
            item.cancel()
            break
        yield item.result()
    while not queue.empty():
        yield queue.get_nowait()


async def close_stream(stream) -> None:
    """End a stream not read to its end: an async generator is closed, a Serve stream (a replica's call) cancelled."""
    close = getattr(stream, "aclose", None) or getattr(stream, "cancel", None)
    if close is not None:
        result = close()
        if asyncio.iscoroutine(result):
            await result
