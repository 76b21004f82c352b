"""What a generator replica reports of itself (/readyz's generators, Generator.info): ready or why not, the plan in
force, where it runs, its batches, its start stage by stage, and its adapters and ControlNet."""

from __future__ import annotations

import os


def replica_report(g) -> dict:
    """The report of Generator ``g`` (serving/generator.py), from its state now."""
    if g.engine is None:
        return {"ready": False, "reason": g.reason, **_adapters(g), "start": g.start.report()}
    from ..model.startup import compiled_graphs  # (loaded by the start already; the deployment's import loads none)

    e = g.engine
    return {"ready": True, "model": e.source.spec, "revision": e.source.revision,
            "random_weights": e.source.random_weights, "plan": e.plan.to_dict(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu": e.gpu_info(),
            "load_seconds": round(g.load_seconds, 2), "speedups": e.speedups, "batches": g.batches[-200:],
            "batches_run": g.batches_run,  # (batches: the last 200 sizes)
            "prompts_encoded": g.prompts_encoded,
            **({"text_encoder": g.text_encoder} if g.text_encoder else {}),  # (added after the start)
            **({"warm_up": g.warm_up} if g.warm_up else {}),  # (finished after the start)
            "compiles_since_ready": compiled_graphs() - g.graphs_when_ready,
            **_adapters(g), **_controlnet(g), "start": g.start.report()}  # (the start: stage by stage)


def _controlnet(g) -> dict:
    cn = g.engine.controlnet
    if cn is None:
        return {}
    return {"controlnet": {"source": g.config.controlnet, "placement": g.engine.plan.controlnet,
                           "control_layers": len(cn.config.control_layers_places),
                           "version": "2.x (with inpaint)" if g.controlnet.inpaint else "1.0"}}


def _adapters(g) -> dict:
    if not g.config.adapters:
        return {}
    held = set(g.engine.adapters) if g.engine is not None else set()
    adapters = {name: {"status": "failed", "reason": g.adapter_errors[name]} if name in g.adapter_errors
                else {"status": "ready", "held": name in held, "file": g.adapter_files.get(name)}
                for name in g.config.adapters}
    for name, spec in g.config.adapters.items():
        adapters[name].update(source=spec.source, scale=spec.scale)
    return {"adapters": adapters, "adapter_stats": dict(g.adapter_stats)}
