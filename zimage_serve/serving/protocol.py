"""Wire types of the HTTP API, with their bounds, and the one error shape.

``ImagesRequest`` follows OpenAI's Images API (``POST /v1/images/generations``) so that the official
``openai`` client works with ``base_url``; seed, num_inference_steps, guidance_scale and
negative_prompt are extensions (``extra_body`` in the client). ``GenerateRequest`` is the plain
``POST /generate`` body. Bounds that depend on the deployment (sizes, steps, n) are checked again
against the config by the ingress.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..core.bounds import SEED_MAX
from ..core.formats import OutputFormat



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


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=100_000, description="What to draw.")
    negative_prompt: str | None = Field(None, max_length=100_000, description="What to avoid (used when guidance_scale > 0).")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Seed of the first image; image i uses seed + i. Random when absent.")
    num_inference_steps: int | None = Field(None, ge=1, le=1000, description="Denoising steps (Turbo: 8).")
    guidance_scale: float = Field(0.0, ge=0.0, le=30.0, description="Classifier-free guidance; 0 for Turbo.")
    output_format: OutputFormat = Field("png", description="Image encoding.")


class ImagesRequest(_Common):
    """OpenAI ``images.generate`` body."""

    model: str | None = Field(None, max_length=256, description="The served model's name (see /v1/models).")
    n: int = Field(1, ge=1, le=128, description="Number of images.")
    size: str = Field("auto", max_length=32, description="WIDTHxHEIGHT, multiples of 16, or 'auto'.")
    response_format: Literal["b64_json", "url"] = Field("b64_json", description="Only b64_json is served.")
    quality: str | None = Field(None, max_length=32, description="Accepted for compatibility; ignored.")
    style: str | None = Field(None, max_length=32, description="Accepted for compatibility; ignored.")
    background: str | None = Field(None, max_length=32, description="Accepted for compatibility; ignored.")
    moderation: str | None = Field(None, max_length=32, description="Accepted for compatibility; ignored.")
    output_compression: int | None = Field(None, ge=0, le=100, description="Quality for jpeg/webp (0-100).")
    user: str | None = Field(None, max_length=256, description="Accepted for compatibility; never logged.")
    stream: Literal[False] = Field(False, description="Streaming is not supported.")


class GenerateRequest(_Common):
    """``POST /generate``: one image, returned as bytes."""

    width: int | None = Field(None, ge=16, le=16384, description="Width in pixels, a multiple of 16 (default: the server's).")
    height: int | None = Field(None, ge=16, le=16384, description="Height in pixels, a multiple of 16 (default: the server's).")


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
