"""The HTTP API: thin FastAPI routes over ImageService, auth, body cap, CORS, and the one place where
domain errors become HTTP statuses and the one error shape (:func:`error_response`).

Routes: POST /v1/images/generations and POST /v1/images/edits (OpenAI Images API), POST /generate (image bytes), GET
/v1/models, GET /healthz (alive), GET /readyz (a generator has loaded; reports its plan).

/openapi.json is the deployment's contract: the request bodies are its wire types (protocol.wire_types,
every bound of the config), and every status a route answers with is documented with its headers. The
POST routes read JSON (the edits route also multipart/form-data, as the openai client sends it): a body sent
with another Content-Type is a 415 (none at all is read as JSON); a 405 carries Allow.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..core.errors import (InvalidInput, ModelSourceError, NotReady, Overloaded, PlanError, RequestTimeout,
                           ModelNotFound, NotFound, TooLarge, ZImageError, unwrapped, user_message)
from . import metrics
from .job_routes import JOBS, add_job_routes
from .playground import add_playground, is_page_path
from .step_events import close_stream
from .protocol import ErrorResponse, ImagesResponse, ModelList, error_body
from .service import ImageService, ImagesReply, server_timing
from .uploads import FILE_FIELDS, read_form

log = logging.getLogger("zimage_serve")
OPEN_PATHS = {"/healthz", "/readyz"}
JSON = "application/json"
MULTIPART = "multipart/form-data"
EVENT_STREAM = "text/event-stream"
EDITS = "/v1/images/edits"


def _body_schema(model) -> dict:
    """The request body of a route that reads JSON itself: the deployment's wire type (its bounds)."""
    return {"requestBody": {"required": True, "content": {JSON: {"schema": model.model_json_schema()}}}}


def _edits_body(model) -> dict:
    """The edits route's request body: the wire type as JSON (images as base64 text), and as multipart form
    fields (images as file parts)."""
    schema = model.model_json_schema()
    as_json = {**schema, "required": [*schema.get("required", []), "image"]}
    binary = {"type": "string", "format": "binary"}
    as_form = {**as_json, "properties": {**schema["properties"],
                                         **{name: {**binary, "description": schema["properties"][name]["description"]}
                                            for name in FILE_FIELDS if name in schema["properties"]}}}
    return {"requestBody": {"required": True, "content": {JSON: {"schema": as_json}, MULTIPART: {"schema": as_form}}}}


def _header(description: str, type: str = "string") -> dict:
    return {"description": description, "required": True, "schema": {"type": type}}


_WHY = {
    400: "Invalid request: the error names the field (`param`).",
    401: "A valid API key is required (Authorization: Bearer <key>, or X-API-Key).",
    404: "The `model` names no model or LoRA adapter served here (see /v1/models); the message lists them.",
    413: "The request body, or an uploaded image, is over the server's limit (max_body_bytes, max_upload_bytes).",
    415: "The body is not sent as application/json (or, to the edits route, multipart/form-data).",
    503: "At capacity, or no generator is ready: retry after Retry-After seconds.",
    504: "The images were not ready within the server's request timeout.",
}
_HEADERS = {401: {"WWW-Authenticate": _header("Bearer")},
            503: {"Retry-After": _header("Seconds to wait before retrying.", "integer")}}


def _errors(*codes: int) -> dict:
    """OpenAPI responses in the one error shape, for each status a route may answer with."""
    responses = {code: {"model": ErrorResponse, "description": _WHY[code]} for code in codes}
    for code in set(codes) & set(_HEADERS):
        responses[code]["headers"] = _HEADERS[code]
    return responses


