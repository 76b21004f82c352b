"""POST /v1/images/edits on the real application (Ray Serve, real HTTP, the tiny checkpoint): the official openai
client's images.edit (multipart) and JSON bodies, image to image and inpainting equal to stock diffusers, and every
bad input a 4xx in the error shape."""

import base64
import io

import httpx
import numpy as np
import openai
import pytest
import torch
from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline
from PIL import Image

from conftest import max_pixel_diff

PROMPT = "a lighthouse in fog"


def png(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def picture(width=80, height=72, seed=0) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 90.0)], -1)
    rgb += np.random.RandomState(seed).normal(0, 15, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def openai_mask(width=80, height=72) -> Image.Image:
    """OpenAI's convention: an RGBA PNG, transparent where to repaint (the left half)."""
    alpha = np.full((height, width), 255, np.uint8)
    alpha[:, : width // 2] = 0
    rgba = picture(width, height).convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


@pytest.fixture(scope="module")
def stock(stock_pipe):
    pipes = {cls: cls(**stock_pipe.components) for cls in (ZImageImg2ImgPipeline, ZImageInpaintPipeline)}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


def stock_edit(pipe, image, seed, steps=8, **kw):
    return pipe(prompt=PROMPT, image=image, num_inference_steps=steps, guidance_scale=0.0,
                generator=torch.Generator("cpu").manual_seed(seed), **kw).images[0]


@pytest.fixture(scope="module")
def client(app_url):
    return openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0)


def decoded(data) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data.b64_json)))


def test_openai_client_image_to_image_equals_stock(client, stock):
    r = client.images.edit(image=("in.png", png(picture()), "image/png"), prompt=PROMPT, n=2,
                           extra_body={"seed": 11, "strength": 0.6})
    assert r.size == "80x64" and [d.model_extra["seed"] for d in r.data] == [11, 12]  # auto: rounded down to 16s
    resized = stock[ZImageImg2ImgPipeline].image_processor.resize(picture(), 64, 80)
    for d, seed in zip(r.data, (11, 12)):
        assert max_pixel_diff(decoded(d), stock_edit(stock[ZImageImg2ImgPipeline], resized, seed, strength=0.6)) <= 1


def test_openai_client_inpainting_with_an_openai_mask_equals_stock(client, stock):
    r = client.images.edit(image=("in.png", png(picture()), "image/png"), mask=("m.png", png(openai_mask()), "image/png"),
                           prompt=PROMPT, size="64x64", extra_body={"seed": 3, "num_inference_steps": 4})
    pipe = stock[ZImageInpaintPipeline]
    white_repaints = Image.eval(openai_mask().getchannel("A"), lambda a: 255 - a)
    ref = stock_edit(pipe, pipe.image_processor.resize(picture(), 64, 64), 3, steps=4, mask_image=white_repaints,
                     strength=1.0, height=64, width=64)  # inpainting's default strength
    assert r.size == "64x64" and max_pixel_diff(decoded(r.data[0]), ref) <= 1


def test_a_json_body_takes_base64_and_data_urls(app_url, stock):
    image = picture(64, 64, seed=4)
    for encoded in (base64.b64encode(png(image)).decode(),
                    "data:image/png;base64," + base64.encodebytes(png(image)).decode()):  # with line breaks
        r = httpx.post(f"{app_url}/v1/images/edits", json={"prompt": PROMPT, "image": encoded, "seed": 5,
                                                           "strength": 0.3}, timeout=120)
        assert r.status_code == 200, r.text
        ours = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
        assert max_pixel_diff(ours, stock_edit(stock[ZImageImg2ImgPipeline], image, 5, strength=0.3)) <= 1


def _form(**fields):
    return {k: str(v) for k, v in {"prompt": PROMPT, "num_inference_steps": 1, **fields}.items()}


GOOD = png(picture())


@pytest.mark.parametrize("files, data, status, param", [
    ({}, _form(), 400, "image"),  # no image
    ({"image": ("a.txt", b"not an image at all")}, _form(), 400, "image"),
    ({"image": ("a.png", GOOD[: len(GOOD) // 2])}, _form(), 400, "image"),  # truncated
    ({"image": ("bomb.png", png(Image.new("L", (6000, 6000))))}, _form(), 400, "image"),  # 36 M pixels, 40 kB
    ({"image": ("a.gif", b"")}, _form(), 400, "image"),
    ({"image": ("a.png", GOOD), "mask": ("m.png", png(picture(40, 40)))}, _form(), 400, "mask"),  # another size
    ({"image": ("a.png", GOOD)}, _form(strength=0), 400, "strength"),
    ({"image": ("a.png", GOOD)}, _form(strength=1.5), 400, "strength"),
    ({"image": ("a.png", GOOD)}, _form(strength=1e-17, num_inference_steps=8), 400, "strength"),  # no step left
    ({"image": ("a.png", GOOD)}, _form(negative_prompt="x" * 1_100_000), 413, None),  # a text part over the cap
    ({"image": ("a.png", GOOD)}, _form(size="20x20"), 400, "size"),
    ({"image": ("a.png", GOOD)}, _form(n="two"), 400, "n"),
    ({"image": ("a.png", GOOD)}, _form(colour="red"), 400, "colour"),
    ({"image": ("a.png", png(picture(200, 40)))}, _form(), 400, "image"),  # auto size: 40 px is under min_side
    ({"image": ("big.png", b"\x89PNG" + b"\0" * 20_000_000)}, _form(), 413, "image"),  # over max_upload_bytes
])
def test_bad_input_is_a_4xx_naming_the_field(app_url, files, data, status, param):
    if not files:  # multipart still: the fields as parts without a filename
        files, data = {k: (None, v) for k, v in data.items()}, {}
    r = httpx.post(f"{app_url}/v1/images/edits", files=files, data=data, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error


def test_every_input_mode_is_converted_and_edited(app_url):
    modes = {"P": picture().convert("P"), "L": picture().convert("L"), "CMYK": picture().convert("CMYK"),
             "I;16": Image.fromarray((np.asarray(picture().convert("L")).astype(np.uint16) * 257)), "RGBA": openai_mask()}
    for mode, image in modes.items():
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        r = httpx.post(f"{app_url}/v1/images/edits", files={"image": (f"in.{fmt.lower()}", png(image, fmt))},
                       data=_form(), timeout=60)
        assert r.status_code == 200 and r.json()["size"] == "80x64", (mode, r.text)
        stages = [part.split(";")[0] for part in r.headers["Server-Timing"].split(", ")]
        assert stages[:2] == ["upload_read", "upload_decode"] and stages[-1] == "ingress" and "denoise" in stages


def test_a_body_neither_json_nor_multipart_is_415(app_url):
    r = httpx.post(f"{app_url}/v1/images/edits", content=b"prompt=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]["message"]
