"""Writes Z-Image Union ControlNets with random weights, from diffusers' ``ZImageControlNetModel``, for the
transformer of a checkpoint (its width, heads and layers), in either published layout.

``version`` 1.0, 2.0 or 2.1, as the published checkpoints are built (``core.checkpoints.controlnet_config``).
``layout``: ``diffusers`` (a directory, ``save_pretrained``) or ``single-file`` (one .safetensors file, as
published). Unlike a freshly initialised ControlNet (whose input and output projections diffusers zeroes), every
weight is random, so the control visibly changes images.
"""

from __future__ import annotations

from pathlib import Path

from ..core.checkpoints import controlnet_config
LAYOUTS = ("diffusers", "single-file")


def write_controlnet(out: str | Path, model_dir: str | Path, version: str = "2.1", layout: str = "diffusers",
                     seed: int = 0, dtype: str = "float32", device: str = "cpu") -> Path:
    """A random ControlNet for the model in ``model_dir``, written to ``out``: a directory (``diffusers``) or a
    .safetensors file (``single-file``). Returns ``out``."""
    # torch and diffusers: only when a ControlNet is written
    import torch
    from diffusers import ZImageControlNetModel, ZImageTransformer2DModel
    from safetensors.torch import save_file

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    config = controlnet_config(ZImageTransformer2DModel.load_config(str(model_dir), subfolder="transformer"), version)
    torch.manual_seed(seed)
    with torch.device(device):
        model = ZImageControlNetModel(**config)
        with torch.no_grad():  # diffusers zeroes the control projections at init: random, so control shows
            for name, p in model.named_parameters():
                if name.endswith(("before_proj.weight", "after_proj.weight")):
                    p.normal_(0, p.shape[1] ** -0.5)
                elif name.endswith(("before_proj.bias", "after_proj.bias")):
                    p.normal_(0, 0.02)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    out = Path(out)
    if layout == "diffusers":
        model.save_pretrained(out, safe_serialization=True)
        return out
    state = {k: v.contiguous().cpu() for k, v in model.state_dict().items()}
    if version == "2.0":  # the published 2.0 file carries control noise-refiner blocks whose input is zero
        refiner = ZImageControlNetModel(**{**config, "add_control_noise_refiner": "control_noise_refiner"})
        for k, v in refiner.state_dict().items():
            if k.startswith("control_noise_refiner."):
                state[k] = (torch.zeros_like(v) if k.endswith("before_proj.weight") else v).to(getattr(torch, dtype))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out
