"""The one typed request, built once from the wire types (or a CLI's arguments, or a prompts-file line) and
carried unchanged ingress -> prompt encoder -> generator -> engine, across Ray handles.

A new generation mode adds fields here (and a file in the layer that runs it, ``model/modes``), not new
plumbing: a LoRA adapter, image-to-image, inpainting and ControlNet are fields of this one request, and
:attr:`GenerationRequest.batch_key` keeps requests that can't share a transformer batch apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import InvalidInput
from .formats import OutputFormat

if TYPE_CHECKING:
    from .pixels import Pixels

Mode = Literal["text-to-image", "image-to-image", "inpaint", "controlnet", "controlnet-inpaint"]
# diffusers' defaults: ZImageImg2ImgPipeline's strength 0.6, ZImageInpaintPipeline's 1.0
DEFAULT_STRENGTH = {"image-to-image": 0.6, "inpaint": 1.0}
DEFAULT_CONTROL_SCALE = 0.75  # ZImageControlNetPipeline's controlnet_conditioning_scale
MAX_CONTROL_SCALE = 2.0
MAX_PARTIAL_IMAGES = 3  # OpenAI's bound on partial_images


def preview_steps(total: int, count: int) -> tuple[int, ...]:
    """The steps (1-based: after that many have run) at which ``count`` previews (``partial_images``) fall over
    ``total`` steps: evenly spaced, before the last (the final image is the last word; a 1-step image has none),
    at most one a step."""
    if count <= 0 or total <= 1:
        return ()
    return tuple(sorted({min(total - 1, max(1, round(total * (k + 1) / (count + 1)))) for k in range(count)}))


def check_control_inputs(image: bool, mask: bool, strength: float | None) -> None:
    """What a control image may come with, as the ControlNet pipelines take it: with an image to edit, a mask
    (diffusers has no ControlNet image-to-image) and no strength (ControlNet inpainting generates from noise). The
    one place that says so: the request, the edits route (before decoding) and the prompts file ask here."""
    if image and not mask:
        raise InvalidInput("control_image with an image needs a mask (ControlNet inpainting); image-to-image with a "
                           "ControlNet is not served", param="control_image")
    if image and strength is not None:
        raise InvalidInput("strength does not apply to ControlNet inpainting (it generates from noise, the image "
                           "outside the mask as a condition)", param="strength")


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: one request, ``n`` images; image ``i`` uses ``seed + i`` (see :meth:`images`).

    Images (``init_image``, ``mask_image``, ``control_image``) travel decoded, as ``core.pixels.Pixels``: the
    layer that received the upload checked and decoded it once (``core.images.with_edit_inputs``,
    ``core.images.with_control_image``). An edit without a ``strength`` gets its mode's default
    (:data:`DEFAULT_STRENGTH`), a control image without a ``control_scale`` diffusers' 0.75, so that equal
    requests have equal batch keys.

    A ``control_image`` (the control map: edges, depth, pose, ...) makes a text-to-image request ``controlnet``
    (``ZImageControlNetPipeline``) and an inpainting one ``controlnet-inpaint``
    (``ZImageControlNetInpaintPipeline``, which generates from noise: no strength). diffusers has no ControlNet
    image-to-image: a control image with an input image needs a mask."""

    prompt: str
    seed: int
    width: int = 1024
    height: int = 1024
    steps: int = 8
    guidance_scale: float = 0.0
    negative_prompt: str = ""
    n: int = 1
    output_format: OutputFormat = "png"
    quality: int | None = None  # jpeg/webp quality (OpenAI's output_compression); None: the default
    # ---- room for the modes to come: each is None/empty when unused ------------------------------------
    adapter: str | None = None  # a LoRA adapter's name (the OpenAI `model` field)
    adapter_scale: float | None = None  # None: the adapter's configured scale
    init_image: Pixels | None = None  # image-to-image / inpainting input (RGB)
    mask_image: Pixels | None = None  # inpainting: what to repaint (L, white = repaint)
    strength: float | None = None  # how far from init_image, in (0, 1] (an edit without one: its mode's default)
    control_image: Pixels | None = None  # ControlNet conditioning
    control_scale: float | None = None
    enqueued_at: float | None = None  # when the ingress admitted it (time.time()), for the queue metric
    partial_images: int = 0  # previews wanted while it denoises (streaming), evenly spaced over the steps

    def __post_init__(self):
        if self.mask_image is not None and self.init_image is None:
            raise ValueError("a mask_image needs an init_image")
        if self.control_image is not None:
            check_control_inputs(self.init_image is not None, self.mask_image is not None, self.strength)
            if self.control_scale is None:
                object.__setattr__(self, "control_scale", DEFAULT_CONTROL_SCALE)
        elif self.control_scale is not None:
            raise InvalidInput("controlnet_conditioning_scale needs a control_image", param="controlnet_conditioning_scale")
        elif self.init_image is not None and self.strength is None:
            object.__setattr__(self, "strength", DEFAULT_STRENGTH[self.mode])

    @property
    def guided(self) -> bool:
        """Classifier-free guidance: the negative prompt is encoded and run too."""
        return self.guidance_scale > 0

    @property
    def texts(self) -> tuple[str, ...]:
        """The texts to encode for this request, in order: the prompt, then the negative prompt when guided.
        The one place that says so; every encoder (CPU deployment, generator, batch job, CLI) asks here."""
        return (self.prompt, self.negative_prompt) if self.guided else (self.prompt,)

    @property
    def mode(self) -> Mode:
        if self.control_image is not None:
            return "controlnet" if self.init_image is None else "controlnet-inpaint"
        if self.init_image is None:
            return "text-to-image"
        return "inpaint" if self.mask_image is not None else "image-to-image"

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def batch_key(self) -> tuple:
        """Requests share a transformer batch only when this is equal: the same shape, steps, guidance, mode,
        strength, adapter and control scale (the seed, prompt and images may differ)."""
        return (self.width, self.height, self.steps, float(self.guidance_scale), self.mode, self.strength,
                self.adapter, self.adapter_scale, self.control_scale)

    def images(self) -> list["GenerationRequest"]:
        """The request split into its ``n`` single images, image ``i`` with seed ``seed + i``."""
        return [dataclasses.replace(self, seed=self.seed + i, n=1) for i in range(self.n)]

    def replace(self, **changes) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)

    def without_images(self) -> "GenerationRequest":
        """The request as the prompt encoder needs it: its texts, not its images' pixels (nor the mode they
        make, nor the control scale; the strength stays as it was resolved)."""
        return dataclasses.replace(self, init_image=None, mask_image=None, control_image=None, control_scale=None)
