"""Uploaded images, which are untrusted: bounded in bytes and pixels before they are decoded, then decoded once,
where they arrive (the ingress, the CLI, the batch job's encode stage), into :class:`Pixels`, which is what the
typed request carries on to the generator: no later layer decodes a file again.

- The bytes are bounded by the caller (``max_upload_bytes``); the pixels here, from the header, before any
  pixel is decoded: a decompression bomb is refused without being inflated. Only PNG, JPEG, WebP, GIF and BMP
  decoders are tried.
- A truncated or corrupt file, an animated image (several frames: which one would be meant?) and a file that
  is no image are refused, each naming the field. A camera JPEG with a second image (MPO) is read as its first;
  an image with an EXIF orientation is turned upright (as diffusers' ``load_image`` does), its size too.
- An input image is read as RGB: palette, greyscale, CMYK, 16-bit and alpha images are converted (alpha is
  dropped, as ``Image.convert("RGB")`` drops it).
- A mask is read as diffusers reads one (a greyscale image, white = repaint), except that a mask with an alpha
  channel that is used follows OpenAI's convention: its **transparent** pixels are what to repaint (the mask
  read is 255 - alpha). A mask whose alpha is opaque everywhere is read by its grey levels.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

from .bounds import Bounds, edit_size
from .errors import InvalidInput, TooLarge
from .pixels import Pixels
from .request import GenerationRequest

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
DEFAULT_MAX_PIXELS = Bounds().max_upload_pixels


def _open(data: bytes, param: str, max_pixels: int) -> Image.Image:
    """The decoded image (its first frame for an MPO: a camera JPEG with a second image, such as a gain map),
    turned upright as its EXIF orientation says. Anything a decoder raises on a bad file is an InvalidInput."""
    if not data:
        raise InvalidInput(f"{param} is empty", param=param, code="invalid_image")
    try:  # reads the header only
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # Pillow's own bound (MAX_IMAGE_PIXELS x 2), before ours
        raise InvalidInput(f"{param} has too many pixels (the limit is {max_pixels})", param=param,
                           code="image_too_large") from None
    except Exception:  # UnidentifiedImageError, and whatever a decoder raises on a malformed header
        raise InvalidInput(f"{param} is not a PNG, JPEG, WebP, GIF or BMP image", param=param,
                           code="invalid_image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidInput(f"{param} is {width}x{height}, {width * height} pixels; the limit is {max_pixels}",
                           param=param, code="image_too_large")
    try:
        if image.format != "MPO" and getattr(image, "n_frames", 1) > 1:
            raise InvalidInput(f"{param} is animated ({image.n_frames} frames): send a single frame", param=param,
                               code="invalid_image")
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image
    except InvalidInput:
        raise
    except Exception as e:  # OSError (truncated), struct.error (a corrupt GIF's frames), ...
        raise InvalidInput(f"{param} could not be decoded: the file is truncated or corrupt ({e})", param=param,
                           code="invalid_image") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale (``I;16``, ``I``, ``F``) scaled to 8 bits: Pillow's own conversion clips them."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 255.0 if pixels.max(initial=0) <= 255 else 65535.0
        return Image.fromarray(np.clip(pixels / top * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image


def read_image(data: bytes, param: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An uploaded input image, checked and decoded, as RGB."""
    image = _eight_bit(_open(data, param, max_pixels))
    return image if image.mode == "RGB" else image.convert("RGB")


def _alpha(image: Image.Image) -> Image.Image | None:
    """The image's alpha channel, or None when it has none or it is opaque everywhere."""
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    elif "transparency" in image.info and image.mode in ("L", "RGB"):
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA", "La", "RGBa"):
        return None
    alpha = image.getchannel("A")
    return None if alpha.getextrema() == (255, 255) else alpha


def read_mask(data: bytes, param: str = "mask", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An uploaded mask, checked and decoded, as the greyscale image diffusers reads (white = repaint): from
    its alpha channel (transparent = repaint, OpenAI's convention) when it has one that is used, else from its
    grey levels."""
    image = _eight_bit(_open(data, param, max_pixels))
    alpha = _alpha(image)
    if alpha is not None:
        return Image.eval(alpha, lambda a: 255 - a)
    return image if image.mode == "L" else image.convert("L")


def read_edit_inputs(image: bytes, mask: bytes | None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Pixels, Pixels | None]:
    """An edit's input image (RGB) and mask (L, the same size), each decoded once."""
    picture = read_image(image, "image", max_pixels)
    if mask is None:
        return Pixels.of(picture), None
    stencil = read_mask(mask, "mask", max_pixels)
    if stencil.size != picture.size:
        raise InvalidInput(f"mask is {stencil.width}x{stencil.height} but image is {picture.width}x{picture.height}: "
                           "they must be the same size", param="mask", code="invalid_image")
    return Pixels.of(picture), Pixels.of(stencil)


def read_file(path: str, param: str = "image", bounds: Bounds = Bounds()) -> bytes:
    """An input image's bytes from a file (the CLI's, a batch job's line), bounded like an upload."""
    try:
        size = os.stat(path).st_size
        if size > bounds.max_upload_bytes:
            raise TooLarge(f"{param} {path} is {size} bytes; the limit is {bounds.max_upload_bytes}", param=param)
        with open(path, "rb") as f:
            return f.read(bounds.max_upload_bytes + 1)
    except OSError as e:
        raise InvalidInput(f"can't read {param} {path}: {e.strerror or e}", param=param, code="invalid_image") from None


def with_edit_inputs(request: GenerationRequest, image: bytes, mask: bytes | None, size: tuple[int, int] | None,
                     bounds: Bounds = Bounds()) -> GenerationRequest:
    """``request`` as an edit of ``image`` (inpainting with ``mask``): both checked (bytes, pixels, decoding, the
    same size) and decoded into the request's :class:`Pixels`, made at ``size``, or when None at the input's size
    within the bounds (:func:`edit_size`). The one place that says so, for the HTTP API, the CLI and the batch job."""
    for name, data in (("image", image), ("mask", mask)):
        if data is not None and len(data) > bounds.max_upload_bytes:
            raise TooLarge(f"{name} is over the upload limit of {bounds.max_upload_bytes} bytes", param=name)
    picture, stencil = read_edit_inputs(image, mask, bounds.max_upload_pixels)
    width, height = size or edit_size(*picture.size, bounds)
    edit = request.replace(init_image=picture, mask_image=stencil, width=width, height=height)
    if edit.strength is not None:  # (ControlNet inpainting has none: it generates from noise)
        check_edit_steps(edit.steps, edit.strength)
    return edit


def check_edit_steps(steps: int, strength: float) -> None:
    """An edit of ``steps`` at ``strength`` runs at least one step, as diffusers counts them
    (ZImageImg2ImgPipeline.get_timesteps)."""
    if steps - int(max(steps - steps * strength, 0)) < 1:
        raise InvalidInput(f"strength {strength:g} leaves no denoising step of the {steps}: it must be at "
                           f"least 1/{steps}", param="strength")
