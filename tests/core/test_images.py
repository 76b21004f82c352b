"""Uploaded images, untrusted: bounded before decoding, refused by name, converted to what the modes read."""

import io

import numpy as np
import pytest
from PIL import Image

from zimage_serve.core.errors import InvalidInput
from zimage_serve.core.images import read_edit_inputs, read_image, read_mask
from zimage_serve.core.pixels import Pixels


def encoded(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 60, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["P", "L", "LA", "RGBA", "CMYK", "I;16"])
def test_inputs_of_every_mode_are_read_as_rgb_of_their_size(mode):
    image = RGB.convert("L").convert(mode) if mode == "I;16" else RGB.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    read = read_image(encoded(image, fmt))
    assert read.mode == "RGB" and read.size == (60, 40)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    levels = (np.arange(60 * 40).reshape(40, 60) * 27).astype(np.uint16)  # up to 64773
    read = np.asarray(read_image(encoded(Image.fromarray(levels))))
    assert read[-1, -1, 0] == round(64773 / 65535 * 255) and read[0, 0, 0] == 0 and read[20, 30, 0] not in (0, 255)


@pytest.mark.parametrize("data, says", [
    (b"", "image is empty"),
    (b"GIF89a but not really", "not a PNG, JPEG, WebP, GIF or BMP image"),
    (b"%PDF-1.7\n", "not a PNG, JPEG, WebP, GIF or BMP image"),
    (encoded(RGB)[:300], "truncated or corrupt"),
])
def test_what_is_no_whole_image_is_refused_naming_the_field(data, says):
    with pytest.raises(InvalidInput, match=says) as e:
        read_image(data)
    assert e.value.param == "image"


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = encoded(Image.new("L", (6000, 6000)))  # 36 M pixels in about 40 kB
    assert len(bomb) < 100_000
    with pytest.raises(InvalidInput, match="36000000 pixels; the limit is 16777216") as e:
        read_image(bomb)
    assert e.value.code == "image_too_large"


def test_an_animated_image_is_refused():
    buf = io.BytesIO()
    RGB.save(buf, "GIF", save_all=True, append_images=[RGB.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    with pytest.raises(InvalidInput, match="animated .2 frames."):
        read_image(buf.getvalue())


def test_a_mask_with_alpha_repaints_its_transparent_pixels_and_one_without_its_white_ones():
    alpha = np.full((40, 60), 255, np.uint8)
    alpha[:10] = 0
    rgba = RGB.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    mask = np.asarray(read_mask(encoded(rgba)))
    assert (mask[:10] == 255).all() and (mask[10:] == 0).all()  # OpenAI's convention, as diffusers' white = repaint
    grey = np.asarray(read_mask(encoded(RGB)))
    assert (grey == np.asarray(RGB.convert("L"))).all()
    opaque = np.asarray(read_mask(encoded(RGB.convert("RGBA"))))  # alpha unused: read by its grey levels
    assert (opaque == grey).all()


def test_image_and_mask_must_be_the_same_size():
    image, mask = read_edit_inputs(encoded(RGB), encoded(RGB.convert("L")))
    assert (image.mode, image.size, mask.mode, mask.size) == ("RGB", (60, 40), "L", (60, 40))
    with pytest.raises(InvalidInput, match="mask is 30x30 but image is 60x40") as e:
        read_edit_inputs(encoded(RGB), encoded(RGB.resize((30, 30))))
    assert e.value.param == "mask"


def test_a_corrupt_file_of_any_kind_is_an_invalid_input_never_another_error():
    import random

    buf = io.BytesIO()
    RGB.save(buf, "GIF", save_all=True, append_images=[RGB.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    for source in (buf.getvalue(), encoded(RGB), encoded(RGB, "JPEG"), encoded(RGB, "WEBP")):
        for cut in range(16, len(source), max(1, len(source) // 40)):
            data = bytearray(source[:cut])
            data[random.Random(cut).randrange(6, len(data))] ^= 0xFF
            try:
                read_image(bytes(data))
            except InvalidInput:
                pass  # anything else (struct.error from a GIF's frames, say) fails the test


def test_a_photo_is_turned_upright_and_a_camera_jpeg_with_a_second_image_is_its_first():
    rotated = Image.new("RGB", (60, 40))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° to display
    jpeg = encoded(rotated, "JPEG", exif=exif.tobytes())
    assert read_image(jpeg).size == (40, 60) and read_edit_inputs(jpeg, None)[0].size == (40, 60)
    mpo = encoded(RGB, "MPO", save_all=True, append_images=[RGB.resize((30, 20))])
    assert Image.open(io.BytesIO(mpo)).format == "MPO" and read_image(mpo).size == (60, 40)


def test_an_edit_must_leave_at_least_one_denoising_step():
    from zimage_serve.core.images import with_edit_inputs
    from zimage_serve.core.request import GenerationRequest

    request = GenerationRequest("x", seed=1, steps=8)
    assert with_edit_inputs(request.replace(strength=0.13), encoded(RGB), None, (64, 64)).strength == 0.13
    with pytest.raises(InvalidInput, match="leaves no denoising step of the 8") as e:
        with_edit_inputs(request.replace(strength=1e-17), encoded(RGB), None, (64, 64))
    assert e.value.param == "strength"


def test_an_upload_is_decoded_once_into_pixels_that_travel_pickled_and_read_back_unchanged():
    import pickle

    from zimage_serve.core.images import with_edit_inputs
    from zimage_serve.core.request import GenerationRequest

    edit = with_edit_inputs(GenerationRequest("a fox", seed=1), encoded(RGB), encoded(RGB.convert("L")), (64, 64))
    carried = pickle.loads(pickle.dumps(edit))  # how Ray hands it on
    assert carried == edit and isinstance(carried.init_image, Pixels)
    assert (np.asarray(carried.init_image.image()) == np.asarray(RGB)).all()
    assert (np.asarray(carried.mask_image.image()) == np.asarray(RGB.convert("L"))).all()
    assert "data" not in repr(carried.init_image)  # a request's repr (logs) does not print its pixels
