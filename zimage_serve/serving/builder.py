"""The Ray Serve application builder (``zimage_serve.app:build_app`` re-exports :func:`build_app`).

``build_app(args)`` validates ``args`` into one :class:`AppConfig`, settles what depends on the cluster,
and binds its deployments, each with the Serve options its own module derives from the config, data
flowing one way: Ingress (HTTP) -> PromptEncoder (CPU, batched) -> Generator (one GPU each, autoscaled); with
jobs on, Ingress -> Jobs (the job store, one replica) -> PromptEncoder -> Generator too. With ``encode_on: gpu``
there is no PromptEncoder: the generators encode every prompt.
The encoder's response is passed straight to the generator, never back through the ingress.
Importing this module imports no torch.
"""

from __future__ import annotations

import logging

import ray
from pydantic import ValidationError

from ..core.checkpoints import DEFAULT_HUB_ID
from ..core.errors import ZImageError
from ..core.webhook_checks import check_secret
from ..settings import AppConfig
from . import encoder, generator
from .encoder import PromptEncoderDeployment
from .generator import GeneratorDeployment
from .ingress import IngressDeployment

log = logging.getLogger("zimage_serve")


def gpus_in_cluster() -> float:
    """GPUs of the Ray cluster this process is connected to (0 when none or not connected)."""
    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def resolved_config(args: dict | AppConfig | None, cluster_gpus: float | None = None) -> AppConfig:
    """Validate ``args`` and settle the choices that depend on the cluster (model 'auto', GPUs per replica).
    Raises ValueError naming the bad field."""
    try:
        config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    except ValidationError as e:
        raise ValueError(f"invalid zimage-serve config: {e}") from None
    if config.jobs.enabled and config.jobs.webhook_secret:  # whole (its value kept out of the message)
        try:
            check_secret(config.jobs.webhook_secret, "jobs.webhook_secret")
        except ZImageError as e:
            raise ValueError(f"invalid zimage-serve config: {e}") from None
    gpus = gpus_in_cluster() if cluster_gpus is None else cluster_gpus
    updates = {}
    if config.model == "auto":
        from ..model.sources import cached_hub  # modelscope only: no torch

        updates["model"] = DEFAULT_HUB_ID if gpus and cached_hub(DEFAULT_HUB_ID) else "tiny"
        if updates["model"] == "tiny":
            log.warning("model 'auto': serving the embedded tiny checkpoint (random test weights: images are noise)")
    if config.generator.num_gpus is None:
        updates["generator"] = config.generator.model_copy(update={"num_gpus": 1.0 if gpus else 0.0})
    return config.model_copy(update=updates)


def build(config: AppConfig, generator_deployment=GeneratorDeployment, generator_args: tuple = ()):
    """The bound application for a resolved config (``generator_deployment`` and its extra constructor
    arguments: testing/faults.py's variant)."""
    raw = config.model_dump()
    # encode_on "gpu": every prompt is encoded by a generator (its plan must hold the text encoder, or it fails to
    # plan), so CPU encoders would only hold a copy of the text encoder in host memory
    enc = None if config.generator.encode_on == "gpu" else \
        PromptEncoderDeployment.options(**encoder.deployment_options(config)).bind(raw)
    gen = generator_deployment.options(**generator.deployment_options(config)).bind(raw, *generator_args)
    jobs = None
    if config.jobs.enabled:
        from .jobs import JobsDeployment  # the job store's filesystems (pyarrow): only where jobs are served

        jobs = JobsDeployment.bind(enc, gen, raw)
    return IngressDeployment.options(num_replicas=config.ingress_replicas).bind(enc, gen, raw, jobs)


def build_app(args: dict | None = None):
    """Application builder for ``serve run`` / ``serve deploy`` (``args`` from the config file)."""
    return build(resolved_config(args))
