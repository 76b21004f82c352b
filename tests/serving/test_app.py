"""The application on real Ray Serve with real HTTP: the tiny checkpoint on CPU, no mocks."""

import asyncio
import base64
import io

import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from ray import serve

from conftest import deploy, max_pixel_diff, stock_image, tiny_app_config, undeploy




def _png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_openai_client_end_to_end(app_url, stock_pipe):
    client = openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused")
    r = client.images.generate(prompt="a red fox", size="64x64", n=2, extra_body={"seed": 5})
    assert len(r.data) == 2
    assert [d.model_extra["seed"] for d in r.data] == [5, 6]
    for d, seed in zip(r.data, (5, 6)):
        image = _png(base64.b64decode(d.b64_json))
        assert image.size == (64, 64)
        assert max_pixel_diff(image, stock_image(stock_pipe, "a red fox", seed, 64, 64)) <= 1
    assert [m.id for m in client.models.list().data] == ["z-image-turbo"]


def test_openai_client_without_seed_gets_a_random_one_reported(app_url):
    client = openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused")
    raw = client.images.with_raw_response.generate(prompt="a red fox", size="64x64")
    r = raw.parse()
    assert isinstance(r.model_extra["seed"], int) and r.data[0].model_extra["seed"] == r.model_extra["seed"]
    stages = dict(part.split(";dur=") for part in raw.headers["server-timing"].split(", "))
    assert {"queue", "denoise", "decode", "image_encode", "generator", "ingress"} <= set(stages)


