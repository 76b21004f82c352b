"""What a request carries of an image: its decoded 8-bit pixels (``core.images`` decodes uploads into them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Pixels:
    """An upload, checked and decoded: its 8-bit pixels as they travel in a request (across Ray handles, in Ray
    Data rows). ``mode`` is ``"RGB"`` for an input image, ``"L"`` for a mask (white = repaint). :meth:`image` is
    the PIL image again, without decoding anything."""

    mode: str
    width: int
    height: int
    data: bytes = field(repr=False)  # width x height x channels bytes, row by row

    @classmethod
    def of(cls, image: Image.Image) -> "Pixels":
        return cls(image.mode, image.width, image.height, image.tobytes())

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def image(self) -> Image.Image:
        return Image.frombytes(self.mode, self.size, self.data)
