"""The text encoder (Qwen3-4B) on the GPU: eager against a regional compile of its decoder layers."""

from __future__ import annotations

import time

from ..common import PROMPT, checkpoint, compile_cache, save, sync, timed


def te():
    """The text encoder on the GPU (bf16, last layer skipped): eager against regionally compiled layers.

    Measured, not adopted (BENCHMARKS.md): batch 1 and 8, a long and a short prompt; the embeddings' difference."""
    import torch

    from zimage_serve.model.encoding import PromptEncoder
    from zimage_serve.model.loader import load_text_encoder
    from zimage_serve.model.optim.accel import compile_setup
    from zimage_serve.model.sources import resolve

    model, tokenizer = load_text_encoder(resolve(str(checkpoint())), torch.device("cuda"), torch.bfloat16)
    encoder = PromptEncoder(model, tokenizer)
    prompts = {"long": PROMPT, "short": "a red fox in the snow"}

    def measure():
        return {f"{name}_b{n}_s": round(timed(lambda: encoder.encode([p] * n), reps=7), 4)
                for name, p in prompts.items() for n in (1, 8)}

    out = {"tokens": {name: encoder.count_tokens(p) for name, p in prompts.items()}, "eager": measure()}
    reference = encoder.encode(list(prompts.values()))
    compile_setup(compile_cache())
    for layer in model.layers:  # regional: the 35 decoder layers share one compiled graph; prompt lengths vary
        layer.compile(dynamic=True, fullgraph=False)
    out["applied"] = {"text_encoder_compile": f"regional ({len(model.layers)} layers)"}
    t = time.time()
    for p in prompts.values():
        for n in (1, 2, 8):
            encoder.encode([p] * n)
    sync()
    out["compile_first_calls_s"] = round(time.time() - t, 1)
    out["compiled"] = measure()
    t = time.time()
    encoder.encode(["an unseen prompt length " * 9] * 3)
    sync()
    out["new_shape_after_warmup_s"] = round(time.time() - t, 3)
    compiled = encoder.encode(list(prompts.values()))
    out["max_abs_diff"] = round(max((a.float() - b.float()).abs().max().item() for a, b in zip(reference, compiled)), 4)
    out["max_abs_reference"] = round(max(a.float().abs().max().item() for a in reference), 2)
    out["cosine_min"] = round(min(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min().item()
                                  for a, b in zip(reference, compiled)), 6)
    save("te", **out)
