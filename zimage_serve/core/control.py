"""Control images: the map a ControlNet follows (edges, depth, pose, HED, MLSD), as the user made it, or edges
computed here from a photo (``canny``). Decoded and bounded like every upload (``core.images``).

``canny``: OpenCV's Canny edge detector on the image's greyscale, hysteresis thresholds 100 and 200 (the values of
diffusers' and the ControlNet papers' canny examples), 3x3 Sobel aperture, L1 gradient; white edges on black, as
RGB. OpenCV is imported only when a request asks for it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from .bounds import Bounds
from .errors import InvalidInput, TooLarge
from .pixels import Pixels
from .request import GenerationRequest

INPAINT_NEEDS_2X = "inpainting with a ControlNet needs a 2.x Union ControlNet (33 control channels)"

Preprocess = Literal["none", "canny"]
PREPROCESS = ("none", "canny")
CANNY_LOW, CANNY_HIGH = 100, 200


def canny(image: Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> Image.Image:
    """The edges of ``image`` (white on black, RGB): OpenCV's Canny on its greyscale."""
    import cv2  # only when a request asks for canny

    edges = cv2.Canny(np.asarray(image.convert("L")), low, high)
    return Image.fromarray(edges).convert("RGB")


def control_map(data: bytes, preprocess: str = "none", bounds: Bounds = Bounds()) -> Pixels:
    """The control image of an upload: checked and decoded (RGB), then preprocessed."""
    from .images import read_image  # (images imports request, which this module's callers hold too)

    if preprocess not in PREPROCESS:
        raise InvalidInput(f"control_preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}",
                           param="control_preprocess")
    if len(data) > bounds.max_upload_bytes:
        raise TooLarge(f"control_image is over the upload limit of {bounds.max_upload_bytes} bytes",
                       param="control_image")
    image = read_image(data, "control_image", bounds.max_upload_pixels)
    return Pixels.of(canny(image) if preprocess == "canny" else image)


def with_control_image(request: GenerationRequest, data: bytes, preprocess: str = "none",
                       bounds: Bounds = Bounds(), scale: float | None = None) -> GenerationRequest:
    """``request`` guided by the control image ``data`` (at ``scale``, default diffusers' 0.75). The control image
    may have any size: the ControlNet pipeline resizes it to the request's, as stock diffusers does."""
    return request.replace(control_image=control_map(data, preprocess, bounds),
                           control_scale=scale if scale is not None else request.control_scale)
