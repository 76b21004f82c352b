"""png.encode_png: valid files that decode to the same pixels, for every shape and level, against Pillow."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from zimage_serve.model.imaging import encode_image
from zimage_serve.model.png import encode_png


def _decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()  # verifies every chunk's CRC and the zlib stream's Adler-32 on the way
    return np.asarray(image)


def _smooth(height, width, channels, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (xx[..., None] * (1 + np.arange(channels)) + yy[..., None] * 3) % 256
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (64, 64, 4), (257, 129, 3), (300, 200, 1), (1024, 1024, 3)])
@pytest.mark.parametrize("level", [0, 1, 6])
def test_decodes_to_the_same_pixels(shape, level):
    pixels = _smooth(*shape)
    assert np.array_equal(_decode(encode_png(pixels, level)), pixels.squeeze(2) if shape[2] == 1 else pixels)


def test_noise_and_greyscale_2d():
    pixels = np.random.default_rng(1).integers(0, 256, (333, 97), dtype=np.uint8)
    assert np.array_equal(_decode(encode_png(pixels)), pixels)


def test_the_zlib_stream_is_one_valid_stream():
    pixels = _smooth(512, 300, 3)
    data = encode_png(pixels, 1)
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    raw = zlib.decompress(idat)  # raises on a bad join or a wrong Adler-32
    assert len(raw) == 512 * (1 + 300 * 3)


def test_size_close_to_pillow_at_the_same_level():
    pixels = _smooth(512, 512, 3)
    ours = len(encode_png(pixels, 1))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    assert ours < 1.1 * len(buf.getvalue())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="2 channels"):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="level 10"):
        encode_png(np.zeros((4, 4, 3), np.uint8), 10)


def test_encode_image_uses_it_for_rgb_and_pillow_for_other_modes():
    rgb = Image.fromarray(_smooth(40, 30, 3))
    assert np.array_equal(_decode(encode_image(rgb, "png")), np.asarray(rgb))
    palette = rgb.convert("P")
    assert np.array_equal(_decode(encode_image(palette, "png")), np.asarray(palette))
