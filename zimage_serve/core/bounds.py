"""Bounds and their checks, shared by the CLI, the HTTP API and the batch job: each limit is defined here once."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInput

SIZE_MULTIPLE = 16  # the VAE's 8x times the DiT's 2x2 patches
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
MAX_TEXT_TOKENS = 512  # the pipeline's max_sequence_length: longer prompts are truncated
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


@dataclass(frozen=True)
class Bounds:
    """What a request may ask for; the service's config sets these."""

    min_side: int = 64
    max_side: int = 2048
    max_steps: int = 50
    max_images: int = 8
    max_prompt_chars: int = 10_000
    max_seed: int = SEED_MAX
    max_upload_bytes: int = 20_000_000  # an uploaded image (edits), encoded
    max_upload_pixels: int = 4096 * 4096  # an uploaded image, decoded: checked from its header, before decoding


def check_dimension(value: int, name: str, bounds: Bounds = Bounds(), param: str | None = None) -> int:
    if value % SIZE_MULTIPLE or not bounds.min_side <= value <= bounds.max_side:
        raise InvalidInput(f"{name} must be a multiple of {SIZE_MULTIPLE} between {bounds.min_side} and "
                           f"{bounds.max_side}, got {value}", param=param or name)
    return value


def parse_size(text: str, bounds: Bounds = Bounds(), param: str = "size") -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height), checked against ``bounds``."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*", text or "")
    if not m:
        raise InvalidInput(f"{param} must look like 1024x1024 (WIDTHxHEIGHT), got {text!r}", param=param)
    w, h = int(m.group(1)), int(m.group(2))
    check_dimension(w, f"{param} width", bounds, param)
    check_dimension(h, f"{param} height", bounds, param)
    return w, h


def check_steps(steps: int, bounds: Bounds = Bounds()) -> int:
    if not 1 <= steps <= bounds.max_steps:
        raise InvalidInput(f"steps must be between 1 and {bounds.max_steps}, got {steps}", param="num_inference_steps")
    return steps


def check_prompt(prompt: str, bounds: Bounds = Bounds(), param: str = "prompt") -> str:
    if not prompt or not prompt.strip():
        raise InvalidInput(f"{param} must not be empty", param=param)
    if len(prompt) > bounds.max_prompt_chars:
        raise InvalidInput(f"{param} is {len(prompt)} characters; the limit is {bounds.max_prompt_chars}", param=param)
    if "\x00" in prompt:
        raise InvalidInput(f"{param} contains a NUL character", param=param)
    return prompt


def check_seed(seed: int, bounds: Bounds = Bounds()) -> int:
    if not 0 <= seed <= bounds.max_seed:
        raise InvalidInput(f"seed must be between 0 and {bounds.max_seed}, got {seed}", param="seed")
    return seed


def parse_bytes(text: str) -> int:
    """'24GiB', '16 GB', '8g' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text or "")
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidInput(f"memory size must look like 24GiB or 16GB, got {text!r}", param="vram")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def check_strength(strength: float) -> float:
    """An edit's strength: how far from the input image, in (0, 1] (1: all of the steps; the input only sets
    what is kept outside a mask)."""
    if not 0 < strength <= 1:
        raise InvalidInput(f"strength must be greater than 0 and at most 1, got {strength}", param="strength")
    return float(strength)


def edit_size(width: int, height: int, bounds: Bounds = Bounds(), param: str = "image") -> tuple[int, int]:
    """The size an edit of a ``width`` x ``height`` input is made at when none is asked for: the input's, scaled
    down to fit ``bounds.max_side`` when it is larger (keeping its aspect), each side rounded down to a multiple
    of SIZE_MULTIPLE (as diffusers' image processor rounds it)."""
    scale = min(1.0, bounds.max_side / max(width, height))
    w, h = (int(side * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE for side in (width, height))
    if min(w, h) < bounds.min_side:
        raise InvalidInput(f"{param} is {width}x{height}: an edit is made at a size whose sides are multiples of "
                           f"{SIZE_MULTIPLE} between {bounds.min_side} and {bounds.max_side}, which this image's "
                           f"aspect does not allow ({w}x{h}); send a larger image or ask for a size", param=param)
    return w, h


def base64_length(max_bytes: int) -> int:
    """The longest base64 text, or data: URL (its header up to 64 characters), of at most ``max_bytes`` bytes."""
    return 4 * -(-max_bytes // 3) + 64


MAX_LORA_SCALE = 2.0


def check_lora_scale(scale: float, param: str = "lora_scale") -> float:
    """An adapter's scale, in [0, MAX_LORA_SCALE]."""
    if not 0.0 <= scale <= MAX_LORA_SCALE:
        raise InvalidInput(f"{param} must be from 0 to {MAX_LORA_SCALE:g}, got {scale:g}", param=param)
    return float(scale)


def parse_lora(spec: str, param: str = "--lora") -> tuple[str, float | None]:
    """``SOURCE[:SCALE]`` as (source, scale or None: the adapter's own)."""
    source, sep, tail = spec.rpartition(":")
    if sep and source:
        try:
            return source, check_lora_scale(float(tail), param)
        except ValueError as e:
            if isinstance(e, InvalidInput):
                raise
    return spec, None
