"""LoRA adapters served over HTTP on the real application (Ray Serve's model multiplexing, real HTTP, the tiny
checkpoint): the openai client's ``model`` names an adapter and its image equals stock diffusers'
load_lora_weights + set_adapters (within one level, as every HTTP test of the base: the engine's own
conversion to pixels rounds a rare value the other way; tests/model/test_adapters.py checks the engine exactly); a replica holding one adapter at a time evicts and reloads
under interleaved concurrent requests without mixing them; bad adapters and names get clear 4xx answers."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from diffusers import ZImagePipeline
from PIL import Image

from conftest import max_pixel_diff, stock_image

PROMPT = "a paper boat on a pond"


@pytest.fixture(scope="module")
def stock(tiny_path, loras):
    pipe = ZImagePipeline.from_pretrained(tiny_path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for name in ("ink", "oil"):
        pipe.load_lora_weights(loras[name], adapter_name=name)
    return pipe


def stock_with(pipe, adapter, scale, seed):
    if adapter is None:
        pipe.disable_lora()
    else:
        pipe.enable_lora()
        pipe.set_adapters([adapter], [scale])
    return stock_image(pipe, PROMPT, seed, 64, 64)


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_the_openai_model_field_selects_an_adapter_equal_to_stock_at_its_scale(lora_url, stock):
    client = openai.OpenAI(base_url=f"{lora_url}/v1", api_key="unused", max_retries=0)
    ink = client.images.generate(model="ink", prompt=PROMPT, size="64x64", extra_body={"seed": 3})
    assert ink.model == "ink"
    assert max_pixel_diff(decoded(ink.data[0].b64_json), stock_with(stock, "ink", 0.7, 3)) <= 1  # configured 0.7
    oil = client.images.generate(model="oil", prompt=PROMPT, size="64x64", extra_body={"seed": 3, "lora_scale": 1.6})
    assert max_pixel_diff(decoded(oil.data[0].b64_json), stock_with(stock, "oil", 1.6, 3)) <= 1
    base = client.images.generate(prompt=PROMPT, size="64x64", extra_body={"seed": 3})
    assert max_pixel_diff(decoded(base.data[0].b64_json), decoded(ink.data[0].b64_json)) > 8  # it visibly changes
    r = httpx.post(f"{lora_url}/generate", json={"prompt": PROMPT, "seed": 3, "model": "ink", "lora_scale": 0.7},
                   timeout=120)
    assert r.status_code == 200 and max_pixel_diff(Image.open(io.BytesIO(r.content)), stock_with(stock, "ink", 0.7, 3)) <= 1


def test_interleaved_concurrent_base_and_adapters_each_equal_their_solo_image_through_evictions(lora_url, stock):
    """One adapter held per replica: every switch evicts; 12 requests for the base, ink and oil at once each get
    their own image (no adapter leaks into another's batch or stays after its eviction)."""
    asks = [(model, seed) for seed in range(4) for model in (None, "ink", "oil")]

    def one(ask):
        model, seed = ask
        body = {"prompt": PROMPT, "size": "64x64", "seed": seed, **({"model": model} if model else {})}
        r = httpx.post(f"{lora_url}/v1/images/generations", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return decoded(r.json()["data"][0]["b64_json"])

    with ThreadPoolExecutor(12) as pool:
        images = list(pool.map(one, asks))
    for (model, seed), image in zip(asks, images):
        scale = {"ink": 0.7, "oil": 1.0}.get(model)
        assert max_pixel_diff(image, stock_with(stock, model, scale, seed)) <= 1, (model, seed)
    info = httpx.get(f"{lora_url}/readyz", timeout=30).json()
    assert info["adapter_stats"]["evictions"] >= 1 and info["adapter_stats"]["loads"] >= 2


def test_models_lists_the_base_and_its_adapters_and_readyz_the_broken_one_with_why(lora_url):
    client = openai.OpenAI(base_url=f"{lora_url}/v1", api_key="unused", max_retries=0)
    cards = {m.id: m for m in client.models.list().data}
    base = "z-image-tiny-random" if "z-image-tiny-random" in cards else next(i for i in cards if i not in ("ink", "oil", "broken"))
    assert set(cards) == {base, "ink", "oil", "broken"}
    assert all(cards[a].parent == base for a in ("ink", "oil", "broken")) and getattr(cards[base], "parent", None) is None
    ready = httpx.get(f"{lora_url}/readyz", timeout=30)
    assert ready.status_code == 200
    adapters = ready.json()["adapters"]
    assert adapters["broken"]["status"] == "failed" and "not a readable safetensors file" in adapters["broken"]["reason"]
    assert adapters["ink"]["status"] == adapters["oil"]["status"] == "ready"


@pytest.mark.parametrize("body, status, code, says", [
    ({"model": "watercolor"}, 404, "model_not_found", "served: "),
    ({"model": "broken"}, 400, "invalid_adapter", "not a readable safetensors file"),
    ({"model": "ink", "lora_scale": 2.5}, 400, "invalid_value", "lora_scale must be from 0 to 2"),
    ({"lora_scale": 0.5}, 400, "invalid_value", "lora_scale applies to a LoRA adapter"),
])
def test_bad_adapter_requests_get_the_error_shape_naming_what_is_wrong(lora_url, body, status, code, says):
    r = httpx.post(f"{lora_url}/v1/images/generations", json={"prompt": PROMPT, "size": "64x64", **body}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and says in error["message"]
    if status == 404:
        assert "'ink'" in error["message"] and "'oil'" in error["message"]