class ApiError(Exception):
    """An HTTP-level refusal made here (auth, body size, media type), already with its status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


# Domain error class -> (status, OpenAI error type). The most specific class that matches wins (the MRO).
_STATUS = {
    TooLarge: (413, "invalid_request_error"),
    ModelNotFound: (404, "invalid_request_error"),
    NotFound: (404, "invalid_request_error"),
    InvalidInput: (400, "invalid_request_error"),
    Overloaded: (503, "server_error"),
    NotReady: (503, "server_error"),
    ModelSourceError: (503, "server_error"),
    PlanError: (503, "server_error"),
    RequestTimeout: (504, "timeout_error"),
    ZImageError: (503, "server_error"),
}


def api_error(e: BaseException, retry_after_s: int = 2) -> ApiError:
    """Any exception as the ApiError to answer with: ours keep their message, code and param; a 503 says when
    to retry; anything else is a 500 that says nothing of its cause (which is logged)."""
    if isinstance(e, ApiError):
        return e
    e = unwrapped(e)
    if not isinstance(e, ZImageError):
        log.error("internal error", exc_info=e)
        return ApiError(500, "internal error", type="server_error", code="internal")
    status, kind = next(_STATUS[c] for c in type(e).__mro__ if c in _STATUS)
    headers = {"Retry-After": str(retry_after_s)} if status == 503 else {}
    return ApiError(status, user_message(e), type=kind, param=getattr(e, "param", None), code=e.code, headers=headers)


def error_response(e: BaseException, retry_after_s: int = 2) -> JSONResponse:
    """The one error shape of every route, from any exception."""
    e = api_error(e, retry_after_s)
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)


class _Guard:
    """ASGI middleware: API keys (constant-time compare) and the body-size cap, before any parsing."""

    def __init__(self, app, keys: tuple[str, ...], max_body: int, max_body_by_path: dict | None = None):
        self.app, self.keys, self.max_body = app, tuple(k.encode() for k in keys), max_body
        self.max_body_by_path = max_body_by_path or {}  # routes that take uploads take larger bodies

    def _authorized(self, headers: dict) -> bool:
        token = headers.get(b"authorization", b"")
        token = token[7:].strip() if token[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        ok = False
        for key in self.keys:  # compare with every key: time doesn't tell which matched
            ok |= hmac.compare_digest(token, key)
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # an application deployed under a route prefix
            path = path[len(root):] or "/"
        start = time.perf_counter()
        open_path = path in OPEN_PATHS or is_page_path(path)
        if self.keys and not open_path and scope.get("method") != "OPTIONS" and not self._authorized(headers):
            e = ApiError(401, "a valid API key is required (Authorization: Bearer <key>)", type="authentication_error",
                         code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await self._reply(scope, receive, send, e, path)
        max_body = self.max_body_by_path.get(path, self.max_body)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            e = ApiError(413, f"request body over {max_body} bytes", code="body_too_large")
            return await self._reply(scope, receive, send, e, path)

        received = 0

        async def capped_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise _TooLarge()
            return message

        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, capped_receive, send_status)
        except _TooLarge:
            e = ApiError(413, f"request body over {max_body} bytes", code="body_too_large")
            await error_response(e)(scope, receive, send)
            status["code"] = 413
        metrics.count_request(_route(path), status["code"])
        log.debug("%s %s %d %.3fs", scope.get("method"), path, status["code"], time.perf_counter() - start)

    async def _reply(self, scope, receive, send, e: ApiError, path: str):
        await error_response(e)(scope, receive, send)
        metrics.count_request(_route(path), e.status)


class _TooLarge(Exception):
    pass


def _route(path: str) -> str:
    known = {"/v1/images/generations", EDITS, "/generate", "/v1/models", "/healthz", "/readyz"}
    return path if path in known else "other"


def _media_type(request: Request, accepted: tuple[str, ...] = (JSON,)) -> str:
    """The body's media type, one of ``accepted``; another is a 415. None at all is read as JSON (the body
    says what it is); form-encoded is what ``curl -d`` sends unless told otherwise."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return JSON
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in accepted:
        return media_type
    hint = " (curl -d sends form-encoded: add -H 'Content-Type: application/json')" \
        if media_type == "application/x-www-form-urlencoded" else ""
    what = "JSON sent with Content-Type: application/json" + (" or multipart/form-data" if MULTIPART in accepted else "")
    raise ApiError(415, f"the body must be {what}, not {content_type!r}{hint}", code="unsupported_media_type")


async def _json(request: Request):
    _media_type(request)
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the request body is not valid JSON ({e})", code="invalid_json") from None


