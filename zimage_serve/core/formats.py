"""Output image formats: the one table of names, media types, file extensions and Pillow's names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import InvalidInput

OutputFormat = Literal["png", "jpeg", "webp"]


@dataclass(frozen=True)
class ImageFormat:
    name: str  # as requests name it (OpenAI's output_format)
    media_type: str
    extension: str  # what the batch job writes
    pil_name: str
    suffixes: tuple[str, ...]  # file names the CLI's --out accepts


FORMATS: dict[str, ImageFormat] = {f.name: f for f in (
    ImageFormat("png", "image/png", "png", "PNG", (".png",)),
    ImageFormat("jpeg", "image/jpeg", "jpg", "JPEG", (".jpg", ".jpeg")),
    ImageFormat("webp", "image/webp", "webp", "WEBP", (".webp",)),
)}


def image_format(name: str) -> ImageFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise InvalidInput(f"output_format must be one of {', '.join(FORMATS)}, got {name!r}",
                           param="output_format") from None


def format_of_path(path: str) -> ImageFormat:
    """The format a file name asks for by its suffix (``image.jpg`` -> jpeg)."""
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    for f in FORMATS.values():
        if suffix in f.suffixes:
            return f
    allowed = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    raise InvalidInput(f"--out must end in one of {allowed}, got {path!r}", param="out")
