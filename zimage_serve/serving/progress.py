"""The generator's side of watching a request denoise (model.watch.StepWatch, told by the engine's thread): whether
its caller still wants it, and, for a streamed request, its steps and previews as they happen, handed to the
replica's event loop.
"""

from __future__ import annotations

import asyncio

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
    ``partial_images`` fall on, else None) queued on the replica's event loop for :meth:`next`."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self.previews = request.partial_images
        self._loop, self._queue = loop, asyncio.Queue()

    def wants_preview(self, done: int, total: int) -> bool:
        return done in preview_steps(total, self.previews)

    def step(self, done: int, total: int, preview) -> None:
        event = {"step": done, "total": total, "preview": preview}
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the replica's loop is closed (shutting down): nobody is listening
            self.cancelled = True

    async def next(self) -> dict:
        return await self._queue.get()

    def pending(self) -> list[dict]:
        """The events queued and not yet taken."""
        events = []
        while not self._queue.empty():
            events.append(self._queue.get_nowait())
        return events
