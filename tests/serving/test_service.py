"""ImageService, the plain class behind the routes: where a request's prompt is encoded.

The encoder and generator deployments are the service's two Serve handles; here they are two small
async functions that record what reached them (the whole app over HTTP is in test_app.py)."""

import asyncio

import pytest

from zimage_serve.settings import AppConfig
from zimage_serve.core.errors import NeedsEmbeddings, QueueFull
from zimage_serve.serving.service import ImageService


class Backends:
    """Stand-ins for the handles: the generator holds each call until ``release``."""

    def __init__(self, plan_encode_on: str):
        self.plan_encode_on = plan_encode_on
        self.routes: list[str] = []  # per generate call: "generator" (embeds None) or "cpu encoders"
        self.encoded: list[str] = []
        self.gate = asyncio.Event()

    def encode(self, request):
        self.encoded.append(request.prompt)
        return f"embeds of {request.prompt}"

    async def generate(self, request, encoded) -> dict:
        self.routes.append("generator" if encoded is None else "cpu encoders")
        await self.gate.wait()
        return {"image": b"png", "seed": request.seed, "seconds": {}}

    async def info(self) -> dict:
        return {"ready": True, "plan": {"encode_on": self.plan_encode_on}}


def service(encode_on: str, backends: Backends) -> ImageService:
    return ImageService(AppConfig(generator={"encode_on": encode_on}), encode=backends.encode,
                        generate=backends.generate, generator_info=backends.info, is_retryable=lambda e: False)


async def _burst(svc: ImageService, backends: Backends, prompts: list[str]) -> None:
    """The first request alone, then the others while it is still on the GPU."""
    first = asyncio.create_task(svc.generate({"prompt": prompts[0]}))
    while not backends.routes:
        await asyncio.sleep(0)
    rest = [asyncio.create_task(svc.generate({"prompt": p})) for p in prompts[1:]]
    while len(backends.routes) < len(prompts):
        await asyncio.sleep(0)
    backends.gate.set()
    await asyncio.gather(first, *rest)


def test_auto_encodes_on_the_idle_generator_and_on_the_cpu_encoders_under_load():
    backends = Backends(plan_encode_on="gpu")
    svc = service("auto", backends)
    asyncio.run(_burst(svc, backends, ["a lighthouse", "a tram", "a fox"]))
    assert backends.routes == ["generator", "cpu encoders", "cpu encoders"]
    assert backends.encoded == ["a tram", "a fox"]
    assert svc.pending == 0
    backends.gate = asyncio.Event()
    backends.gate.set()
    asyncio.run(svc.generate({"prompt": "after the burst"}))  # idle again: the generator encodes
    assert backends.routes[-1] == "generator"


@pytest.mark.parametrize("encode_on,plan_encode_on,expected", [
    ("auto", "cpu", ["cpu encoders"] * 3),  # the plan left no room for a text encoder on the GPU
    ("gpu", "gpu", ["generator"] * 3),      # always on the generator, even when it is busy
    ("cpu", "gpu", ["cpu encoders"] * 3),
])
def test_the_other_choices_route_every_request_one_way(encode_on, plan_encode_on, expected):
    backends = Backends(plan_encode_on)
    asyncio.run(_burst(service(encode_on, backends), backends, ["a lighthouse", "a tram", "a fox"]))
    assert backends.routes == expected


def test_without_cpu_encoders_only_encode_on_gpu_serves():
    """encode_on gpu deploys no PromptEncoder (serving/builder.py): the service takes none, and no other choice
    can do without one."""
    backends = Backends("gpu")
    svc = ImageService(AppConfig(generator={"encode_on": "gpu"}), encode=None, generate=backends.generate,
                       generator_info=backends.info, is_retryable=lambda e: False)
    asyncio.run(_burst(svc, backends, ["a lighthouse", "a tram"]))
    assert backends.routes == ["generator"] * 2
    for encode_on in ("auto", "cpu"):
        with pytest.raises(ValueError, match=f"encode_on '{encode_on}' needs the CPU encoders"):
            ImageService(AppConfig(generator={"encode_on": encode_on}), encode=None, generate=backends.generate,
                         generator_info=backends.info, is_retryable=lambda e: False)


def test_auto_waits_for_a_ready_generator_before_sending_it_prompts():
    backends = Backends(plan_encode_on="gpu")

    async def loading() -> dict:
        return {"ready": False, "reason": "loading"}

    svc = ImageService(AppConfig(), encode=backends.encode, generate=backends.generate, generator_info=loading,
                       is_retryable=lambda e: False)
    backends.gate.set()
    asyncio.run(svc.generate({"prompt": "a lighthouse"}))
    assert backends.routes == ["cpu encoders"]  # not known yet: the CPU encoders, which every plan can use


def test_a_prompt_refused_by_a_generator_without_text_encoder_is_encoded_on_the_cpu_and_sent_again():
    """Replicas plan for their own GPU: the one the ingress asked may hold a text encoder, another not."""
    backends = Backends(plan_encode_on="gpu")
    calls = []

    async def generate(request, encoded):
        calls.append(encoded)
        if encoded is None:
            raise NeedsEmbeddings("this generator replica's offload plan holds no text encoder")
        return {"image": b"png", "seed": request.seed, "seconds": {}}

    svc = ImageService(AppConfig(), encode=backends.encode, generate=generate, generator_info=backends.info,
                       is_retryable=lambda e: False)
    result = asyncio.run(svc.images({"prompt": "a lighthouse", "n": 2, "seed": 4}))
    assert [d.seed for d in result.response.data] == [4, 5]
    assert sorted(calls, key=str) == [None, None, "embeds of a lighthouse", "embeds of a lighthouse"]
    assert backends.encoded == ["a lighthouse", "a lighthouse"] and svc.pending == 0


