"""Image encoding for responses: part of the latency, so the defaults favour speed."""

from __future__ import annotations

import io

FAST_PNG_MODES = ("L", "RGB", "RGBA")


def encode_image(image, fmt: str = "png", png_compress_level: int = 1, quality: int | None = None,
                 workers: int = 1) -> bytes:
    """PIL image -> bytes. PNG goes through png.encode_png (parallel bands on at most ``workers`` threads,
    the caller's CPUs; level 1 by default, much faster than PIL's 6 for slightly larger files); jpeg/webp use
    ``quality`` (default 90)."""
    if fmt == "png" and image.mode in FAST_PNG_MODES:
        # the fast PNG path only (JPEG/WebP need neither)
        import numpy as np

        from .png import encode_png

        return encode_png(np.asarray(image), png_compress_level, workers)
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=png_compress_level)
    elif fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality or 90)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=quality or 90, method=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()
