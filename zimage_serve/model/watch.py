"""Watching a batch denoise: each job's :class:`StepWatch` is told of every step, with a preview image at the
steps it wants one (model/preview.py), and a batch whose every job is cancelled stops at its next step.

The engine passes :func:`step_hooks` to the mode's diffusers pipeline as ``callback_on_step_end``, which runs after
each scheduler step (outside the transformer: compiled code and CUDA graphs are untouched). A batch that still has
one wanted job runs to its end (its other rows' images are then dropped by their callers).
"""

from __future__ import annotations

import logging
from typing import Protocol

from PIL import Image

from .preview import clean_estimate, to_rgb

log = logging.getLogger("zimage_serve")


class Cancelled(Exception):
    """Every image of a transformer batch was cancelled (its callers left): the batch stopped at its next step."""


class StepWatch(Protocol):
    """Who watches one job's denoising (``Job.watch``); a job whose watch is ``cancelled`` is not wanted any more."""

    cancelled: bool

    def wants_preview(self, done: int, total: int) -> bool:
        """Whether a preview is wanted after ``done`` of ``total`` steps."""

    def step(self, done: int, total: int, preview: Image.Image | None) -> None:
        """``done`` of ``total`` steps have run (``preview``: where one was wanted). Called on the engine's thread."""


def step_hooks(watches: list[StepWatch | None]) -> dict:
    """The diffusers pipeline arguments (``callback_on_step_end``) for a batch whose rows are watched by
    ``watches`` (None: a row nobody watches); {} when nobody watches any."""
    if all(w is None for w in watches):
        return {}
    kept = {}  # the latents after the last step, of the rows whose next step is previewed

    def on_step_end(pipe, i, t, tensors):
        if all(w is not None and w.cancelled for w in watches):
            raise Cancelled()
        latents, done, total = tensors["latents"], i + 1, pipe.num_timesteps
        live = [(row, w) for row, w in enumerate(watches) if w is not None and not w.cancelled]
        previews = {}
        rows = [row for row, w in live if w.wants_preview(done, total)]
        if rows:
            # after the scheduler's step its index points at the sigma the latents are now at
            sigmas, at = pipe.scheduler.sigmas, pipe.scheduler.step_index
            for row in rows:
                try:  # a preview is a nicety: it never fails the batch
                    clean = clean_estimate(latents[row], kept.get(row), float(sigmas[at]), float(sigmas[at - 1]))
                    previews[row] = to_rgb(clean)
                except Exception:
                    log.warning("no preview at step %d", done, exc_info=True)
        kept.clear()
        for row, w in live:
            if done < total and w.wants_preview(done + 1, total):
                kept[row] = latents[row].clone()
            w.step(done, total, previews.get(row))
        return tensors

    return {"callback_on_step_end": on_step_end}
