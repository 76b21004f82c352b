"""Ingress: the HTTP deployment (CPU). Builds the API per replica over handles to the encoder and generator.

Imports no torch: the ingress process stays light (the encoder and generator import it in their replicas).
"""

from __future__ import annotations

import logging

import ray.exceptions as rex
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from ..core.errors import Overloaded, QueueFull, ZImageError
from ..core.request import GenerationRequest
from ..settings import AppConfig, api_keys
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


def serve_error(e: BaseException) -> ZImageError | None:
    """Serve's own refusals, by type, as domain errors: a full queue, no replica, a dead one (after its retry)."""
    if isinstance(e, BackPressureError):
        return QueueFull("the server is at capacity (queue full); retry later")
    if isinstance(e, (DeploymentUnavailableError, ReplicaUnavailableError)) or retryable(e):
        return Overloaded("a generator replica failed; retry later")
    return None


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class IngressDeployment:
    def __init__(self, encoder: DeploymentHandle, generator: DeploymentHandle, config: dict):
        self.config = AppConfig.model_validate(config)
        self.api_keys = api_keys(self.config)

        def generate(image: GenerationRequest, encoded):
            return generator.generate.remote(image, encoded)

        self.service = ImageService(
            self.config, encode=lambda request: encoder.encode.remote(request), generate=generate,
            generator_info=lambda: generator.info.remote(), is_retryable=retryable, backend_error=serve_error)
        log.info("Ingress ready (API keys %s)", "required" if self.api_keys else "off")

    def __serve_build_asgi_app__(self):
        return create_api(self.service, self.api_keys)
