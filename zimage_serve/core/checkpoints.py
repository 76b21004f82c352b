"""What names a Z-Image checkpoint, shared by the resolvers (model/sources.py, model/controlnet.py) and the
random-weight writers (testing/checkpoint.py, testing/controlnet.py)."""

from __future__ import annotations

DEFAULT_HUB_ID = "Tongyi-MAI/Z-Image-Turbo"
RANDOM_WEIGHTS_MARKER = "RANDOM_TEST_WEIGHTS"  # a file in a checkpoint written with random weights
CONTROLNET_VERSIONS = ("1.0", "2.0", "2.1")  # the Union ControlNets as published (testing/controlnet.py writes them)


def controlnet_config(transformer_config: dict, version: str = "2.1", blocks: int | None = None) -> dict:
    """The ``ZImageControlNetModel`` config of a Union ControlNet ``version`` for a transformer of this config, as
    the published checkpoints are built (diffusers' single-file conversion and the model cards): control blocks at
    every 5th transformer layer for 1.0 (6 on the 30-layer model), every 2nd for 2.x (15), or ``blocks`` of them
    spread evenly; 16 control channels for 1.0, 33 for 2.x (control latents, masked image latents and the mask: the
    inpaint mode); 2.0 refines with its control blocks, 2.1 with control noise-refiner blocks of its own."""
    if version not in CONTROLNET_VERSIONS:
        raise ValueError(f"unknown ControlNet version {version!r}; choose one of {', '.join(CONTROLNET_VERSIONS)}")
    t = transformer_config
    n_layers, channels = t.get("n_layers", 30), t.get("in_channels", 16)
    step = max(1, n_layers // blocks) if blocks else (5 if version == "1.0" else 2)
    return dict(
        control_layers_places=list(range(0, step * blocks, step)) if blocks else list(range(0, n_layers, step)),
        control_refiner_layers_places=list(range(t.get("n_refiner_layers", 2))),
        control_in_dim=channels if version == "1.0" else 2 * channels + 1,
        add_control_noise_refiner={"1.0": None, "2.0": "control_layers", "2.1": "control_noise_refiner"}[version],
        all_patch_size=list(t.get("all_patch_size", [2])), all_f_patch_size=list(t.get("all_f_patch_size", [1])),
        dim=t.get("dim", 3840), n_refiner_layers=t.get("n_refiner_layers", 2), n_heads=t.get("n_heads", 30),
        n_kv_heads=t.get("n_kv_heads", 30), norm_eps=t.get("norm_eps", 1e-5), qk_norm=t.get("qk_norm", True),
    )