def test_a_burst_before_the_generator_is_ready_asks_its_plan_once():
    backends = Backends(plan_encode_on="gpu")
    asked = []

    async def slow_info() -> dict:
        asked.append(1)
        await asyncio.sleep(0.05)
        return {"ready": True, "plan": {"encode_on": "gpu"}}

    svc = ImageService(AppConfig(), encode=backends.encode, generate=backends.generate, generator_info=slow_info,
                       is_retryable=lambda e: False)
    backends.gate.set()

    async def burst():
        await asyncio.gather(*(svc.generate({"prompt": f"prompt {i}"}) for i in range(10)))
        await svc.generate({"prompt": "later"})

    asyncio.run(burst())
    assert len(asked) == 1 and len(backends.routes) == 11


def test_the_images_apis_timing_is_each_stages_longest_over_the_n_images():
    backends = Backends(plan_encode_on="cpu")
    backends.gate.set()

    async def generate(request, encoded) -> dict:
        return {"image": b"png", "seed": request.seed, "seconds": {"denoise": 0.1 * (request.seed - 3), "decode": 0.05}}

    svc = ImageService(AppConfig(), encode=backends.encode, generate=generate, generator_info=backends.info,
                       is_retryable=lambda e: False)
    reply = asyncio.run(svc.images({"prompt": "a lighthouse", "n": 3, "seed": 4}))
    assert reply.seconds["denoise"] == pytest.approx(0.3) and reply.seconds["decode"] == 0.05
    assert list(reply.seconds)[-1] == "ingress" and reply.seconds["ingress"] >= 0


def _png_bytes(side: int = 64) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


class Started:
    """What a handle call returns: a pending response, which can be cancelled."""

    def __init__(self, events: list, what: str):
        self.events, self.what = events, what
        events.append(("encode", what))

    def cancel(self):
        self.events.append(("cancelled", self.what))


def edit_service(events: list, sent: list, encode_on: str = "auto") -> ImageService:
    backends = Backends(plan_encode_on="gpu")

    async def generate(request, encoded) -> dict:
        sent.append((request.mode, request.size, encoded.what if encoded else None))
        return {"image": b"png", "seed": request.seed, "seconds": {}}

    return ImageService(AppConfig(generator={"encode_on": encode_on}), encode=lambda r: Started(events, "cpu"),
                        generate=generate, generator_info=backends.info, is_retryable=lambda e: False,
                        generator_encode=lambda r: Started(events, f"generator: {r.mode} {r.prompt}"))


def test_an_edit_on_an_idle_gpu_starts_its_prompt_on_the_generator_before_the_upload_is_decoded(monkeypatch):
    from zimage_serve.serving.parsing import Uploads

    events, sent = [], []
    read = Uploads.read
    monkeypatch.setattr(Uploads, "read", lambda self, r: events.append(("decode", r.mode)) or read(self, r))
    svc = edit_service(events, sent)
    reply = asyncio.run(svc.edits({"prompt": "a red door", "seed": 1}, {"image": _png_bytes(80)}))
    assert events == [("encode", "generator: text-to-image a red door"), ("decode", "text-to-image")]
    assert sent == [("image-to-image", "80x80", "generator: text-to-image a red door")]
    assert reply.response.size == "80x80" and "upload_decode" in reply.seconds


def test_an_upload_that_does_not_decode_cancels_the_encoding_started_for_it():
    from zimage_serve.core.errors import InvalidInput

    events, sent = [], []
    svc = edit_service(events, sent)
    with pytest.raises(InvalidInput, match="image is not a PNG"):
        asyncio.run(svc.edits({"prompt": "a red door"}, {"image": b"not an image"}))
    assert events == [("encode", "generator: text-to-image a red door"), ("cancelled", "generator: text-to-image a red door")]
    assert sent == [] and svc.pending == 0


def test_an_edit_on_a_busy_gpu_is_encoded_in_the_batch_and_a_strength_without_steps_costs_nothing():
    events, sent = [], []
    svc = edit_service(events, sent, encode_on="gpu")
    svc.pending = 3  # other images in flight
    asyncio.run(svc.edits({"prompt": "a red door", "seed": 1}, {"image": _png_bytes(64)}))
    assert events == [] and sent == [("image-to-image", "64x64", None)]
    from zimage_serve.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="leaves no denoising step"):
        asyncio.run(svc.edits({"prompt": "a red door", "strength": 1e-17}, {"image": b"never read"}))
    assert events == []


def test_an_edit_refused_at_admission_is_never_decoded():
    backends = Backends(plan_encode_on="cpu")
    svc = service("auto", backends)
    svc.pending = svc.max_pending  # at capacity
    with pytest.raises(QueueFull):  # not the InvalidInput that decoding these bytes would raise
        asyncio.run(svc.edits({"prompt": "a red door"}, {"image": b"not an image"}))
    assert backends.encoded == []
