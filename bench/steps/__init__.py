"""bench/run.py's steps, one module per family. :data:`STEPS` names each step's function (and its arguments);
a step's module is imported only when it runs (or when bench/run.py lists the steps), and importing one
does nothing else: the steps read the environment and touch the GPU when called.

Each step writes $OUT/<step>.json through :func:`bench.common.save`; bench/report.py reads them by those names.
"""

from __future__ import annotations

import functools
import importlib

# name -> (module, function, keyword arguments), in the order bench/run.py --help lists them
STEPS: dict[str, tuple[str, str, dict]] = {
    "build": ("bench.common", "build", {}),
    "stock": ("bench.steps.stock", "stock", {}),
    "engine": ("bench.steps.engine", "engine", {}),
    "engine_gpu": ("bench.steps.engine", "engine_gpu", {}),
    "peak": ("bench.steps.engine", "peak", {}),
    "fusion": ("bench.steps.denoise", "fusion", {}),
    "graphs": ("bench.steps.denoise", "graphs", {}),
    "fp8": ("bench.steps.denoise", "fp8", {}),
    "decode": ("bench.steps.decode", "decode", {}),
    "vram": ("bench.steps.memory", "vram", {}),
    "offload": ("bench.steps.memory", "offload", {}),
    "probe": ("bench.steps.memory", "probe", {}),
    "te": ("bench.steps.te", "te", {}),
    "attn": ("bench.steps.attn", "attn", {}),
    "timeline": ("bench.steps.timeline", "timeline", {}),
    "coldstart": ("bench.steps.coldstart", "coldstart", {}),
    "http": ("bench.steps.http", "http", {}),
    "http_gpu": ("bench.steps.http", "http", {"encode_on": "gpu"}),
    "http_auto": ("bench.steps.http", "http", {"encode_on": "auto"}),
    "http_fp8": ("bench.steps.http", "http", {"encode_on": "cpu", "fp8": True}),
    "http_gpu_fp8": ("bench.steps.http", "http", {"encode_on": "gpu", "fp8": True}),
    "overhead": ("bench.steps.http", "overhead", {}),
    "batch": ("bench.steps.batch", "batch", {}),
    "edits": ("bench.steps.edits", "edits", {}),
    "edits_profile": ("bench.steps.edits", "edits_profile", {}),
    "lora": ("bench.steps.lora", "lora", {}),
    "lora_http": ("bench.steps.lora", "lora_http", {}),
    "controlnet": ("bench.steps.controlnet", "controlnet", {}),
    "controlnet_24": ("bench.steps.controlnet", "controlnet_card", {"gib": 24}),
    "streaming": ("bench.steps.streaming", "streaming", {}),
    "cards": ("bench.steps.cards", "cards", {}),
    "cards_stock": ("bench.steps.cards", "cards_stock", {}),
    "cards_expandable": ("bench.steps.cards", "cards", {"bf16_cards": (16,), "fp8_cards": (), "name": "cards_expandable",
                                                        "alloc_conf": "expandable_segments:True"}),
    "reader_check": ("bench.steps.scaleout", "reader_check", {}),
    "cards_min": ("bench.steps.cards", "cards_min", {}),
    "cards_min_bf16": ("bench.steps.cards", "cards_min", {"weights": ("off",)}),
    "envelopes": ("bench.steps.cards", "envelopes", {}),
    # the partial plans again (their streaming changed), with the 24 GiB base: the resident ones are unchanged
    "cards_partial": ("bench.steps.cards", "cards", {"bf16_cards": (24, 12, 8), "fp8_cards": (8,),
                                                     "name": "cards_partial"}),
    # the 8 GiB partial plans after the planner kept more room (run65's measurements): their envelope must fit
    "cards_8": ("bench.steps.cards", "cards", {"bf16_cards": (8,), "fp8_cards": (8,), "name": "cards_8"}),
    # an experiment: the 8 GiB card's plans made for 0.35 GiB more (one more bf16 block, two FP8), the envelope's
    # headroom under the replica's allocator
    "cards_8_tight": ("bench.steps.cards", "cards", {"bf16_cards": (24, 8), "fp8_cards": (8,), "name": "cards_8_tight",
                                                     "extra_gib": 0.35}),
    "cards_8_fp8": ("bench.steps.cards", "cards", {"bf16_cards": (), "fp8_cards": (8,), "name": "cards_8_fp8"}),
    "startup_profile": ("bench.steps.scaleout", "startup_profile", {}),
    "scaleout_cold": ("bench.steps.scaleout", "scaleout_cold", {}),
    "scaleout": ("bench.steps.scaleout", "scaleout", {}),
    "scaleout_no_preload": ("bench.steps.scaleout", "scaleout_no_preload", {}),
    "preload_check": ("bench.steps.scaleout", "preload_check", {}),
    "scaleout_zero": ("bench.steps.scaleout", "scaleout_zero", {}),
    "_read_weights": ("bench.steps.scaleout", "read_weights", {}),
    # internal: the coldstart step runs it in a fresh process (bench/run.py _first_image)
    "_first_image": ("bench.steps.coldstart", "first_image", {}),
}


def function(name: str):
    """The function that runs step ``name`` (its module imported now)."""
    module, attr, kwargs = STEPS[name]
    fn = getattr(importlib.import_module(module), attr)
    return functools.partial(fn, **kwargs) if kwargs else fn


def summary(name: str) -> str:
    """The first line of the step's docstring (and its arguments, where it has any)."""
    module, attr, kwargs = STEPS[name]
    doc = (getattr(importlib.import_module(module), attr).__doc__ or "").strip().splitlines()
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return (doc[0] if doc else "") + (f" [{args}]" if args else "")
