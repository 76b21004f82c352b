"""Prometheus metrics through Ray Serve's metrics API (exported on Ray's metrics endpoint).

Created lazily inside each replica; Serve adds deployment/replica/application tags itself.
"""

from __future__ import annotations

from functools import lru_cache

from ray.serve import metrics as serve_metrics

_LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]


@lru_cache(maxsize=None)
def _metrics():
    m = serve_metrics
    return {
        "images": m.Counter("zimage_images_total", description="Images generated.", tag_keys=("model",)),
        "stage": m.Histogram("zimage_stage_seconds", description="Seconds per stage: queue, encode, denoise, decode, image_encode.",
                             boundaries=_LATENCY_BUCKETS, tag_keys=("stage",)),
        "batch": m.Histogram("zimage_batch_size", description="Items per batch (encoder prompts, generator images).",
                             boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64], tag_keys=("stage",)),
        "cache": m.Counter("zimage_embedding_cache_total", description="Embedding cache lookups by result.",
                           tag_keys=("result",)),
        "vram": m.Gauge("zimage_peak_vram_bytes", description="Peak GPU memory allocated by this replica."),
        "plan": m.Gauge("zimage_plan_info", description="The staging plan in force (value 1, the plan in tags).",
                        tag_keys=("kind", "transformer", "vae", "text_encoder", "encode_on", "device")),
        "adapters": m.Counter("zimage_adapter_events_total", description="LoRA adapter loads onto a replica's GPU, "
                              "hits (already held) and evictions, per adapter.", tag_keys=("event", "adapter")),
        "adapter_load": m.Histogram("zimage_adapter_load_seconds", description="Seconds to load a LoRA adapter onto "
                                    "a replica's GPU.", boundaries=_LATENCY_BUCKETS),
        "start": m.Gauge("zimage_generator_start_seconds", description="Seconds each stage of this generator replica's "
                         "last start took (model/startup.py: process, imports, resolve, plan, load, speedups, warmup; "
                         "total).", tag_keys=("stage",)),
        "requests": m.Counter("zimage_http_requests_total", description="HTTP requests by route and status.",
                              tag_keys=("route", "status")),
    }


def observe_stage(stage: str, seconds: float) -> None:
    _metrics()["stage"].observe(seconds, tags={"stage": stage})


def observe_batch(stage: str, size: int) -> None:
    _metrics()["batch"].observe(size, tags={"stage": stage})


def count_images(model: str, n: int) -> None:
    _metrics()["images"].inc(n, tags={"model": model})


def count_cache(result: str) -> None:
    _metrics()["cache"].inc(1, tags={"result": result})


def set_peak_vram(nbytes: int) -> None:
    _metrics()["vram"].set(nbytes)


def set_plan(plan) -> None:
    _metrics()["plan"].set(1, tags={"kind": plan.kind, "transformer": plan.transformer, "vae": plan.vae,
                                    "text_encoder": plan.text_encoder, "encode_on": plan.encode_on, "device": plan.device})


def set_start(report: dict) -> None:
    """A replica's start, stage by stage (model/startup.py's StartClock.report())."""
    for stage, seconds in {**report["stages_s"], "total": report["total_s"]}.items():
        _metrics()["start"].set(seconds, tags={"stage": stage})


def count_request(route: str, status: int) -> None:
    _metrics()["requests"].inc(1, tags={"route": route, "status": str(status)})


def count_adapter(event: str, adapter: str, seconds: float | None = None) -> None:
    """A LoRA adapter ``event`` (load, hit, eviction) on this replica; a load's ``seconds``."""
    _metrics()["adapters"].inc(1, tags={"event": event, "adapter": adapter})
    if seconds is not None:
        _metrics()["adapter_load"].observe(seconds)
