"""Writes Z-Image Union ControlNets with random weights, from diffusers' ``ZImageControlNetModel``, for the
transformer of a checkpoint (its width, heads and layers), in either published layout.

Versions, as the Z-Image-Turbo-Fun-Controlnet-Union checkpoints are built (read from diffusers' single-file
conversion, ``convert_z_image_controlnet_checkpoint_to_diffusers``, and the model cards):

- ``1.0``: control blocks at every 5th transformer layer (0, 5, ..., 25 on the 30-layer model), 16 control
  channels (the control image's latents), no control refiner;
- ``2.0``: control blocks at every 2nd layer (15 on the full model), 33 control channels (control latents,
  masked image latents and the mask: the inpaint mode), control blocks refine too (``control_layers``);
- ``2.1``: as 2.0, with control noise-refiner blocks of their own (``control_noise_refiner``).

``layout``: ``diffusers`` (a directory, ``save_pretrained``) or ``single-file`` (one .safetensors file, as
published). Unlike a freshly initialised ControlNet (whose input and output projections diffusers zeroes), every
weight is random, so the control visibly changes images.
"""

from __future__ import annotations

from pathlib import Path

from ..core.checkpoints import CONTROLNET_VERSIONS as VERSIONS
LAYOUTS = ("diffusers", "single-file")


def controlnet_config(transformer_config: dict, version: str = "2.1") -> dict:
    """The ``ZImageControlNetModel`` config of a Union ControlNet ``version`` for a transformer of this config."""
    if version not in VERSIONS:
        raise ValueError(f"unknown ControlNet version {version!r}; choose one of {', '.join(VERSIONS)}")
    t = transformer_config
    n_layers, channels = t.get("n_layers", 30), t.get("in_channels", 16)
    step = 5 if version == "1.0" else 2
    return dict(
        control_layers_places=list(range(0, n_layers, step)),
        control_refiner_layers_places=list(range(t.get("n_refiner_layers", 2))),
        control_in_dim=channels if version == "1.0" else 2 * channels + 1,
        add_control_noise_refiner={"1.0": None, "2.0": "control_layers", "2.1": "control_noise_refiner"}[version],
        all_patch_size=tuple(t.get("all_patch_size", (2,))), all_f_patch_size=tuple(t.get("all_f_patch_size", (1,))),
        dim=t.get("dim", 3840), n_refiner_layers=t.get("n_refiner_layers", 2), n_heads=t.get("n_heads", 30),
        n_kv_heads=t.get("n_kv_heads", 30), norm_eps=t.get("norm_eps", 1e-5), qk_norm=t.get("qk_norm", True),
    )


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
