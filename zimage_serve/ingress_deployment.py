"""Ingress: the HTTP deployment (CPU). Builds the API per replica over handles to the encoder and generator."""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from .app_config import AppConfig
from .config import environment

log = logging.getLogger("zimage_serve")


def _retryable(e: BaseException) -> bool:
    """A replica died or vanished mid-request: generation is idempotent for a seed, so retry once.

    Serve may wrap the death: when the encoder dies while the generator waits on its response, the
    router raises a RayServeException ("an upstream actor died") caused by the ActorDiedError."""
    import ray.exceptions as rex

    dead = (rex.ActorDiedError, rex.ActorUnavailableError, rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError)
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, dead):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class IngressDeployment:
    def __init__(self, encoder: DeploymentHandle, generator: DeploymentHandle, config: dict):
        from .service import ImageService

        self.config = AppConfig.model_validate(config)
        keys = environment().api_keys
        if self.config.api_keys_file:
            from pathlib import Path

            keys += tuple(k.strip() for k in Path(self.config.api_keys_file).read_text().splitlines()
                          if k.strip() and not k.startswith("#"))
        self.api_keys = keys
        self.service = ImageService(
            self.config,
            encode=lambda prompt: encoder.encode.remote(prompt),
            generate=lambda embeds, negative, params: generator.generate.remote(embeds, negative, params),
            generator_info=lambda: generator.info.remote(),
            is_retryable=_retryable,
        )
        log.info("Ingress ready (API keys %s)", "required" if keys else "off")

    def __serve_build_asgi_app__(self):
        from .api import create_api

        return create_api(self.service, self.api_keys)
