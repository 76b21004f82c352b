"""A ControlNet served over HTTP on the real application (real Ray Serve, real HTTP, the tiny checkpoint and a random
2.1 Union ControlNet): generations (the openai client's extra_body), /generate and edits (JSON and multipart) take a
control image and equal stock ZImageControlNetPipeline / ZImageControlNetInpaintPipeline; with a LoRA adapter too;
bad control input gets a 4xx naming the field; a deployment without a ControlNet names the setting."""

import base64
import io

import httpx
import openai
import pytest
import torch
from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetModel, ZImageControlNetPipeline
from PIL import Image

from conftest import edges, max_pixel_diff, picture, png, square_mask

PROMPT = "a lighthouse on a cliff"


def b64(image: Image.Image) -> str:
    return base64.b64encode(png(image)).decode()


def decoded(data: str | bytes) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data) if isinstance(data, str) else data))


@pytest.fixture(scope="module")
def stock(tiny_path, tiny_controlnets):
    from diffusers import ZImagePipeline

    model = ZImageControlNetModel.from_pretrained(tiny_controlnets["2.1"])
    base = ZImagePipeline.from_pretrained(tiny_path, dtype=torch.float32)  # its own: a LoRA test loads adapters
    pipes = {cls: cls(controlnet=model, **base.components) for cls in (ZImageControlNetPipeline,
                                                                     ZImageControlNetInpaintPipeline)}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


def stock_control(pipe, seed, control, scale=0.75, **kw):
    return pipe(prompt=PROMPT, control_image=control, controlnet_conditioning_scale=scale, height=64, width=64,
                num_inference_steps=8, guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(seed),
                **kw).images[0]


def test_openai_generate_with_a_control_image_equals_stock(lora_url, stock):
    client = openai.OpenAI(base_url=f"{lora_url}/v1", api_key="unused", max_retries=0)
    r = client.images.generate(prompt=PROMPT, size="64x64", n=2, extra_body={
        "seed": 5, "control_image": b64(edges()), "controlnet_conditioning_scale": 1.3})
    for i, image in enumerate(r.data):
        assert max_pixel_diff(decoded(image.b64_json), stock_control(stock[ZImageControlNetPipeline], 5 + i, edges(),
                                                                     scale=1.3)) <= 1


def test_generate_route_with_canny_and_a_data_url(lora_url, stock):
    from zimage_serve.core.control import canny

    photo = square_mask(96, 96).convert("RGB")  # another size than the image's: resized as diffusers resizes
    r = httpx.post(f"{lora_url}/generate", timeout=120, json={
        "prompt": PROMPT, "seed": 2, "width": 64, "height": 64, "control_preprocess": "canny",
        "control_image": "data:image/png;base64," + b64(photo)})
    assert r.status_code == 200, r.text
    assert max_pixel_diff(decoded(r.content), stock_control(stock[ZImageControlNetPipeline], 2, canny(photo))) <= 1


@pytest.mark.parametrize("multipart", [True, False])
def test_an_edit_with_a_mask_and_a_control_image_is_controlnet_inpainting_equal_to_stock(lora_url, stock, multipart):
    fields = {"prompt": PROMPT, "seed": "7" if multipart else 7, "size": "64x64"}
    if multipart:
        files = {"image": ("i.png", png(picture())), "mask": ("m.png", png(square_mask())),
                 "control_image": ("c.png", png(edges()))}
        r = httpx.post(f"{lora_url}/v1/images/edits", data=fields, files=files, timeout=120)
    else:
        r = httpx.post(f"{lora_url}/v1/images/edits", timeout=120, json={
            **fields, "image": b64(picture()), "mask": b64(square_mask()), "control_image": b64(edges())})
    assert r.status_code == 200, r.text
    ref = stock_control(stock[ZImageControlNetInpaintPipeline], 7, edges(), image=picture(), mask_image=square_mask())
    assert max_pixel_diff(decoded(r.json()["data"][0]["b64_json"]), ref) <= 1


def test_the_openai_client_edit_sends_a_control_image_in_extra_body(lora_url, stock):
    client = openai.OpenAI(base_url=f"{lora_url}/v1", api_key="unused", max_retries=0)
    r = client.images.edit(image=("i.png", png(picture()), "image/png"), mask=("m.png", png(square_mask()), "image/png"),
                           prompt=PROMPT,  # size auto: the input's, 64x64
                           extra_body={"seed": 8, "control_image": b64(edges())})
    ref = stock_control(stock[ZImageControlNetInpaintPipeline], 8, edges(), image=picture(), mask_image=square_mask())
    assert max_pixel_diff(decoded(r.data[0].b64_json), ref) <= 1