def test_generate_returns_the_stock_image_as_png(app_url, stock_pipe):
    r = httpx.post(f"{app_url}/generate", json={"prompt": "a blue boat", "width": 96, "height": 64, "seed": 3}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "3"
    stages = dict(part.split(";dur=") for part in r.headers["server-timing"].split(", "))
    assert {"queue", "denoise", "decode", "image_encode", "generator", "ingress"} <= set(stages)
    assert float(stages["generator"]) <= float(stages["ingress"]) and float(stages["denoise"]) > 0
    assert max_pixel_diff(_png(r.content), stock_image(stock_pipe, "a blue boat", 3, 96, 64)) <= 1


@pytest.mark.parametrize("fmt, media", [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_other_formats(app_url, fmt, media):
    r = httpx.post(f"{app_url}/generate", json={"prompt": "a cat", "width": 64, "height": 64, "output_format": fmt}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == media
    assert Image.open(io.BytesIO(r.content)).format == fmt.upper()


def test_concurrent_requests_batch_and_keep_their_seeds(app_url, stock_pipe):
    prompts = [f"concurrent prompt {i % 3}" for i in range(8)]  # 3 texts no other test sends
    encoder = serve.get_deployment_handle("PromptEncoder", app_name="main")
    before = encoder.info.remote().result()

    async def go():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                client.post(f"{app_url}/generate", json={"prompt": p, "width": 64, "height": 64, "seed": 100 + i})
                for i, p in enumerate(prompts)))

    responses = asyncio.run(go())
    assert all(r.status_code == 200 for r in responses)
    assert [int(r.headers["x-seed"]) for r in responses] == list(range(100, 108))
    for i in (0, 5):
        assert max_pixel_diff(_png(responses[i].content), stock_image(stock_pipe, prompts[i], 100 + i, 64, 64)) <= 1
    info = serve.get_deployment_handle("Generator", app_name="main").info.remote().result()
    assert max(info["batches"]) > 1
    # the encoder encodes each of the 3 texts once: 3 misses; the other 5 requests share an encoding (in
    # flight or cached) as hits; its batches since hold exactly those 3 texts
    after = encoder.info.remote().result()
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (3, 5)
    ran = after["batches_run"] - before["batches_run"]  # (batches: the last 1000 sizes)
    assert ran >= 1 and sum(after["batches"][-ran:]) == 3


def test_embedding_cache_hits(app_url):
    enc = serve.get_deployment_handle("PromptEncoder", app_name="main")
    before = enc.info.remote().result()
    for _ in range(2):
        assert httpx.post(f"{app_url}/generate", json={"prompt": "cache me", "width": 64, "height": 64}, timeout=60).status_code == 200
    after = enc.info.remote().result()
    assert after["misses"] == before["misses"] + 1 and after["hits"] == before["hits"] + 1
    assert after["cache_entries"] == before["cache_entries"] + 1 and after["cache_bytes"] > before["cache_bytes"]


def test_generator_replica_gets_its_own_gpu_and_reports_its_plan(app_url):
    r = httpx.get(f"{app_url}/readyz", timeout=30)
    assert r.status_code == 200
    info = r.json()
    assert info["ready"] and info["random_weights"] and info["plan"]["kind"] == "cpu"
    assert info["cuda_visible_devices"] not in (None, "")  # Ray assigned one logical GPU
    assert httpx.get(f"{app_url}/healthz").json() == {"status": "ok"}


def test_readyz_reports_the_generators_start_stage_by_stage(app_url):
    """Where the last start of the replica went (model/startup.py): each stage's seconds, adding up to the total,
    and where the load went (the weights read in threads while diffusers and transformers were imported)."""
    start = httpx.get(f"{app_url}/readyz", timeout=30).json()["start"]
    stages = start["stages_s"]
    assert list(stages) == ["process", "imports", "resolve", "plan", "load", "speedups"]  # no warm-up on a CPU
    assert all(s >= 0 for s in stages.values()) and stages["process"] > 0 and stages["imports"] > 0
    assert abs(sum(stages.values()) - start["total_s"]) < 0.05
    assert start["details"]["load_transformer_read_s"] >= 0 and start["ready_at"] <= time.time()


BAD = [
    ("/v1/images/generations", {"prompt": "x", "size": "100x100"}, "size"),
    ("/v1/images/generations", {"prompt": "x", "size": "4096x4096"}, "size"),
    ("/v1/images/generations", {"prompt": "x", "size": "big"}, "size"),
    ("/v1/images/generations", {"prompt": "x", "n": 0}, "n"),
    ("/v1/images/generations", {"prompt": "x", "n": 5}, "n"),
    ("/v1/images/generations", {"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
    ("/v1/images/generations", {"prompt": "x", "num_inference_steps": 51}, "num_inference_steps"),
    ("/v1/images/generations", {"prompt": ""}, "prompt"),
    ("/v1/images/generations", {"prompt": "   "}, "prompt"),
    ("/v1/images/generations", {"prompt": 5}, "prompt"),
    ("/v1/images/generations", {"prompt": "x", "n": "two"}, "n"),
    ("/v1/images/generations", {"prompt": "x", "seed": -1}, "seed"),
    ("/v1/images/generations", {"prompt": "x", "response_format": "url"}, "response_format"),
    ("/v1/images/generations", {"prompt": "x", "output_format": "gif"}, "output_format"),
    ("/v1/images/generations", {}, "prompt"),
    ("/generate", {"prompt": "x", "width": 65}, "width"),
    ("/generate", {"prompt": "x", "height": 4096}, "height"),
    ("/generate", {"prompt": "x", "colour": "red"}, "colour"),
    ("/generate", {"prompt": "x", "guidance_scale": "lots"}, "guidance_scale"),
    ("/generate", [1, 2], None),
]


@pytest.mark.parametrize("path, body, param", BAD)
def test_bad_input_gets_400_naming_the_field(app_url, path, body, param):
    r = httpx.post(f"{app_url}{path}", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]


def test_an_unknown_model_is_404_model_not_found_naming_what_is_served(app_url):
    for path in ("/v1/images/generations", "/generate"):
        r = httpx.post(f"{app_url}{path}", json={"prompt": "x", "model": "dall-e-3"}, timeout=30)
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "'dall-e-3'" in error["message"] and "'z-image-turbo'" in error["message"]


def test_malformed_json_and_oversized_body(app_url):
    r = httpx.post(f"{app_url}/generate", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{app_url}/generate", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = httpx.post(f"{app_url}/generate", json={"prompt": "x" * 10_000_000}, timeout=60)  # a 10 MB body
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_unknown_route_and_method_use_the_error_shape(app_url):
    r = httpx.get(f"{app_url}/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{app_url}/generate")
    assert r.status_code == 405 and "error" in r.json()


def test_api_keys(keyed_app):
    url, (one, two) = keyed_app
    body = {"prompt": "x", "width": 64, "height": 64}
    assert httpx.post(f"{url}/generate", json=body, timeout=60).status_code == 401
    r = httpx.post(f"{url}/generate", json=body, headers={"Authorization": "Bearer wrong"}, timeout=60)
    assert r.status_code == 401 and "secret" not in r.text and r.json()["error"]["type"] == "authentication_error"
    assert httpx.post(f"{url}/generate", json=body, headers={"Authorization": f"Bearer {two}"}, timeout=60).status_code == 200
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz", timeout=30).status_code == 200
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=one)
    assert client.images.generate(prompt="x", size="64x64").data[0].b64_json
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope").images.generate(prompt="x", size="64x64")


def test_full_queue_answers_503_with_retry_after(app_url):
    """More images at once than the app takes (max_ongoing_requests x max_replicas + max_queued_requests: 72 in the
    test config): the ones over are refused at once with 503, Retry-After and queue_full; the others are served."""
    async def go():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(*(
                client.post(f"{app_url}/generate", json={"prompt": "full", "width": 256, "height": 256,
                                                         "num_inference_steps": 8, "seed": i}) for i in range(96)))

    responses = asyncio.run(go())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"].isdigit() and r.json()["error"]["code"] == "queue_full"


def test_metrics_reach_rays_prometheus_endpoint(app_url):
    import time

    import ray

    assert httpx.post(f"{app_url}/generate", json={"prompt": "metrics", "width": 64, "height": 64}, timeout=60).status_code == 200
    port = ray._private.worker.global_worker.node.metrics_export_port
    wanted = ["zimage_images_total", "zimage_stage_seconds", "zimage_batch_size", "zimage_embedding_cache_total",
              "zimage_plan_info", "zimage_http_requests_total", "zimage_generator_start_seconds"]
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
    assert 'stage="denoise"' in text and 'kind="cpu"' in text and 'stage="imports"' in text


def test_generator_that_encodes_its_own_prompts(lora_url, stock_pipe):
    """encode_on: gpu — prompts go to the generator, which encodes them itself (here on its CPU). The app with
    adapters and a ControlNet (conftest.lora_url) encodes that way: its base model serves as any app's."""
    url = lora_url
    r = httpx.post(f"{url}/generate", json={"prompt": "a green tram", "width": 64, "height": 64, "seed": 9}, timeout=60)
    assert r.status_code == 200, r.text
    assert max_pixel_diff(_png(r.content), stock_image(stock_pipe, "a green tram", 9, 64, 64)) <= 1
    generator = serve.get_deployment_handle("Generator", app_name="lora")
    before = generator.info.remote().result()
    assert before["plan"]["encode_on"] == "gpu"
    assert set(serve.status().applications["lora"].deployments) == {"Ingress", "Generator"}  # no CPU encoders
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    r = client.images.generate(prompt="a green tram", size="64x64", n=3, extra_body={"seed": 9})
    for d, seed in zip(r.data, (9, 10, 11)):
        assert max_pixel_diff(_png(base64.b64decode(d.b64_json)), stock_image(stock_pipe, "a green tram", seed, 64, 64)) <= 1
    after = generator.info.remote().result()
    batches = after["batches_run"] - before["batches_run"]  # the three images' batches: one prompt each
    assert after["prompts_encoded"] - before["prompts_encoded"] == batches <= 3
    _an_edit_has_its_prompt_encoded_by_the_generator_while_its_upload_is_decoded(client, generator, stock_pipe)


def _an_edit_has_its_prompt_encoded_by_the_generator_while_its_upload_is_decoded(client, generator, stock_pipe):
    """The ingress asks the generator for the edit's embeddings (Generator.encode) before it decodes the upload,
    and hands them to the generate call: the image is still stock diffusers' img2img, the prompt encoded once."""
    import torch
    from diffusers import ZImageImg2ImgPipeline

    picture = Image.fromarray(np.random.RandomState(2).randint(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    before = generator.info.remote().result()
    raw = client.images.with_raw_response.edit(image=("in.png", buf.getvalue(), "image/png"), prompt="a green tram",
                                               extra_body={"seed": 4, "strength": 0.5})
    r = raw.parse()
    after = generator.info.remote().result()
    pipe = ZImageImg2ImgPipeline(**stock_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt="a green tram", image=picture, strength=0.5, num_inference_steps=8, guidance_scale=0.0,
               generator=torch.Generator("cpu").manual_seed(4)).images[0]
    assert max_pixel_diff(_png(base64.b64decode(r.data[0].b64_json)), ref) <= 1
    assert after["prompts_encoded"] - before["prompts_encoded"] == 1
    assert after["compiles_since_ready"] == 0  # (eager on the CPU: the GPU bench reads the count, lora_http)
    stages = [part.split(";")[0] for part in raw.headers["server-timing"].split(", ")]
    assert "upload_decode" in stages and "text_encode" not in stages  # not in the batch: it came encoded


def test_a_generator_without_text_encoder_refuses_a_bare_prompt_by_name(app_url):
    """The main app's CPU plan encodes on the CPU encoders: a prompt sent without embeddings is refused with
    NeedsEmbeddings (which the ingress answers by encoding it there), not failed inside a batch."""
    from zimage_serve.core.errors import NeedsEmbeddings
    from zimage_serve.core.request import GenerationRequest

    generator = serve.get_deployment_handle("Generator", app_name="main")
    assert generator.info.remote().result()["plan"]["encode_on"] == "cpu"
    request = GenerationRequest(prompt="a red fox", seed=1, width=64, height=64, steps=2)
    with pytest.raises(NeedsEmbeddings, match="holds no text encoder"):
        generator.generate.remote(request, None).result()
