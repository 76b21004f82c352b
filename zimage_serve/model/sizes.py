"""Component sizes of a checkpoint for the planner, from safetensors headers (nothing is loaded)."""

from __future__ import annotations

from .planner import Z_IMAGE_TURBO, ModelSizes
from .sources import ModelSource, config_of


def sizes_of(source: ModelSource | None) -> ModelSizes:
    """Sizes read from the checkpoint's headers; the official Z-Image-Turbo sizes when there is none."""
    if source is None:
        return Z_IMAGE_TURBO
    return ModelSizes.from_tensors(
        source.tensors,
        transformer_dim=int(config_of(source, "transformer").get("dim", 3840)),
        text_hidden=int(config_of(source, "text_encoder").get("hidden_size", 2560)),
        origin=f"safetensors headers of {source.spec}",
    )
