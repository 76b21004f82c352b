"""Ingress: the HTTP deployment (CPU). Builds the API per replica over handles to the encoder and generator.

Imports no torch: the ingress process stays light (the encoder and generator import it in their replicas).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict

import ray.exceptions as rex
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ReplicaState

from ..core.errors import Overloaded, QueueFull, ZImageError
from ..core.request import GenerationRequest
from ..settings import DRAIN_POLL_S, AppConfig, api_keys
from .http import create_api
from .service import ImageService

log = logging.getLogger("zimage_serve")
_DEAD = (rex.ActorDiedError, rex.ActorUnavailableError, rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError)


def retryable(e: BaseException) -> bool:
    """A replica died or vanished mid-request: generation is idempotent for a seed, so retry once.

    Serve may wrap the death: when the encoder dies while the generator waits on its response, the
    router raises a RayServeException ("an upstream actor died") caused by the ActorDiedError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, _DEAD):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


class AccessLogPaths(logging.Filter):
    """Serve's access log names a request by the route that matched it (as its metrics do, to bound their
    labels); a path that matches no route it names by the route prefix, so ``GET /nope`` logged as ``GET / 404``,
    and so did any request that came before the proxy had learnt the routes (the first ``/readyz`` at start-up:
    ``GET / 503``). The app (:meth:`wrap`) notes, by request id, the route that matched or, when none did, the
    path itself; this filter, on the replica's ``ray.serve`` logger, writes it into the access-log line. Only the
    log line changes: Serve's metrics keep their route labels."""

    LIMIT = 1024  # notes kept for access-log lines still to come (one a request in flight)

    def __init__(self):
        super().__init__()
        self._paths: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()  # the app runs on Serve's user-code thread, the access log on the replica's

    def wrap(self, app):
        """``app`` (a FastAPI app, which it stays: Serve reads its routes) noting each HTTP request's route, or
        path, when its response starts."""
        paths = self

        class NotePaths:  # ASGI middleware
            def __init__(self, inner):
                self.inner = inner

            async def __call__(self, scope, receive, send):
                if scope["type"] != "http":
                    return await self.inner(scope, receive, send)

                async def send_noting(message):
                    if message["type"] == "http.response.start":
                        paths._note(scope)
                    await send(message)

                await self.inner(scope, receive, send_noting)

        app.add_middleware(NotePaths)
        return app

    def _note(self, scope) -> None:
        request_id = dict(scope.get("headers") or ()).get(b"x-request-id")  # Serve's proxy sets it
        if not request_id:
            return
        pattern = getattr(scope.get("route"), "path", None)  # Starlette's router sets scope["route"] on a match
        root = scope.get("root_path", "")
        path = (f"{root.rstrip('/')}/{pattern.lstrip('/')}" if root else pattern) if pattern else scope["path"]
        with self._lock:
            self._paths[request_id.decode("latin-1")] = path
            while len(self._paths) > self.LIMIT:
                self._paths.popitem(last=False)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "serve_access_log", False) and isinstance(record.msg, str):
            with self._lock:
                path = self._paths.pop(getattr(record, "request_id", None), None)
            route = getattr(record, "route", None)
            parts = record.msg.split(" ")  # [client] METHOD ROUTE STATUS LATENCY (logging_utils.access_log_msg)
            if path and route and path != route and len(parts) >= 4 and parts[-3] == route:
                parts[-3] = path
                record.msg = " ".join(parts)
        return True

    @classmethod
    def install(cls) -> "AccessLogPaths":
        """The filter of this process's ``ray.serve`` logger (added once)."""
        serve_log = logging.getLogger("ray.serve")
        for f in serve_log.filters:
            if isinstance(f, cls):
                return f
        f = cls()
        serve_log.addFilter(f)
        return f


def serve_error(e: BaseException) -> ZImageError | None:
    """Serve's own refusals, by type, as domain errors: a full queue, no replica, a dead one (after its retry)."""
    if isinstance(e, BackPressureError):
        return QueueFull("the server is at capacity (queue full); retry later")
    if isinstance(e, (DeploymentUnavailableError, ReplicaUnavailableError)) or retryable(e):
        return Overloaded("a generator replica failed; retry later")
    return None


def image_service(config: AppConfig, encoder: DeploymentHandle | None, generator: DeploymentHandle) -> ImageService:
    """The ImageService over handles to the encoder and generator deployments (the ingress's, and the job store's);
    no encoder where the generators encode every prompt (``encode_on: gpu``)."""

    def routed(image: GenerationRequest, **options):
        # Serve's model multiplexing: an adapter's requests go to the replicas that hold it (base: any)
        if image.adapter:
            options["multiplexed_model_id"] = image.adapter
        return generator.options(**options) if options else generator

    def generate(image: GenerationRequest, encoded):
        return routed(image).generate.remote(image, encoded)

    def generate_stream(image: GenerationRequest, encoded):
        return routed(image, stream=True).generate_stream.remote(image, encoded)

    return ImageService(config, encode=(lambda request: encoder.encode.remote(request)) if encoder else None,
                        generate=generate,
                        generator_info=lambda: generator.info.remote(), is_retryable=retryable,
                        backend_error=serve_error, generator_encode=lambda request: generator.encode.remote(request),
                        generate_stream=generate_stream, generator_replicas=lambda: running_replicas(generator))


async def running_replicas(handle: DeploymentHandle) -> tuple[int, int]:
    """(running, starting) replicas of ``handle``'s deployment, as Serve's controller says (no call to them)."""
    status = await asyncio.to_thread(serve.status)
    states = status.applications[handle.app_name].deployments[handle.deployment_name].replica_states
    return int(states.get(ReplicaState.RUNNING, 0)), int(states.get(ReplicaState.STARTING, 0))


class JobsClient:
    """The job store deployment's methods, as the HTTP routes call them (serving/jobs.py's JobRunner has the same);
    Serve's refusals (the store's replica down or restarting) as domain errors (503)."""

    def __init__(self, handle: DeploymentHandle):
        self._handle = handle

    async def _call(self, method: str, *args):
        try:
            return await getattr(self._handle, method).remote(*args)
        except ZImageError:
            raise
        except Exception as e:
            mapped = serve_error(e)
            if mapped is None:
                raise
            raise Overloaded("the job store is restarting; retry later") from None

    async def submit(self, body) -> dict:
        return await self._call("submit", body)

    async def get(self, job_id: str) -> dict:
        return await self._call("get", job_id)

    async def image(self, job_id: str, index: int) -> tuple[bytes, str]:
        return await self._call("image", job_id, index)

    async def cancel(self, job_id: str) -> dict:
        return await self._call("cancel", job_id)

    def events(self, job_id: str):
        return self._handle.options(stream=True).events.remote(job_id)


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000,
                  graceful_shutdown_wait_loop_s=DRAIN_POLL_S)
@serve.ingress()
class IngressDeployment:
    def __init__(self, encoder: DeploymentHandle | None, generator: DeploymentHandle, config: dict,
                 jobs: DeploymentHandle | None = None):
        self.config = AppConfig.model_validate(config)
        self.api_keys = api_keys(self.config)
        self.service = image_service(self.config, encoder, generator)
        self.jobs = JobsClient(jobs) if jobs is not None else None
        log.info("Ingress ready (API keys %s; jobs %s)", "required" if self.api_keys else "off",
                 "on" if self.jobs else "off")

    def __serve_build_asgi_app__(self):
        return AccessLogPaths.install().wrap(create_api(self.service, self.api_keys, self.jobs))
