"""Writes LoRA adapters with random weights for a Z-Image transformer, in diffusers' format.

``pipeline.save_lora_weights`` writes the file (``OUT/pytorch_lora_weights.safetensors``, with the adapter's
rank and alpha in its metadata), so ``ZImagePipeline.load_lora_weights(OUT)`` reads it as it reads any
adapter trained with diffusers. The shapes come from the model's config on the meta device, so a full-size
adapter needs no full-size weights in memory. The same seed writes the same tensors and metadata (not always
the same bytes: safetensors orders its header's metadata keys as it likes). Unlike a freshly
initialised LoRA (whose B matrices are zero), both matrices are random, so the adapter visibly changes images.
"""

from __future__ import annotations

from pathlib import Path

# attention's projections and the feed-forward's, in every block: what LoRA fine-tunes of Z-Image target
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")


def lora_state_dict(model_dir: str | Path, rank: int = 4, seed: int = 0, std: float = 0.5) -> dict:
    """{peft module key: tensor} of a random rank-``rank`` adapter for the transformer in ``model_dir``:
    ``lora_A`` ~ N(0, std / sqrt(in)), ``lora_B`` ~ N(0, std / sqrt(rank)), so that the update's size is about
    ``std`` times the input's whatever the layer's width."""
    # torch and diffusers: only when an adapter is written
    import torch
    from diffusers import ZImageTransformer2DModel

    config = ZImageTransformer2DModel.load_config(str(model_dir), subfolder="transformer")
    with torch.device("meta"):
        transformer = ZImageTransformer2DModel.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in TARGETS):
            a = torch.randn(rank, module.in_features, generator=generator) * (std / module.in_features ** 0.5)
            b = torch.randn(module.out_features, rank, generator=generator) * (std / rank ** 0.5)
            layers[f"{name}.lora_A.weight"] = a.to(torch.bfloat16)
            layers[f"{name}.lora_B.weight"] = b.to(torch.bfloat16)
    if not layers:
        raise ValueError(f"no {', '.join(TARGETS)} layers in the transformer of {model_dir}")
    return layers


def write_lora(out: str | Path, model_dir: str | Path, rank: int = 4, seed: int = 0) -> Path:
    """A random adapter for the model in ``model_dir``, written to ``out`` (a directory); returns the file."""
    from diffusers import ZImagePipeline  # only when an adapter is written

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ZImagePipeline.save_lora_weights(
        out, transformer_lora_layers=lora_state_dict(model_dir, rank, seed),
        transformer_lora_adapter_metadata={"r": rank, "lora_alpha": rank, "target_modules": list(TARGETS)})
    return out / "pytorch_lora_weights.safetensors"