def test_a_lora_adapter_and_a_control_image_in_one_request(lora_url, stock, loras):
    pipe = stock[ZImageControlNetPipeline]
    pipe.load_lora_weights(loras["oil"], adapter_name="oil")
    try:
        pipe.set_adapters(["oil"], [1.4])
        ref = stock_control(pipe, 4, edges())
    finally:
        pipe.unload_lora_weights()
    r = httpx.post(f"{lora_url}/v1/images/generations", timeout=120, json={
        "prompt": PROMPT, "seed": 4, "size": "64x64", "model": "oil", "lora_scale": 1.4, "control_image": b64(edges())})
    assert r.status_code == 200, r.text
    assert max_pixel_diff(decoded(r.json()["data"][0]["b64_json"]), ref) <= 1
    without = stock_control(stock[ZImageControlNetPipeline], 4, edges())
    assert max_pixel_diff(ref, without) > 8  # the adapter shows


@pytest.mark.parametrize("route, body, param, code, words", [
    ("generations", {"control_image": base64.b64encode(b"not an image").decode()}, "control_image", "invalid_image",
     "not a PNG"),
    ("generations", {"control_image": "@@@"}, "control_image", "invalid_image", "not valid base64"),
    ("generations", {"control_image": "C", "controlnet_conditioning_scale": 2.5}, "controlnet_conditioning_scale",
     "invalid_value", "between 0 and 2"),
    ("generations", {"control_image": "C", "control_preprocess": "sobel"}, "control_preprocess", "invalid_value",
     "canny"),
    ("generations", {"controlnet_conditioning_scale": 1.0}, "controlnet_conditioning_scale", "invalid_value",
     "needs a control_image"),
    ("edits", {"image": "I", "control_image": "C"}, "control_image", "invalid_value", "needs a mask"),
    ("edits", {"image": "I", "mask": "M", "control_image": "C", "strength": 0.5}, "strength", "invalid_value",
     "does not apply"),
])
def test_bad_control_input_is_a_400_naming_the_field(lora_url, route, body, param, code, words):
    good = {"I": b64(picture()), "M": b64(square_mask()), "C": b64(edges())}
    body = {k: good.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    r = httpx.post(f"{lora_url}/v1/images/{route}", json={"prompt": PROMPT, "size": "64x64", **body}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code) and words in error["message"], error


def test_a_large_control_image_in_a_multipart_text_field_is_read(lora_url, stock):
    """The openai client sends extra_body's control_image as a form field: one over max_body_bytes (1 MB) is read."""
    import numpy as np
    from PIL import Image

    noisy = Image.fromarray(np.random.RandomState(1).randint(0, 255, (640, 640, 3), dtype=np.uint8))  # ~1.2 MB PNG
    assert len(b64(noisy)) > 1_000_000
    files = {"image": ("i.png", png(picture())), "mask": ("m.png", png(square_mask()))}
    r = httpx.post(f"{lora_url}/v1/images/edits", data={"prompt": PROMPT, "seed": "9", "control_image": b64(noisy)},
                   files=files, timeout=120)
    assert r.status_code == 200, r.text
    ref = stock_control(stock[ZImageControlNetInpaintPipeline], 9, noisy, image=picture(), mask_image=square_mask())
    assert max_pixel_diff(decoded(r.json()["data"][0]["b64_json"]), ref) <= 1


def test_an_empty_control_image_part_is_a_400_not_a_plain_edit(lora_url):
    files = {"image": ("i.png", png(picture())), "mask": ("m.png", png(square_mask())), "control_image": ("c.png", b"")}
    r = httpx.post(f"{lora_url}/v1/images/edits", data={"prompt": PROMPT}, files=files, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "control_image", r.text


def test_a_control_image_over_the_upload_limit_is_413(lora_url):
    r = httpx.post(f"{lora_url}/v1/images/generations", timeout=60,
                   json={"prompt": PROMPT, "control_image": "A" * 30_000_000})
    assert r.status_code == 413 and r.json()["error"]["code"] in ("upload_too_large", "body_too_large"), r.text


def test_a_deployment_without_a_controlnet_names_the_setting(app_url):
    for route, body in (("/v1/images/generations", {"control_image": b64(edges())}),
                        ("/generate", {"controlnet_conditioning_scale": 1.0})):
        r = httpx.post(f"{app_url}{route}", json={"prompt": PROMPT, **body}, timeout=60)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "controlnet_not_configured" and "`controlnet`" in error["message"], error
    r = httpx.post(f"{app_url}/v1/images/edits", data={"prompt": PROMPT}, timeout=60,
                   files={"image": ("i.png", png(picture())), "control_image": ("c.png", png(edges()))})
    assert r.status_code == 400 and r.json()["error"]["code"] == "controlnet_not_configured", r.text


def test_readyz_says_which_controlnet_is_served_and_where(lora_url, tiny_controlnets):
    info = httpx.get(f"{lora_url}/readyz", timeout=30).json()
    assert info["controlnet"] == {"source": str(tiny_controlnets["2.1"]), "placement": "cpu", "control_layers": 1,
                                  "version": "2.x (with inpaint)"}
    assert info["plan"]["controlnet"] == "cpu"
