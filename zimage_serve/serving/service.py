"""ImageService: what the HTTP routes do, as a plain class (no HTTP, no Serve).

It turns a wire body into the one typed :class:`GenerationRequest` (checked against the config's
bounds, seed assigned), admits it, fans its n images out to the generator (each image its own call, so
the generator's batcher can group them) and answers with domain results. Every failure is raised as a
domain error (``core.errors``); the HTTP layer maps each to its status, headers and the error shape.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from pydantic import ValidationError

from ..core.bounds import (SIZE_MULTIPLE, Bounds, check_dimension, check_lora_scale, check_prompt, check_steps,
                           check_strength, parse_size)
from ..core.errors import InvalidInput, ModelNotFound, NeedsEmbeddings, QueueFull, RequestTimeout, TooLarge, ZImageError
from ..core.images import check_edit_steps, with_edit_inputs
from ..core.formats import image_format
from ..core.request import DEFAULT_STRENGTH, GenerationRequest
from ..settings import AppConfig
from .protocol import ImageData, ImagesResponse, ModelCard, ModelList, wire_types

log = logging.getLogger("zimage_serve")

# request -> pending encodings (embeds, negative embeds or None), passed to the generator unresolved
Encode = Callable[[GenerationRequest], Any]
# (one image's request, encodings or None: the generator encodes) -> awaitable result dict
Generate = Callable[[GenerationRequest, Any], Awaitable[dict]]


def validation_error(e: ValidationError, bounds: Bounds = Bounds(), served: tuple[str, ...] | str = ()) -> InvalidInput:
    """The first pydantic error as an InvalidInput naming its field, in words (not the pattern's regex)."""
    err = e.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ())) or None
    kind, value = err.get("type"), err.get("input")
    if kind == "extra_forbidden":
        return InvalidInput(f"unknown field {param!r}", param=param, code="unknown_field")
    if kind == "model_type":
        return InvalidInput("the request body must be a JSON object", code="invalid_body")
    if param in ("prompt", "negative_prompt") and isinstance(value, str):
        try:  # its length, emptiness or NUL, as the CLI and the batch job say it
            check_prompt(value, bounds, param=param)
        except InvalidInput as refused:
            return refused
    if param in ("image", "mask") and kind == "string_too_long":
        return TooLarge(f"{param} is over the upload limit of {bounds.max_upload_bytes} bytes", param=param)
    if param == "strength" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:  # out of (0, 1], said as the CLI says it
            check_strength(value)
        except InvalidInput as refused:
            return refused
    if param == "size" and kind == "string_pattern_mismatch":
        return InvalidInput(f"size must be 'auto' or WIDTHxHEIGHT (like 1024x1024), each side a multiple of "
                            f"{SIZE_MULTIPLE} between {bounds.min_side} and {bounds.max_side}, got {value!r}",
                            param=param)
    if param == "model" and kind == "literal_error":
        names = (served,) if isinstance(served, str) else served
        return ModelNotFound(f"model {value!r} is not served here; served: {', '.join(repr(m) for m in names)}")
    if param == "lora_scale" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:  # out of range, said as the CLI says it
            check_lora_scale(value)
        except InvalidInput as refused:
            return refused
    if param == "response_format" and value == "url":
        return InvalidInput("response_format 'url' is not supported: images are not stored; use b64_json",
                            param=param, code="unsupported_value")
    msg = err.get("msg", "invalid value")
    return InvalidInput(f"{param}: {msg}" if param else msg, param=param)


def server_timing(seconds: dict) -> str:
    """A W3C Server-Timing header value: each stage's duration in milliseconds. The stages: upload_read (a
    multipart body read) and upload_decode (an edit's images checked and decoded), queue (admitted at the
    ingress until its generator batch starts; includes prompt encoding before the batch, on the CPU encoders or
    for an edit by the generator), text_encode (on the GPU, in the batch), denoise
    and decode (the batch's), image_encode, generator (this request at its generator replica, arrival to
    encoded image) and ingress (this request at the ingress, start to end). For n images, each stage's longest."""
    return ", ".join(f"{name};dur={1000 * s:.1f}" for name, s in seconds.items())


@dataclass(frozen=True)
class ImagesReply:
    """The Images API's answer: the ImagesResponse, and its Server-Timing stages."""

    response: ImagesResponse
    seconds: dict


@dataclass(frozen=True)
class ImageBytes:
    """``/generate``'s answer: one encoded image and what its headers say."""

    data: bytes
    media_type: str
    seed: int
    seconds: dict


