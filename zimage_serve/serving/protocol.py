"""Wire types of the HTTP API, with the deployment's bounds, and the one error shape.

``ImagesRequest`` follows OpenAI's Images API (``POST /v1/images/generations``) so that the official
``openai`` client works with ``base_url``; seed, num_inference_steps, guidance_scale and
negative_prompt are extensions (``extra_body`` in the client). ``GenerateRequest`` is the plain
``POST /generate`` body.

The request types are built per deployment by :func:`wire_types` from its bounds (``AppConfig.bounds``)
and served model name: the service validates with them and /openapi.json advertises their JSON schema,
so the schema states every bound that is enforced, and a body valid against the schema is accepted.
Validation is strict (JSON types as the schema says them: ``"64"`` is not an integer, ``64.0`` is).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from ..core.bounds import MAX_LORA_SCALE, SIZE_MULTIPLE, Bounds, base64_length
from ..core.control import CANNY_HIGH, CANNY_LOW, Preprocess
from ..core.formats import OutputFormat
from ..core.request import DEFAULT_CONTROL_SCALE, MAX_CONTROL_SCALE, MAX_PARTIAL_IMAGES, GenerationRequest

CONTROL_FIELDS = ("control_image", "controlnet_conditioning_scale", "control_preprocess")

# ---- the error shape --------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The one error shape of every route: {"error": {"message", "type", "param", "code"}}."""
    return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


# ---- patterns: what the regex engines of pydantic (Rust), the JSON Schema validators (ECMA) and
# hypothesis (Python) all read the same way: character classes of \xHH / \uHHHH escapes, ^ and $ --------


def _char_class(codes: list[int]) -> str:
    """The body of a regex character class holding exactly ``codes``, as ranges of escapes."""
    def esc(c: int) -> str:
        return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"

    parts, start = [], None
    for i, c in enumerate(codes):
        start = c if start is None else start
        if i + 1 == len(codes) or codes[i + 1] != c + 1:
            parts.append(esc(start) if c == start else f"{esc(start)}-{esc(c)}")
            start = None
    return "".join(parts)


# What str.strip() removes (str.isspace, which check_prompt tests): all of it lies in the BMP (a test checks).
_WHITESPACE = _char_class([c for c in range(0x10000) if chr(c).isspace()])
_TEXT = rf"[{_WHITESPACE}]*[^{_WHITESPACE}\x00][^\x00]*"
PROMPT_PATTERN = rf"^{_TEXT}$"  # a character that is not whitespace, and no NUL
NEGATIVE_PROMPT_PATTERN = rf"^(?:{_TEXT})?$"  # empty, or as a prompt


