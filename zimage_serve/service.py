"""ImageService: what the HTTP routes do, as a plain class (no HTTP, no Serve).

It validates requests against the config's bounds, assigns seeds, fans a request's n images out to
the generator (each image its own call, so the generator's batcher can group them), and maps every
failure to an :class:`ApiError` with a status, the one error shape's fields, and headers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from pydantic import ValidationError

from .app_config import AppConfig
from .errors import InvalidInput, NeedsEmbeddings, Overloaded, ZImageError
from .imaging import MEDIA_TYPES
from .limits import check_dimension, check_prompt, check_steps, parse_size
from .protocol import GenerateRequest, ImageData, ImagesRequest, ImagesResponse, error_body

log = logging.getLogger("zimage_serve")


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict = field(default_factory=dict)

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def validation_error(e: ValidationError) -> ApiError:
    """The first pydantic error as a 400 naming its field."""
    err = e.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ())) or None
    if err.get("type") == "extra_forbidden":
        return ApiError(400, f"unknown field {param!r}", param=param, code="unknown_field")
    if err.get("type") == "model_type":
        return ApiError(400, "the request body must be a JSON object", code="invalid_body")
    msg = err.get("msg", "invalid value")
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def _message(e: BaseException) -> str:
    """The user-facing message of our error, also when Ray wrapped it (RayTaskError keeps it as .cause)."""
    while getattr(e, "cause", None) is not None and e.cause is not e:
        e = e.cause
    return str(e.args[0]) if e.args else str(e)


# (embeds, negative_embeds, params) -> awaitable result dict; embeds may be a pending encoder response
Generate = Callable[[Any, Any, dict], Awaitable[dict]]
Encode = Callable[[str], Any]


def server_timing(seconds: dict) -> str:
    """A W3C Server-Timing header value: each stage's duration in milliseconds. The stages: queue (admitted
    at the ingress until its generator batch starts; includes CPU prompt encoding), text_encode (on the
    GPU), denoise and decode (the batch's), image_encode, generator (this request at its generator replica,
    arrival to encoded image) and ingress (this request at the ingress, start to end)."""
    return ", ".join(f"{name};dur={1000 * s:.1f}" for name, s in seconds.items())


class ImageService:
    def __init__(self, config: AppConfig, encode: Encode, generate: Generate,
                 generator_info: Callable[[], Awaitable[dict]], is_retryable: Callable[[BaseException], bool]):
        self.config = config
        self._encode, self._generate, self._info = encode, generate, generator_info
        self._is_retryable = is_retryable
        self._generator_encodes: bool | None = {"cpu": False, "gpu": True}.get(config.generator.encode_on)
        self._plan_probe: asyncio.Future | None = None
        # Admission: images in flight or queued from this ingress replica. Serve's own max_queued_requests
        # is checked before a request's embeddings resolve, so a burst waiting on the encoder slips past it.
        g = config.generator
        self.max_pending = -1 if g.max_queued_requests < 0 else (
            g.max_ongoing_requests * g.autoscaling.max_replicas + g.max_queued_requests) // config.ingress_replicas
        self.pending = 0

    # ---- requests -> params -------------------------------------------------------------------

    def _params(self, req, width: int, height: int) -> dict:
        b = self.config.bounds
        try:
            check_prompt(req.prompt, b)
            if req.negative_prompt:
                check_prompt(req.negative_prompt, b, param="negative_prompt")
            steps = check_steps(req.num_inference_steps or self.config.default_steps, b)
        except InvalidInput as e:
            raise ApiError(400, str(e), param=e.param, code="invalid_value") from None
        seed = req.seed if req.seed is not None else random.randrange(2**31)
        quality = getattr(req, "output_compression", None)
        return {"prompt": req.prompt, "negative_prompt": req.negative_prompt or "", "seed": seed, "width": width,
                "height": height, "steps": steps, "guidance_scale": float(req.guidance_scale),
                "output_format": req.output_format, "quality": quality}

    def _size(self, text: str, param: str = "size") -> tuple[int, int]:
        if text == "auto":
            text = self.config.default_size
        try:
            return parse_size(text, self.config.bounds, param=param)
        except InvalidInput as e:
            raise ApiError(400, str(e), param=param, code="invalid_value") from None

    def parse_images(self, body: Any) -> tuple[ImagesRequest, dict]:
        try:
            req = ImagesRequest.model_validate(body)
        except ValidationError as e:
            raise validation_error(e) from None
        if req.response_format == "url":
            raise ApiError(400, "response_format 'url' is not supported: images are not stored; use b64_json",
                           param="response_format", code="unsupported_value")
        if req.model not in (None, self.config.served_model_name):
            raise ApiError(400, f"model {req.model!r} is not served here; this server serves "
                                f"{self.config.served_model_name!r}", param="model", code="model_not_found")
        if req.n > self.config.max_images:
            raise ApiError(400, f"n must be at most {self.config.max_images}, got {req.n}", param="n", code="invalid_value")
        return req, self._params(req, *self._size(req.size))

    def parse_generate(self, body: Any) -> tuple[GenerateRequest, dict]:
        try:
            req = GenerateRequest.model_validate(body)
        except ValidationError as e:
            raise validation_error(e) from None
        default_w, default_h = self._size("auto")
        try:
            width = check_dimension(req.width or default_w, "width", self.config.bounds)
            height = check_dimension(req.height or default_h, "height", self.config.bounds)
        except InvalidInput as e:
            raise ApiError(400, str(e), param=e.param, code="invalid_value") from None
        return req, self._params(req, width, height)

    # ---- generation ---------------------------------------------------------------------------

    async def _can_encode_on_generator(self) -> bool:
        """Whether the generator holds a text encoder: "gpu" says so, "auto" asks its plan (once it is ready).
        Requests that arrive while the question is out share its answer: a burst at start-up makes one info
        call, not one each in the generators' queue."""
        if self._generator_encodes is not None:
            return self._generator_encodes
        if self._plan_probe is None or self._plan_probe.done():
            self._plan_probe = asyncio.ensure_future(self._probe_generator_plan())
        return await asyncio.shield(self._plan_probe)

    async def _probe_generator_plan(self) -> bool:
        try:
            info = await asyncio.wait_for(self._info(), timeout=5)
        except Exception:
            return False
        if not info.get("ready"):
            return False
        self._generator_encodes = info["plan"]["encode_on"] == "gpu"
        return self._generator_encodes

    async def _encode_on_generator(self, n: int) -> bool:
        """Where this request's prompt is encoded. With encode_on "gpu", always on the generator. With "auto",
        on the generator when its plan holds the text encoder and this ingress has nothing else in flight: the
        GPU would wait for the prompt anyway, and encodes it in about 0.05 s where the CPU encoders take about
        0.45 s (bench). Otherwise on the CPU encoders, so that under load the GPU's time goes to denoising."""
        if not await self._can_encode_on_generator():
            return False
        return self.config.generator.encode_on == "gpu" or self.pending == n

    async def _images(self, params: dict, n: int) -> list[dict]:
        if self.max_pending >= 0 and self.pending + n > self.max_pending:
            raise self.queue_full()
        self.pending += n
        try:
            return await self._admitted(params, n)
        finally:
            self.pending -= n

    async def _admitted(self, params: dict, n: int) -> list[dict]:
        enqueued = time.time()
        encoded = None if await self._encode_on_generator(n) else self._encodings(params)
        calls = [{**params, "seed": params["seed"] + i, "enqueued_at": enqueued} for i in range(n)]
        try:
            return await asyncio.wait_for(asyncio.gather(*(self._one(encoded, params, p) for p in calls)),
                                          timeout=self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the images were not ready within {self.config.request_timeout_s:g}s",
                           type="timeout_error", code="timeout") from None

    def _encodings(self, params: dict) -> tuple:
        """Pending encoder responses (prompt, and the negative prompt when guidance is on)."""
        negative = self._encode(params["negative_prompt"]) if params["guidance_scale"] > 0 else None
        return self._encode(params["prompt"]), negative

    async def _one(self, encoded, params: dict, call: dict) -> dict:
        retried = False
        while True:
            embeds, negative = encoded if encoded is not None else (None, None)
            try:
                return await self._generate(embeds, negative, call)
            except NeedsEmbeddings:
                # the replica's plan holds no text encoder (plans differ where GPUs do): encode on the CPU
                # encoders and send it again. Embeddings are never refused, so this happens at most once.
                encoded = self._encodings(params)
            except ApiError:
                raise
            except Overloaded as e:
                raise self.unavailable(_message(e)) from None
            except InvalidInput as e:
                raise ApiError(400, _message(e), param=e.param, code="invalid_value") from None
            except ZImageError as e:
                raise self.unavailable(_message(e)) from None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._is_retryable(e) and not retried:
                    # a generator or encoder replica died: generation is idempotent for a seed, so retry once,
                    # encoding again (the failed encoder response can't be reused)
                    log.warning("a replica failed mid-request (%s); retrying once", type(e).__name__)
                    retried = True
                    if encoded is not None:
                        encoded = self._encodings(params)
                    continue
                mapped = self.map_backend_error(e)
                if mapped is None:
                    log.exception("generation failed")
                    raise ApiError(500, "internal error while generating", type="server_error", code="internal") from None
                raise mapped from None

    def unavailable(self, message: str) -> ApiError:
        return ApiError(503, message, type="server_error", code="unavailable",
                        headers={"Retry-After": str(self.config.retry_after_s)})

    def queue_full(self) -> ApiError:
        return ApiError(503, "the server is at capacity (queue full); retry later", type="server_error",
                        code="queue_full", headers={"Retry-After": str(self.config.retry_after_s)})

    def map_backend_error(self, e: BaseException) -> ApiError | None:
        """Serve's own errors: a full queue, a dead or missing replica -> 503 with Retry-After."""
        name = type(e).__name__
        if "BackPressure" in name:
            return self.queue_full()
        if self._is_retryable(e) or "Unavailable" in name:
            return self.unavailable("a generator replica failed; retry later")
        return None

    async def images(self, body: Any) -> dict:
        req, params = self.parse_images(body)
        results = await self._images(params, req.n)
        return ImagesResponse(
            created=int(time.time()), output_format=req.output_format, size=f"{params['width']}x{params['height']}",
            seed=params["seed"], model=self.config.served_model_name,
            data=[ImageData(b64_json=base64.b64encode(r["image"]).decode(), seed=r["seed"]) for r in results],
        ).model_dump(exclude_none=True)

    async def generate(self, body: Any) -> tuple[bytes, dict]:
        start = time.perf_counter()
        req, params = self.parse_generate(body)
        (result,) = await self._images(params, 1)
        timing = {**result.get("seconds", {}), "ingress": time.perf_counter() - start}
        return result["image"], {"content-type": MEDIA_TYPES[req.output_format], "x-seed": str(result["seed"]),
                                 "server-timing": server_timing(timing)}

    async def readiness(self) -> tuple[bool, dict]:
        """(ready, details): a generator replica's info (plan, GPU), plus this ingress's pending images."""
        try:
            info = await asyncio.wait_for(self._info(), timeout=5)
        except Exception as e:
            info = {"ready": False, "reason": f"no generator replica has loaded yet ({type(e).__name__})"}
        return bool(info.get("ready")), {**info, "pending_images": self.pending, "max_pending_images": self.max_pending}
