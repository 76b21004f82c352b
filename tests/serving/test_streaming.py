"""Streamed images on the real application (Ray Serve, real HTTP, the tiny checkpoint): the official openai client's
``stream=True, partial_images=N`` loop for generations and edits, the events' previews, progress events, errors
before and during a stream, and a client that leaves mid-stream freeing its slot and stopping its image."""

import base64
import io
import json
import time

import httpx
import openai
import pytest
from PIL import Image

from conftest import picture

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def client(app_url):
    return openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0)


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def sse_events(response: httpx.Response) -> list[dict]:
    """The events of an SSE response, as (name, data) checked to agree."""
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def test_openai_client_streams_partial_images_then_the_image(client):
    events = list(client.images.generate(prompt=PROMPT, size="64x64", stream=True,
                                         partial_images=2, extra_body={"seed": 7}))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for e in events[:2]:  # previews from the latents: a quarter of the image's side, PNG as asked
        preview = decoded(e.b64_json)
        assert (preview.format, preview.size) == ("PNG", (16, 16))
        assert e.size == "64x64" and e.output_format == "png"
    assert [e.step for e in events[:2]] == [3, 5]  # evenly spaced over 8 steps, before the last
    final = events[-1]
    assert final.seed == 7 and decoded(final.b64_json).size == (64, 64)
    # the same image as the one the plain route makes for the seed
    plain = client.images.generate(prompt=PROMPT, size="64x64", extra_body={"seed": 7})
    assert base64.b64decode(final.b64_json) == base64.b64decode(plain.data[0].b64_json)


def test_zero_partial_images_is_one_event(client):
    events = list(client.images.generate(prompt=PROMPT, size="64x64", stream=True, partial_images=0,
                                         extra_body={"seed": 1}))
    assert [e.type for e in events] == ["image_generation.completed"]


def test_n_images_stream_each_with_its_index_and_seed(app_url):
    body = {"prompt": PROMPT, "size": "64x64", "n": 2, "seed": 20, "stream": True, "partial_images": 1,
            "output_format": "jpeg"}
    r = httpx.post(f"{app_url}/v1/images/generations", json=body, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    completed = sorted((e["image_index"], e["seed"]) for e in events if e["type"] == "image_generation.completed")
    assert completed == [(0, 20), (1, 21)]
    partial = sorted((e["image_index"], e["partial_image_index"]) for e in events
                     if e["type"] == "image_generation.partial_image")
    assert partial == [(0, 0), (1, 0)]
    assert all(decoded(e["b64_json"]).format == "JPEG" for e in events)


def test_progress_events_count_every_step(app_url):
    body = {"prompt": PROMPT, "size": "64x64", "seed": 3, "num_inference_steps": 4, "stream": True,
            "partial_images": 1, "progress_events": True}
    events = sse_events(httpx.post(f"{app_url}/v1/images/generations", json=body, timeout=120))
    steps = [(e["type"].rsplit(".", 1)[-1], e["step"]) for e in events if "step" in e]
    assert steps == [("progress", 1), ("partial_image", 2), ("progress", 3), ("progress", 4)]
    assert events[-1]["type"] == "image_generation.completed"


def test_openai_client_streams_an_edit(client):
    buf = io.BytesIO()
    picture(64, 64).save(buf, "PNG")
    events = list(client.images.edit(image=("in.png", buf.getvalue(), "image/png"), prompt=PROMPT, size="64x64",
                                     stream=True, partial_images=1, extra_body={"seed": 5, "strength": 1.0}))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    plain = client.images.edit(image=("in.png", buf.getvalue(), "image/png"), prompt=PROMPT, size="64x64",
                               extra_body={"seed": 5, "strength": 1.0})
    assert base64.b64decode(events[-1].b64_json) == base64.b64decode(plain.data[0].b64_json)


def test_a_bad_streamed_request_is_refused_before_the_stream(client, app_url):
    with pytest.raises(openai.BadRequestError) as e:
        list(client.images.generate(prompt=PROMPT, size="65x64", stream=True, partial_images=1))
    assert e.value.body["param"] == "size"
    r = httpx.post(f"{app_url}/v1/images/generations", json={"prompt": PROMPT, "stream": True, "partial_images": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "partial_images"
    r = httpx.post(f"{app_url}/v1/images/generations", json={"prompt": PROMPT, "stream": "yes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


def test_a_client_that_leaves_mid_stream_frees_its_slot_and_stops_its_image(app_url):
    def info():
        return httpx.get(f"{app_url}/readyz", timeout=30).json()

    batches = info()["batches_run"]
    body = {"prompt": "a slow one", "size": "256x256", "num_inference_steps": 50, "seed": 1, "stream": True,
            "progress_events": True}
    with httpx.stream("POST", f"{app_url}/v1/images/generations", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                assert json.loads(line[5:])["step"] == 1
                break  # and leave
    deadline = time.time() + 20
    while info()["pending_images"] and time.time() < deadline:
        time.sleep(0.1)
    assert info()["pending_images"] == 0
    started = time.time()
    r = httpx.post(f"{app_url}/v1/images/generations", json={"prompt": "next", "size": "64x64", "seed": 2}, timeout=120)
    assert r.status_code == 200
    # the left image stopped at its next step: its batch was never finished (the next request's was)
    assert info()["batches_run"] == batches + 1, "the image whose client left ran to its end"
    assert time.time() - started < 20