def sides(bounds: Bounds) -> list[int]:
    """Every width or height the bounds accept: the multiples of SIZE_MULTIPLE in [min_side, max_side]."""
    first = -(-bounds.min_side // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return list(range(first, bounds.max_side + 1, SIZE_MULTIPLE))


def size_pattern(bounds: Bounds) -> str:
    """'auto' or WIDTHxHEIGHT, each side one of :func:`sides` (an alternation: it states the bounds)."""
    side = "|".join(map(str, sides(bounds)))
    return f"^(?:auto|(?:{side})x(?:{side}))$"


def max_seed(bounds: Bounds, n: int) -> int:
    """The largest first seed of a request that may ask for ``n`` images: image i uses seed + i, and every
    image's seed must be at most ``bounds.max_seed`` (torch's signed 64-bit seed)."""
    return bounds.max_seed - (n - 1)


def _integral(value):
    """JSON Schema's integers include 64.0; strict pydantic's don't: an integral float becomes its int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _only_bool(value):
    """A JSON boolean only: Python's ``0 == False`` would let a Literal[False] take 0."""
    if not isinstance(value, bool):
        raise PydanticCustomError("bool_type", "Input should be a valid boolean")
    return value


def _integer(ge: int, le: int, multiple_of: int | None = None):
    """An integer type with its bounds (inside the type, so that ``| None`` keeps them in the schema)."""
    return Annotated[int, Field(ge=ge, le=le, multiple_of=multiple_of), BeforeValidator(_integral)]


# ---- the request types ------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImagesRequest(_Strict):
    """OpenAI ``images.generate`` body."""


class GenerateRequest(_Strict):
    """``POST /generate``: one image, returned as bytes."""


class EditsRequest(_Strict):
    """OpenAI ``images.edit`` body (``POST /v1/images/edits``): as multipart/form-data, the images are file parts
    and the other fields form fields (read as their types say); as JSON, the images are base64 or data: URLs."""


@dataclass(frozen=True)
class WireTypes:
    """One deployment's request types (subclasses of ImagesRequest and GenerateRequest, with its bounds)."""

    images: type[ImagesRequest]
    generate: type[GenerateRequest]
    edits: type[EditsRequest]


def _common(b: Bounds, n: int) -> dict:
    """The fields of both bodies; ``n``: the most images a request may ask for (the seed's bound)."""
    first = f"the first image, at most {max_seed(b, n)} ({b.max_seed} - {n - 1}: image i uses seed + i, and n " \
            f"may be {n})" if n > 1 else f"the image, at most {b.max_seed}"
    return {
        "prompt": (str, Field(min_length=1, max_length=b.max_prompt_chars, pattern=PROMPT_PATTERN,
                              description=f"What to draw: at most {b.max_prompt_chars} characters, not all of them "
                                          "whitespace, no NUL.")),
        "negative_prompt": (str | None, Field(None, max_length=b.max_prompt_chars, pattern=NEGATIVE_PROMPT_PATTERN,
                                              description="What to avoid (used when guidance_scale > 0): empty, or "
                                                          "like prompt.")),
        "seed": (_integer(0, max_seed(b, n)) | None,
                 Field(None, description=f"Seed of {first}. Random when absent; the response reports it.")),
        "num_inference_steps": (_integer(1, b.max_steps) | None,
                                Field(None, description=f"Denoising steps, 1..{b.max_steps} (default: the server's; "
                                                        "Turbo: 8).")),
        "guidance_scale": (float, Field(0.0, ge=0.0, le=30.0, description="Classifier-free guidance; 0 for Turbo.")),
        "output_format": (OutputFormat, Field("png", description="Image encoding.")),
    }


def _openai_fields(b: Bounds, model: tuple, size_description: str) -> dict:
    """The fields of OpenAI's images.generate and images.edit bodies (beyond prompt and the extensions)."""
    return dict(
        model=model,
        n=(_integer(1, b.max_images), Field(1, description=f"Number of images, 1..{b.max_images}.")),
        size=(str, Field("auto", pattern=size_pattern(b), description=size_description)),
        response_format=(Literal["b64_json"], Field("b64_json", description="Only b64_json (images are not stored).")),
        output_compression=(_integer(0, 100) | None, Field(None, description="Quality for jpeg/webp, 0..100.")),
        quality=_compatibility(32), background=_compatibility(32), moderation=_compatibility(32),
        user=(str | None, Field(None, max_length=256, description="Accepted for compatibility; never logged.")),
        stream=(Annotated[bool, BeforeValidator(_only_bool)], Field(False, description=(
            "true: answer text/event-stream with OpenAI's streamed image events: `partial_images` previews an image "
            "(`*.partial_image`), then each image (`*.completed`; with n > 1 the images' events interleave, each "
            "naming its `image_index` and `seed`)."))),
        partial_images=(_integer(0, MAX_PARTIAL_IMAGES) | None, Field(None, description=(
            f"With stream: previews an image, 0..{MAX_PARTIAL_IMAGES} (default 0), evenly spaced over its steps, from "
            "the latents (a quarter of the image's side; no VAE decode)."))),
        progress_events=(Annotated[bool, BeforeValidator(_only_bool)], Field(False, description=(
            "With stream: a `zimage.progress` event after each denoising step ({image_index, seed, step, "
            "total_steps}); off by default, as OpenAI's clients know no such event."))),
    )


def _compatibility(max_length: int) -> tuple:
    return str | None, Field(None, max_length=max_length, description="Accepted for compatibility; ignored.")


def _control(b: Bounds, file_part: str) -> dict:
    """The fields of a request a ControlNet guides (the deployments that serve one)."""
    return {
        "control_image": (str | None, Field(None, max_length=base64_length(b.max_upload_bytes), description=(
            f"The control map the ControlNet follows (edges, depth, pose, HED, MLSD; PNG, JPEG, WebP, GIF or BMP, at "
            f"most {b.max_upload_bytes} bytes and {b.max_upload_pixels} pixels): base64 or a data: URL{file_part}. "
            "Resized to the image's size, as diffusers resizes it. With an image and a mask (edits): ControlNet "
            "inpainting."))),
        "controlnet_conditioning_scale": (float | None, Field(None, ge=0, le=MAX_CONTROL_SCALE, description=(
            f"How strongly the control applies, 0..{MAX_CONTROL_SCALE:g} (default {DEFAULT_CONTROL_SCALE}, "
            "diffusers'). Only with a control_image."))),
        "control_preprocess": (Preprocess, Field("none", description=(
            "none: control_image already is the control map; canny: edges of control_image, computed by the server "
            f"(OpenCV Canny, thresholds {CANNY_LOW} and {CANNY_HIGH})."))),
    }


@lru_cache(maxsize=None)
def wire_types(bounds: Bounds = Bounds(), model_name: str | None = None, adapters: tuple[str, ...] = (),
               controlnet: bool = False) -> WireTypes:
    """The request types of a deployment with these bounds that serves ``model_name`` and the LoRA ``adapters``
    (``model`` names one of them; None: ``model`` may be any name), and a ControlNet or not (the control fields).
    Cached: one set of classes per deployment."""
    b = bounds
    sizes = f"{b.min_side}..{b.max_side}, a multiple of {SIZE_MULTIPLE}"
    side = _integer(b.min_side, b.max_side, SIZE_MULTIPLE) | None
    served = (model_name, *adapters) if model_name else ()
    model = (Literal[served] | None, Field(None, description=(  # type: ignore[valid-type]
        "The served model's name" + (", or one of its LoRA adapters'" if adapters else "") +
        " (see /v1/models); absent: the base model."))) \
        if served else (str | None, Field(None, max_length=256, description="The served model's name."))
    # a deployment with adapters takes lora_scale (with an adapter only: the service refuses it for the base)
    lora = {"lora_scale": (float | None, Field(None, ge=0, le=MAX_LORA_SCALE, description=(
        f"How strongly the LoRA adapter named by `model` applies, 0..{MAX_LORA_SCALE:g} (default: its configured "
        "scale). Only with an adapter.")))} if adapters else {}
    sized = f"WIDTHxHEIGHT, each side {sizes}"
    control = _control(b, " in a JSON body") if controlnet else {}
    images = create_model(
        "ImagesRequest", __base__=ImagesRequest, __doc__=ImagesRequest.__doc__, __module__=__name__,
        **_common(b, b.max_images), **lora, **control,
        **_openai_fields(b, model, f"{sized}; 'auto': the server's default size."),
        style=_compatibility(32),
    )
    upload = base64_length(b.max_upload_bytes)
    edits = create_model(
        "EditsRequest", __base__=EditsRequest, __doc__=EditsRequest.__doc__, __module__=__name__,
        **_common(b, b.max_images), **lora, **(_control(b, " in a JSON body; a file part in multipart") if controlnet else {}),
        **_openai_fields(b, model, f"{sized}: the input (and mask) are resized to it first; 'auto': the input's "
                                   f"size, within {sizes} (scaled down to fit, each side rounded down)."),
        image=(str | None, Field(None, max_length=upload,
                                 description=f"The image to edit (PNG, JPEG, WebP, GIF or BMP, at most "
                                             f"{b.max_upload_bytes} bytes and {b.max_upload_pixels} pixels): "
                                             "base64 or a data: URL in a JSON body; a file part in multipart. "
                                             "Required.")),
        mask=(str | None, Field(None, max_length=upload,
                                description="What to repaint (inpainting), the image's size: transparent pixels "
                                            "(OpenAI's convention) or, without alpha, white ones. Absent: image "
                                            "to image.")),
        strength=(float | None, Field(None, gt=0, le=1, description=(
            "How far from the input, in (0, 1]; the transformer runs steps - int(steps - steps x strength) times (at least 1). "
            "Default 0.6, or 1.0 with a mask." + (" Not with a control_image (ControlNet inpainting generates from "
                                                  "noise)." if controlnet else "")))),
        input_fidelity=_compatibility(32),
    )
    generate = create_model(
        "GenerateRequest", __base__=GenerateRequest, __doc__=GenerateRequest.__doc__, __module__=__name__,
        **_common(b, 1), **lora, **control, model=model,
        width=(side, Field(None, description=f"Width in pixels, {sizes} (default: the server's).")),
        height=(side, Field(None, description=f"Height in pixels, {sizes} (default: the server's).")),
    )
    return WireTypes(images, generate, edits)


# ---- the response types -----------------------------------------------------------------------------


class ImageData(BaseModel):
    b64_json: str
    seed: int
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str
    seed: int
    model: str


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models`` (OpenAI's Model object, plus what the served checkpoint is)."""

    id: str = Field(description="The name requests may give as `model`.")
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "zimage-serve"
    root: str = Field(description="The checkpoint served (a hub id or a directory).")
    parent: str | None = Field(None, description="For a LoRA adapter: the id of the model it applies to.")
    random_weights: bool | None = Field(None, description="True for the embedded random-weight test checkpoint "
                                                          "(its images are noise); absent until a generator reports.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- the streamed responses' events (OpenAI's ImageGenStreamEvent / ImageEditStreamEvent, with extensions) ----

ZERO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
              "total_tokens": 0}  # OpenAI's event requires usage; images are not counted in tokens here


def stream_event(kind: str, request: GenerationRequest, image: GenerationRequest, event: dict, previews: dict[int, int],
                 progress: bool) -> dict | None:
    """The event to send for one of ``image``'s generator events (``{"step", "total", "preview"}`` or
    ``{"result"}``) of the streamed ``request``; ``kind``: "image_generation" or "image_edit"; ``previews``: the
    partial images sent so far, by image index (updated); ``progress``: send a step without preview as a
    ``zimage.progress`` event (else nothing)."""
    index = image.seed - request.seed
    common = {"created_at": int(time.time()), "size": image.size, "output_format": image.output_format,
              "background": "opaque", "quality": "auto", "image_index": index, "seed": image.seed}
    if "result" in event:
        return {"type": f"{kind}.completed", "b64_json": base64.b64encode(event["result"]["image"]).decode(),
                **common, "usage": ZERO_USAGE}
    if event["preview"] is not None:
        previews[index] = previews.get(index, -1) + 1
        return {"type": f"{kind}.partial_image", "b64_json": base64.b64encode(event["preview"]).decode(),
                "partial_image_index": previews[index], **common, "step": event["step"], "total_steps": event["total"]}
    if progress:
        return {"type": "zimage.progress", "image_index": index, "seed": image.seed, "step": event["step"],
                "total_steps": event["total"]}
    return None
