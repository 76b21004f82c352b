"""The Ray Serve application builder: ``import_path: zimage_serve.app:build_app``.

``build_app(args)`` validates ``args`` into one :class:`AppConfig` and binds three deployments,
data flowing one way: Ingress (HTTP) -> PromptEncoder (CPU, batched) -> Generator (one GPU each,
autoscaled). The encoder's response is passed straight to the generator, never back through the
ingress.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from .app_config import AppConfig
from .encoder_deployment import PromptEncoderDeployment
from .generator_deployment import GeneratorDeployment
from .ingress_deployment import IngressDeployment

log = logging.getLogger("zimage_serve")


def _cluster_gpus() -> float:
    import ray

    try:
        return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0
    except Exception:
        return 0.0


def _autoscaling(opts) -> dict:
    a = opts.autoscaling.to_serve()
    a.setdefault("initial_replicas", opts.autoscaling.min_replicas)
    return a


def resolved_config(args: dict | AppConfig | None, cluster_gpus: float | None = None) -> AppConfig:
    """Validate ``args`` and settle the choices that depend on the cluster (model 'auto', GPUs per replica)."""
    try:
        config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    except ValidationError as e:
        raise ValueError(f"invalid zimage-serve config: {e}") from None
    gpus = _cluster_gpus() if cluster_gpus is None else cluster_gpus
    updates = {}
    if config.model == "auto":
        from .sources import DEFAULT_HUB_ID, cached_hub

        updates["model"] = DEFAULT_HUB_ID if gpus and cached_hub(DEFAULT_HUB_ID) else "tiny"
        if updates["model"] == "tiny":
            log.warning("model 'auto': serving the embedded tiny checkpoint (random test weights: images are noise)")
    if config.generator.num_gpus is None:
        updates["generator"] = config.generator.model_copy(update={"num_gpus": 1.0 if gpus else 0.0})
    return config.model_copy(update=updates)


def build_app(args: dict | None = None):
    """Application builder for ``serve run`` / ``serve deploy`` (``args`` from the config file)."""
    config = resolved_config(args)
    raw = config.model_dump()
    enc, gen = config.encoder, config.generator
    encoder = PromptEncoderDeployment.options(
        ray_actor_options={"num_cpus": enc.num_cpus}, max_ongoing_requests=enc.max_ongoing_requests,
        autoscaling_config=_autoscaling(enc),
    ).bind(raw)
    generator = GeneratorDeployment.options(
        ray_actor_options={"num_cpus": gen.num_cpus, "num_gpus": gen.num_gpus},
        max_ongoing_requests=gen.max_ongoing_requests, max_queued_requests=gen.max_queued_requests,
        graceful_shutdown_timeout_s=gen.graceful_shutdown_timeout_s, health_check_period_s=gen.health_check_period_s,
        autoscaling_config=_autoscaling(gen),
    ).bind(raw)
    return IngressDeployment.options(num_replicas=config.ingress_replicas).bind(encoder, generator, raw)
