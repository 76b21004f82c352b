"""ImageService: what the HTTP routes do, as a plain class (no HTTP, no Serve).

It turns a wire body into the one typed :class:`GenerationRequest` (``parsing.RequestParser``: checked against
the config's bounds, seed assigned), admits it, decodes its uploads, fans its n images out to the generator (each image its own call, so
the generator's batcher can group them) and answers with domain results. Every failure is raised as a
domain error (``core.errors``); the HTTP layer maps each to its status, headers and the error shape.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from ..core.errors import NeedsEmbeddings, QueueFull, RequestTimeout, ZImageError, unwrapped
from ..core.formats import image_format
from ..core.request import GenerationRequest
from ..settings import AppConfig
from .parsing import RequestParser, Uploads
from .protocol import ImageData, ImagesResponse, ModelCard, ModelList, stream_event
from .step_events import close_stream, while_running

log = logging.getLogger("zimage_serve")

# request -> pending encodings (embeds, negative embeds or None), passed to the generator unresolved
Encode = Callable[[GenerationRequest], Any]
# (one image's request, encodings or None: the generator encodes) -> awaitable result dict
Generate = Callable[[GenerationRequest, Any], Awaitable[dict]]
# the same, streamed: {"step", "total", "preview"} events, then {"result": the result dict}
GenerateStream = Callable[[GenerationRequest, Any], AsyncIterator[dict]]
# told of each image's step events and of its result ({"result": ...}): (the image's request, the event)
OnStep = Callable[[GenerationRequest, dict], Awaitable[None]]


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


class ImageService(RequestParser):
    """The routes' work; :class:`RequestParser` builds its requests from wire bodies."""

    def __init__(self, config: AppConfig, encode: Encode | None, generate: Generate,
                 generator_info: Callable[[], Awaitable[dict]], is_retryable: Callable[[BaseException], bool],
                 backend_error: Callable[[BaseException], ZImageError | None] = lambda e: None,
                 generator_encode: Encode | None = None, generate_stream: GenerateStream | None = None,
                 generator_replicas: Callable[[], Awaitable[tuple[int, int]]] | None = None):
        """``encode``: the CPU encoders, None where the generators encode every prompt (``encode_on: gpu``, whose
        plans hold a text encoder or fail); ``is_retryable``: a replica died (the image is retried once);
        ``backend_error``: Serve's own errors (a full queue, no replica) as domain errors, None for anything else;
        ``generator_encode``: a generator replica's own prompt encoding (on its GPU), which an edit starts before its
        uploads are decoded; ``generate_stream``: ``generate`` with each step's events (streamed responses, jobs' progress);
        ``generator_replicas``: how many generator replicas run and start, (running, starting), asked without calling
        one (which would start one where the generators scaled to zero): readiness and /v1/models ask it when
        ``min_replicas`` is 0."""
        super().__init__(config)
        self._generate, self._info, self._generate_stream = generate, generator_info, generate_stream
        self._replicas = generator_replicas if config.generator.autoscaling.min_replicas == 0 else None
        if encode is None:
            if config.generator.encode_on != "gpu":
                raise ValueError(f"encode_on {config.generator.encode_on!r} needs the CPU encoders")

            def encode(request):  # a generator's plan without a text encoder fails under encode_on gpu
                raise RuntimeError("a generator asked for embeddings, but encode_on gpu deploys no CPU encoders")
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

    async def _ask_generator(self) -> dict:
        """A generator replica's info (Generator.info), or not ready with why when none answers within 5 s."""
        try:
            return await asyncio.wait_for(self._info(), timeout=5)
        except Exception as e:
            return {"ready": False, "reason": f"no generator replica has loaded yet ({type(e).__name__})"}

    async def _probe_generator_plan(self) -> bool:
        info = await self._ask_generator()
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

    def _admit(self, n: int) -> None:
        if self.max_pending >= 0 and self.pending + n > self.max_pending:
            raise QueueFull("the server is at capacity (queue full); retry later")
        self.pending += n

    async def _images(self, request: GenerationRequest, uploads: "Uploads | None" = None, seconds: dict | None = None,
                      on_step: OnStep | None = None) -> tuple[GenerationRequest, list[dict]]:
        """(the request as made, its images). An edit's ``uploads`` are decoded after admission (what is refused
        is never decoded), off the event loop, while its prompt is being encoded: the request made is the edit,
        at its size; ``seconds`` gets upload_decode. ``on_step``: told of each image's steps and result (the
        images are then streamed from the generator)."""
        self._admit(request.n)
        try:
            return await asyncio.wait_for(self._admitted(request.replace(enqueued_at=time.time()), uploads, seconds,
                                                         on_step), timeout=self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the images were not ready within {self.config.request_timeout_s:g}s") from None
        finally:
            self.pending -= request.n

    async def _admitted(self, request: GenerationRequest, uploads: "Uploads | None", seconds: dict | None,
                        on_step: OnStep | None = None) -> tuple[GenerationRequest, list[dict]]:
        on_generator = await self._encode_on_generator(request.n)
        encoded = None if on_generator else self._encode(request)  # the CPU encoders start now
        early = uploads is not None and on_generator and self._generator_encode is not None and self.pending == request.n
        if early:  # uploads on an idle GPU: the generator encodes the prompt while the ingress decodes the uploads
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
        images = [asyncio.ensure_future(self._one(request, image, encoded, early, on_step)) for image in request.images()]
        try:
            return request, await asyncio.gather(*images)
        finally:  # one failed (or the caller left): the others are not wanted either
            for task in images:
                task.cancel()

    async def _one(self, request: GenerationRequest, image: GenerationRequest, encoded, by_generator: bool = False,
                   on_step: OnStep | None = None) -> dict:
        """One image; ``by_generator``: ``encoded`` came from Generator.encode (a retry lets the generator encode
        again, in its batch, so that the embeddings are the same)."""
        retried = False
        while True:
            try:
                return await self._call(image, encoded, on_step)
            except NeedsEmbeddings:
                # the replica's plan holds no text encoder (plans differ where GPUs do): encode on the CPU
                # encoders and send it again. Embeddings are never refused, so this happens at most once.
                encoded = self._encode(request)
            except asyncio.CancelledError:
                raise
            except ZImageError as e:  # ours, possibly wrapped by Ray: the same class, its message
                raise unwrapped(e) from None
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

    async def run(self, request: GenerationRequest, uploads: "Uploads | None" = None,
                  on_step: OnStep | None = None) -> tuple[GenerationRequest, list[dict]]:
        """(the request as made, its images' results): a checked request (``request_from_images``, ``edit_parts``)
        run as a route runs it, admission included (QueueFull when the replicas' queues are full), each image's
        steps told to ``on_step`` (a job's progress)."""
        return await self._images(request, uploads, on_step=on_step)

    async def _call(self, image: GenerationRequest, encoded, on_step: OnStep | None) -> dict:
        """One call to the generator. Cancelled (a client left, a job was cancelled, a sibling image failed), it
        cancels the call it made: Serve cancels a replica's call when the HTTP request that led to it ends, not
        when the task awaiting it is cancelled (a job's is no request's)."""
        if on_step is None or self._generate_stream is None:
            response = self._generate(image, encoded)
            try:
                return await response
            except asyncio.CancelledError:
                getattr(response, "cancel", lambda: None)()
                raise
        stream = self._generate_stream(image, encoded)
        try:
            async for event in stream:
                await on_step(image, event)
                if "result" in event:
                    return event["result"]
            raise ZImageError("the generator's stream ended without its image")
        finally:
            await close_stream(stream)

    async def images(self, body: Any) -> ImagesReply:
        """``POST /v1/images/generations``: the OpenAI ImagesResponse body."""
        start = time.perf_counter()
        # a control image's base64 (up to tens of MB) is read off the event loop, as an edit's
        request, uploads = await asyncio.to_thread(self.request_from_images, body)
        return await self._images_response(request, start, uploads)

    async def edits(self, body: Any, files: dict[str, bytes] | None = None) -> ImagesReply:
        """``POST /v1/images/edits`` (see :meth:`edit_parts`): the OpenAI ImagesResponse body."""
        start = time.perf_counter()
        # a JSON body's base64 (up to tens of MB) is read off the event loop, which serves every route
        request, uploads = await asyncio.to_thread(self.edit_parts, body, files)
        return await self._images_response(request, start, uploads)

    async def _images_response(self, request: GenerationRequest, start: float,
                               uploads: "Uploads | None" = None) -> ImagesReply:
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

    async def stream(self, body: Any, files: dict[str, bytes] | None = None, edit: bool = False) -> AsyncIterator[dict | None]:
        """The images of a generations (``edit``: edits) body with ``stream: true``, as the events of OpenAI's
        streamed Images API (protocol.stream_event): ``partial_image`` previews (``partial_images`` of them an
        image), with ``progress_events`` a ``zimage.progress`` event a step, and a ``completed`` event an image.
        The first item is None, once the generator has begun (a first step): a refusal (the body, its uploads, a
        full queue, no generator) is raised before it, as by the other routes; after it, errors are raised from the
        stream (the HTTP layer sends them as an error event).
        A consumer that leaves cancels the images still running (their generators stop them at the next step)."""
        parse = (lambda: self.edit_parts(body, files)) if edit else (lambda: self.request_from_images(body))
        request, uploads = await asyncio.to_thread(parse)
        progress = self.stream_options(body)["progress_events"]
        queue: asyncio.Queue = asyncio.Queue()

        async def on_step(image: GenerationRequest, event: dict) -> None:
            queue.put_nowait((image, event))

        kind = "image_edit" if edit else "image_generation"
        task = asyncio.ensure_future(self._images(request, uploads, on_step=on_step))
        try:
            previews: dict[int, int] = {}  # image index -> partial images sent
            begun = False
            async for item in while_running(task, queue):
                if not begun:  # the generator took it: what could refuse it (uploads, a full queue) has not
                    yield None
                    begun = True
                event = stream_event(kind, request, *item, previews, progress)
                if event is not None:
                    yield event
            if not begun:
                task.result()  # refused (a full queue, its uploads) before any step: raised before the stream begins
                yield None
            task.result()  # its error, if it failed
        finally:
            if not task.done():
                task.cancel()

    async def generate(self, body: Any) -> ImageBytes:
        """``POST /generate``: one image's bytes."""
        start = time.perf_counter()
        request, uploads = await asyncio.to_thread(self.request_from_generate, body)
        _, (result,) = await self._images(request, uploads)
        seconds = {**result.get("seconds", {}), "ingress": time.perf_counter() - start}
        return ImageBytes(result["image"], image_format(request.output_format).media_type, result["seed"], seconds)

    async def _asleep(self) -> dict | None:
        """With min_replicas 0 and no generator replica running: what /readyz says instead of asking one (which would
        start one); None when one runs (or the generators never scale to zero): ask it."""
        if self._replicas is None:
            return None
        try:
            running, starting = await asyncio.wait_for(self._replicas(), timeout=5)
        except Exception as e:  # noqa: BLE001 (Serve's controller busy or restarting: say so, wake nothing)
            return {"ready": False, "reason": f"can't ask Serve's controller which generators run ({type(e).__name__})"}
        if running:
            return None
        said = ("a generator replica is starting (min_replicas 0): requests wait for it" if starting else
                "no generator replica runs now (min_replicas 0): the next request starts one, and waits for it")
        return {"ready": True, "replicas": 0, "starting": starting, "scaled_to_zero": said}

    async def readiness(self) -> tuple[bool, dict]:
        """(ready, details): a generator replica's info (plan, GPU), plus this ingress's pending images. Generators
        scaled to zero are ready (a request starts one and waits for it), and are not woken to say so."""
        info = await self._asleep() or await self._ask_generator()
        return bool(info.get("ready")), {**info, "pending_images": self.pending, "max_pending_images": self.max_pending}

    async def models(self) -> dict:
        """``GET /v1/models`` (a ModelList): the served model, and what it is (the checkpoint, random weights, when
        a generator replica runs to say so)."""
        info = await self._ask_generator() if await self._asleep() is None else {}
        base = self.config.model_name
        cards = [ModelCard(id=base, root=info.get("model", self.config.model), random_weights=info.get("random_weights"))]
        cards += [ModelCard(id=name, root=spec.source, parent=base) for name, spec in self.config.adapters.items()]
        return ModelList(data=cards).model_dump(exclude_none=True)