def sse(event: dict) -> bytes:
    """One server-sent event: its ``type`` as the event name, the event as JSON data."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _sse_events(events, source) -> AsyncIterator[bytes]:
    """The stream's events as SSE; an error after the stream began ends it with an ``error`` event in the one
    error shape (OpenAI's clients raise it as an APIError). Ends ``source`` (the stream the events come from)."""
    try:
        async for event in events:
            yield sse(event)
    except Exception as e:
        e = api_error(e)
        yield sse({"type": "error", **error_body(e.message, e.type, e.param, e.code)})
    finally:
        await close_stream(source)


async def _streamed(events) -> StreamingResponse:
    """A text/event-stream response over a stream whose first item is taken here: a refusal raised before it is
    answered as by the other routes (the first item None: the stream's admission, not an event)."""
    try:
        first = await events.__anext__()
    except StopAsyncIteration:  # (never: a stream yields its admission, or its first event)
        raise ZImageError("the stream ended before it began") from None

    async def all_events():
        if first is not None:
            yield first
        async for event in events:
            yield event

    return StreamingResponse(_sse_events(all_events(), events), media_type=EVENT_STREAM,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_api(service: ImageService, api_keys: tuple[str, ...] = (), jobs=None) -> FastAPI:
    """The app: its routes over ``service`` (and ``jobs``: a JobsClient or JobRunner; None: the jobs API is off)."""
    config = service.config
    app = FastAPI(title="zimage-serve", version=__version__,
                  description="Z-Image-Turbo text-to-image, OpenAI Images API compatible.")
    retry_after = config.retry_after_s

    @app.exception_handler(ApiError)
    @app.exception_handler(ZImageError)
    async def _domain_error(request, e: Exception):
        return error_response(e, retry_after)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse(error_body(str(e.detail), code=kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        return error_response(e)

    auth = (401,) if api_keys else ()
    wire = service.wire

    refusals = _errors(400, *auth, 404, 413, 415, 503, 504)  # every status a POST route answers with, but 200

    stages = "queue, text_encode, denoise, decode, image_encode, generator, ingress"
    timed = lambda extra="": {"Server-Timing": _header(f"Milliseconds per stage: {extra}{stages}.")}
    streamed = {EVENT_STREAM: {"schema": {"type": "object", "required": ["event", "data"], "description": (
        "With stream: true, OpenAI's image stream events (`*.partial_image`, `*.completed`; `zimage.progress` with "
        "progress_events; `error`), as server-sent events: each named by its type, its data the event as JSON."),
        "properties": {"event": {"type": "string"}, "data": {
            "type": "string", "contentMediaType": JSON,
            "contentSchema": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}}}}}}
    images_ok = lambda extra="": {200: {
        "description": "The images (OpenAI's ImagesResponse); with stream: true, their events (no Server-Timing).",
        "headers": {name: {**h, "required": False} for name, h in timed(extra).items()}, "content": streamed}}

    def images_json(reply: ImagesReply, **stages_before) -> Response:
        # pydantic's serializer writes megabytes of base64 in a third of the time json.dumps takes (JSONResponse)
        return Response(reply.response.model_dump_json(exclude_none=True), media_type=JSON,
                        headers={"Server-Timing": server_timing({**stages_before, **reply.seconds})})

    @app.post("/v1/images/generations", response_model=ImagesResponse, responses={**images_ok(), **refusals},
              openapi_extra=_body_schema(wire.images))
    async def images(request: Request):
        body = await _json(request)
        if service.stream_options(body)["stream"]:
            return await _streamed(service.stream(body))
        return images_json(await service.images(body))

    image_bytes = {"schema": {"type": "string", "format": "binary"}}
    generated = {"description": "The image, encoded as output_format asks.",
                 "content": {"image/png": image_bytes, "image/jpeg": image_bytes, "image/webp": image_bytes},
                 "headers": {"X-Seed": _header("The image's seed.", "integer"), **timed()}}

    @app.post(EDITS, response_model=ImagesResponse, responses={**images_ok("upload_read (multipart), upload_decode, "),
                                                               **refusals}, openapi_extra=_edits_body(wire.edits))
    async def edits(request: Request):
        if _media_type(request, (JSON, MULTIPART)) == MULTIPART:
            start = time.perf_counter()
            # a text field may hold a control image as base64 (the openai client's extra_body) where one is taken
            field_cap = config.max_generation_body_bytes
            fields, files = await read_form(request, config.max_upload_bytes, field_cap)
            upload_read = time.perf_counter() - start
            if service.stream_options(fields)["stream"]:
                return await _streamed(service.stream(fields, files, edit=True))
            return images_json(await service.edits(fields, files), upload_read=upload_read)
        body = await _json(request)
        if service.stream_options(body)["stream"]:
            return await _streamed(service.stream(body, edit=True))
        return images_json(await service.edits(body))

    @app.post("/generate", responses={200: generated, **refusals},
              response_class=Response, openapi_extra=_body_schema(wire.generate))
    async def generate(request: Request):
        image = await service.generate(await _json(request))
        return Response(content=image.data, media_type=image.media_type,
                        headers={"X-Seed": str(image.seed), "Server-Timing": server_timing(image.seconds)})

    @app.get("/v1/models", response_model=ModelList, response_model_exclude_none=True, responses=_errors(*auth, 413))
    async def models():
        return await service.models()

    fastapi_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's schema with the request bodies exactly as the wire types state them: FastAPI's own
        OpenAPI model reads every bound as a float (2**63 - 1 would be advertised as 9.223372036854776e+18)."""
        if app.openapi_schema is None:
            paths = fastapi_openapi()["paths"]
            paths["/v1/images/generations"]["post"].update(_body_schema(wire.images))
            paths["/generate"]["post"].update(_body_schema(wire.generate))
            paths[EDITS]["post"].update(_edits_body(wire.edits))
        return app.openapi_schema

    app.openapi = openapi

    add_playground(app)
    add_job_routes(app, jobs, _json, _streamed, _errors(400, *auth, 404, 413, 415, 503), wire)

    @app.get("/healthz", responses=_errors(413))
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "No generator replica has loaded (the reason is given).",
                                              "content": {JSON: {"schema": {"type": "object"}}}}, **_errors(413)})
    async def readyz():
        ready, info = await service.readiness()
        return JSONResponse(info, status_code=200 if ready else 503)

    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"], expose_headers=["X-Seed", "Server-Timing", "Location"])
    app.add_middleware(_Guard, keys=api_keys, max_body=config.max_body_bytes,
                       max_body_by_path={EDITS: config.max_edit_body_bytes, JOBS: config.max_job_body_bytes,
                                         "/v1/images/generations": config.max_generation_body_bytes,
                                         "/generate": config.max_generation_body_bytes})
    return app