class ImageService:
    def __init__(self, config: AppConfig, encode: Encode, generate: Generate,
                 generator_info: Callable[[], Awaitable[dict]], is_retryable: Callable[[BaseException], bool],
                 backend_error: Callable[[BaseException], ZImageError | None] = lambda e: None,
                 generator_encode: Encode | None = None):
        """``is_retryable``: a replica died (the image is retried once); ``backend_error``: Serve's own errors
        (a full queue, no replica) as domain errors, None for anything else; ``generator_encode``: a generator
        replica's own prompt encoding (on its GPU), which an edit starts before its uploads are decoded."""
        self.config = config
        self.wire = wire_types(config.bounds, config.model_name, tuple(config.adapters))  # the request types, with the config's bounds
        self._generate, self._info = generate, generator_info
        self._encode = lambda request: encode(request.without_images())  # the encoder needs the texts only
        self._generator_encode = generator_encode
        self._is_retryable, self._backend_error = is_retryable, backend_error
        self._generator_encodes: bool | None = {"cpu": False, "gpu": True}.get(config.generator.encode_on)
        self._plan_probe: asyncio.Future | None = None
        # Admission: images in flight or queued from this ingress replica. Serve's own max_queued_requests
        # is checked before a request's embeddings resolve, so a burst waiting on the encoder slips past it.
        g = config.generator
        self.max_pending = -1 if g.max_queued_requests < 0 else (
            g.max_ongoing_requests * g.autoscaling.max_replicas + g.max_queued_requests) // config.ingress_replicas
        self.pending = 0

    # ---- wire body -> GenerationRequest -------------------------------------------------------------
    # The wire types (protocol.wire_types) carry every bound of the config, so what /openapi.json states
    # is what is checked here; the core checks after them only turn the valid body into the request.

    def _validate(self, model, body: Any, strict: bool = True):
        try:
            return model.model_validate(body, strict=strict)
        except ValidationError as e:
            raise validation_error(e, self.config.bounds, (self.config.model_name, *self.config.adapters)) from None

    def _request(self, req, width: int, height: int, n: int = 1, quality: int | None = None) -> GenerationRequest:
        b = self.config.bounds
        check_prompt(req.prompt, b)
        if req.negative_prompt:
            check_prompt(req.negative_prompt, b, param="negative_prompt")
        steps = check_steps(req.num_inference_steps or self.config.default_steps, b)
        # the wire types bound the seed by max_seed - (max n - 1): seed + n - 1 never passes max_seed
        seed = req.seed if req.seed is not None else random.randrange(2**31)
        adapter, scale = self._adapter(req.model, getattr(req, "lora_scale", None))  # (wire_types: with adapters)
        return GenerationRequest(prompt=req.prompt, negative_prompt=req.negative_prompt or "", seed=seed, width=width,
                                 height=height, steps=steps, guidance_scale=float(req.guidance_scale), n=n,
                                 output_format=req.output_format, quality=quality, adapter=adapter,
                                 adapter_scale=scale)

    def _adapter(self, model: str | None, lora_scale: float | None) -> tuple[str | None, float | None]:
        """(adapter, scale) that ``model`` names: (None, None) for the base model ("", absent or its name), else a
        configured adapter at ``lora_scale`` or its configured scale."""
        if not model or model == self.config.model_name:
            if lora_scale is not None:
                raise InvalidInput("lora_scale applies to a LoRA adapter: name one as model (see /v1/models)",
                                   param="lora_scale")
            return None, None
        spec = self.config.adapters[model]  # the wire types allow the served names only
        return model, float(lora_scale if lora_scale is not None else spec.scale)

    def _size(self, text: str, param: str = "size") -> tuple[int, int]:
        return parse_size(self.config.default_size if text == "auto" else text, self.config.bounds, param=param)

    def request_from_images(self, body: Any) -> GenerationRequest:
        """``POST /v1/images/generations``'s body (OpenAI's images.generate) as a request."""
        req = self._validate(self.wire.images, body)
        return self._request(req, *self._size(req.size), n=req.n, quality=req.output_compression)

    def request_from_generate(self, body: Any) -> GenerationRequest:
        """``POST /generate``'s body as a request (one image)."""
        req = self._validate(self.wire.generate, body)
        default_w, default_h = self._size("auto")
        width = check_dimension(req.width or default_w, "width", self.config.bounds)
        height = check_dimension(req.height or default_h, "height", self.config.bounds)
        return self._request(req, width, height)

    def edit_parts(self, body: Any, files: dict[str, bytes] | None = None) -> tuple[GenerationRequest, "EditUploads"]:
        """``POST /v1/images/edits``'s body (OpenAI's images.edit: image to image, or inpainting with a mask)
        checked, its uploads not yet decoded: (the request of its texts and options, at the size asked for or
        the default, and the uploads, which :meth:`EditUploads.read` makes it the edit of). ``files`` None: a
        JSON body, its images base64 or data: URLs. Otherwise a multipart body: ``body`` its text fields (read
        as their types say: ``"7"`` is 7 there) and ``files`` its image parts. What needs no decoding (the
        strength against the steps) is checked here, before any work is spent on the edit."""
        if files is None:
            req = self._validate(self.wire.edits, body)
            image, mask = (_base64(getattr(req, name), name) for name in ("image", "mask"))
        else:
            req = self._validate(self.wire.edits, _form_values(body), strict=False)
            for name in ("image", "mask"):
                if getattr(req, name) is not None:
                    raise InvalidInput(f"in a multipart body, {name} is a file part, not a text field", param=name)
            image, mask = files.get("image"), files.get("mask")
        if image is None:
            raise InvalidInput("image is required: the image to edit", param="image", code="missing_image")
        strength = check_strength(req.strength) if req.strength is not None else None
        size = None if req.size == "auto" else self._size(req.size)
        request = self._request(req, *(size or self._size("auto")), n=req.n, quality=req.output_compression)
        check_edit_steps(request.steps, strength if strength is not None else
                         DEFAULT_STRENGTH["inpaint" if mask is not None else "image-to-image"])
        return request.replace(strength=strength), EditUploads(image, mask, size, self.config.bounds)

    # ---- where the prompt is encoded ----------------------------------------------------------------

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

    # ---- generation ---------------------------------------------------------------------------------

    async def _images(self, request: GenerationRequest, uploads: "EditUploads | None" = None,
                      seconds: dict | None = None) -> tuple[GenerationRequest, list[dict]]:
        """(the request as made, its images). An edit's ``uploads`` are decoded after admission (what is refused
        is never decoded), off the event loop, while its prompt is being encoded: the request made is the edit,
        at its size; ``seconds`` gets upload_decode."""
        if self.max_pending >= 0 and self.pending + request.n > self.max_pending:
            raise QueueFull("the server is at capacity (queue full); retry later")
        self.pending += request.n
        try:
            return await asyncio.wait_for(self._admitted(request.replace(enqueued_at=time.time()), uploads, seconds),
                                          timeout=self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the images were not ready within {self.config.request_timeout_s:g}s") from None
        finally:
            self.pending -= request.n

    async def _admitted(self, request: GenerationRequest, uploads: "EditUploads | None",
                        seconds: dict | None) -> tuple[GenerationRequest, list[dict]]:
        on_generator = await self._encode_on_generator(request.n)
        encoded = None if on_generator else self._encode(request)  # the CPU encoders start now
        early = uploads is not None and on_generator and self._generator_encode is not None and self.pending == request.n
        if early:  # an edit on an idle GPU: the generator encodes its prompt while the ingress decodes the uploads
            encoded = self._generator_encode(request.without_images())  # None from it: encoded in the batch
        if uploads is not None:
            t0 = time.perf_counter()
            try:
                request = await asyncio.to_thread(uploads.read, request)
            except BaseException:
                getattr(encoded, "cancel", lambda: None)()  # the encoding started for it is not wanted
                raise
            if seconds is not None:
                seconds["upload_decode"] = time.perf_counter() - t0
        return request, await asyncio.gather(*(self._one(request, image, encoded, early) for image in request.images()))

    async def _one(self, request: GenerationRequest, image: GenerationRequest, encoded, by_generator: bool = False) -> dict:
        """One image; ``by_generator``: ``encoded`` came from Generator.encode (a retry lets the generator encode
        again, in its batch, so that the embeddings are the same)."""
        retried = False
        while True:
            try:
                return await self._generate(image, encoded)
            except NeedsEmbeddings:
                # the replica's plan holds no text encoder (plans differ where GPUs do): encode on the CPU
                # encoders and send it again. Embeddings are never refused, so this happens at most once.
                encoded = self._encode(request)
            except asyncio.CancelledError:
                raise
            except ZImageError as e:  # ours, possibly wrapped by Ray: the same class, its message
                raise _unwrapped(e) from None
            except Exception as e:
                if self._is_retryable(e) and not retried:
                    # a generator or encoder replica died: generation is idempotent for a seed, so retry once,
                    # encoding again (the failed encoder response can't be reused)
                    log.warning("a replica failed mid-request (%s); retrying once", type(e).__name__)
                    retried = True
                    if encoded is not None:
                        encoded = None if by_generator else self._encode(request)
                    continue
                mapped = self._backend_error(e)
                if mapped is None:
                    raise
                raise mapped from None

    async def images(self, body: Any) -> ImagesReply:
        """``POST /v1/images/generations``: the OpenAI ImagesResponse body."""
        start = time.perf_counter()
        return await self._images_response(self.request_from_images(body), start)

    async def edits(self, body: Any, files: dict[str, bytes] | None = None) -> ImagesReply:
        """``POST /v1/images/edits`` (see :meth:`edit_parts`): the OpenAI ImagesResponse body."""
        start = time.perf_counter()
        # a JSON body's base64 (up to tens of MB) is read off the event loop, which serves every route
        request, uploads = await asyncio.to_thread(self.edit_parts, body, files)
        return await self._images_response(request, start, uploads)

    async def _images_response(self, request: GenerationRequest, start: float,
                               uploads: "EditUploads | None" = None) -> ImagesReply:
        seconds: dict = {}
        request, results = await self._images(request, uploads, seconds)
        for r in results:  # the images ran side by side: each stage's longest
            for stage, s in r.get("seconds", {}).items():
                seconds[stage] = max(s, seconds.get(stage, 0.0))
        seconds["ingress"] = time.perf_counter() - start
        response = ImagesResponse(
            created=int(time.time()), output_format=request.output_format, size=request.size, seed=request.seed,
            model=request.adapter or self.config.model_name,
            data=[ImageData(b64_json=base64.b64encode(r["image"]).decode(), seed=r["seed"]) for r in results])
        return ImagesReply(response, seconds)

    async def generate(self, body: Any) -> ImageBytes:
        """``POST /generate``: one image's bytes."""
        start = time.perf_counter()
        request = self.request_from_generate(body)
        _, (result,) = await self._images(request)
        seconds = {**result.get("seconds", {}), "ingress": time.perf_counter() - start}
        return ImageBytes(result["image"], image_format(request.output_format).media_type, result["seed"], seconds)

    async def readiness(self) -> tuple[bool, dict]:
        """(ready, details): a generator replica's info (plan, GPU), plus this ingress's pending images."""
        try:
            info = await asyncio.wait_for(self._info(), timeout=5)
        except Exception as e:
            info = {"ready": False, "reason": f"no generator replica has loaded yet ({type(e).__name__})"}
        return bool(info.get("ready")), {**info, "pending_images": self.pending, "max_pending_images": self.max_pending}

    async def models(self) -> dict:
        """``GET /v1/models`` (a ModelList): the served model, and what it is (the checkpoint, random weights)."""
        try:
            info = await asyncio.wait_for(self._info(), timeout=5)
        except Exception:
            info = {}
        base = self.config.model_name
        cards = [ModelCard(id=base, root=info.get("model", self.config.model), random_weights=info.get("random_weights"))]
        cards += [ModelCard(id=name, root=spec.source, parent=base) for name, spec in self.config.adapters.items()]
        return ModelList(data=cards).model_dump(exclude_none=True)


def _form_values(fields: dict) -> dict:
    """A form's text fields as the edits body's types read them: ``stream`` is a JSON-style boolean there."""
    stream = fields.get("stream")
    if isinstance(stream, str) and stream.lower() in ("true", "false"):
        return {**fields, "stream": stream.lower() == "true"}
    return fields


def _base64(text: str | None, param: str) -> bytes | None:
    """An image sent in JSON: base64, or a ``data:[<type>];base64,`` URL."""
    if text is None:
        return None
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidInput(f"{param} must be base64, or a data: URL with ;base64", param=param, code="invalid_image")
    try:  # line breaks (base64's default output wraps at 76 characters) are not part of the data
        return base64.b64decode("".join(text.split()), validate=True)
    except ValueError:
        raise InvalidInput(f"{param} is not valid base64", param=param, code="invalid_image") from None


def _unwrapped(e: ZImageError) -> ZImageError:
    """Our error as raised in the replica: Ray wraps it in a RayTaskError that is also an instance of its class
    (its message a traceback) and keeps the original as ``cause``."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, ZImageError) else e


@dataclass(frozen=True)
class EditUploads:
    """An edit's uploads as received, not yet decoded, and the size asked for (None: the input's)."""

    image: bytes
    mask: bytes | None
    size: tuple[int, int] | None
    bounds: Bounds

    def read(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` as the edit of these uploads, checked and decoded (``core.images.with_edit_inputs``)."""
        return with_edit_inputs(request, self.image, self.mask, self.size, self.bounds)
