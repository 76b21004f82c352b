"""The ControlNet (``args.controlnet``): Z-Image's Union ControlNet, diffusers' ``ZImageControlNetModel``, from a
diffusers directory, the single .safetensors file as published, or a ModelScope id holding either.

:func:`find_controlnet` reads only headers and configs (the planner counts its parameters before a byte of weights
is loaded); :func:`load_controlnet` loads it. A single file carries no config: it is inferred from its tensors and
the transformer's config (the published layouts: 1.0 with 16 control channels; 2.x with 33 and an inpaint mode, 2.0
refining with its control blocks, 2.1 with control noise-refiner blocks of its own), so nothing is fetched from a
hub. A ControlNet made for another transformer (another width, more layers) is refused naming both.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.checkpoints import controlnet_config
from ..core.errors import ModelSourceError

_EMBEDDER = "control_all_x_embedder."


@dataclass(frozen=True)
class ControlNetSource:
    """A checked ControlNet: ``path`` a directory with config.json, or a single .safetensors file."""

    spec: str
    path: Path
    single_file: bool
    shapes: dict  # tensor name -> shape, from the headers

    @property
    def version(self) -> str:
        """'1.0' (16 control channels) or '2.x' (33: control, masked image and mask: the inpaint mode)."""
        return "1.0" if self.control_in_dim <= 16 else "2.x"

    @property
    def embedder_shape(self) -> tuple:
        """(width, control channels x 4): its control patch embedder's weight."""
        return next(v for k, v in self.shapes.items() if k.startswith(_EMBEDDER) and k.endswith(".weight"))

    @property
    def control_in_dim(self) -> int:
        return self.embedder_shape[1] // 4  # patches of 2 x 2 x 1 latent pixels

    @property
    def inpaint(self) -> bool:
        """Whether it has the inpaint mode (2.x)."""
        return self.version == "2.x"


def _headers(files: list[Path]) -> dict:
    from safetensors import safe_open  # framework "np": the header only, no torch

    shapes = {}
    for f in files:
        try:
            with safe_open(str(f), framework="np") as st:
                for k in st.keys():
                    shapes[k] = tuple(st.get_slice(k).get_shape())
        except Exception as e:
            raise ModelSourceError(f"controlnet: {f} is not a readable safetensors file ({str(e).strip()[:200]})") from None
    return shapes


def find_controlnet(spec: str) -> ControlNetSource:
    """The ControlNet ``spec`` names, checked from its headers (raises ModelSourceError saying what is wrong)."""
    try:
        path = Path(spec).expanduser()
    except RuntimeError as e:  # ~user that does not exist
        raise ModelSourceError(f"controlnet: {spec}: {e}") from None
    if not path.exists():
        from .sources import HUB_ID, _from_hub  # the hub client only for an id

        if not (HUB_ID.match(spec) and not spec.startswith((".", "/", "~"))):
            raise ModelSourceError(f"controlnet: {spec} does not exist (a ZImageControlNetModel directory, a "
                                   ".safetensors file, or a ModelScope id)")
        path = _from_hub(spec)
    if path.is_dir() and (path / "config.json").is_file():
        files, single = sorted(path.glob("*.safetensors")), False
        config = json.loads((path / "config.json").read_text())
        if config.get("_class_name") not in (None, "ZImageControlNetModel"):
            raise ModelSourceError(f"controlnet: {path / 'config.json'} describes a {config['_class_name']!r}, "
                                   "not a ZImageControlNetModel")
    elif path.is_dir():
        files, single = sorted(path.glob("*.safetensors")), True
        if len(files) != 1:
            raise ModelSourceError(f"controlnet: {path} has no config.json and {len(files)} .safetensors files; "
                                   "name the file to load")
    else:
        files, single = [path], True
    if not files:
        raise ModelSourceError(f"controlnet: {path} has no .safetensors weights")
    shapes = _headers(files)
    if not any(k.startswith(_EMBEDDER) for k in shapes) or not any(k.startswith("control_layers.") for k in shapes):
        raise ModelSourceError(f"controlnet: {files[0]} holds no Z-Image ControlNet weights (no control_layers, "
                               f"no {_EMBEDDER.rstrip('.')}; {len(shapes)} tensors)")
    return ControlNetSource(spec=spec, path=files[0] if single else path, single_file=single, shapes=shapes)


def inferred_config(source: ControlNetSource, transformer_config: dict) -> dict:
    """The ``ZImageControlNetModel`` config of a single file (``core.checkpoints.controlnet_config``), from its
    tensors and the transformer's config: its control blocks spread evenly over the transformer's layers, 2.0 told
    from 2.1 as diffusers tells them (2.0's control noise-refiner input projections are zero)."""
    blocks = len({k.split(".")[1] for k in source.shapes if k.startswith("control_layers.")})
    version = "1.0"
    if source.version != "1.0":
        name = "control_noise_refiner.0.before_proj.weight"
        version = "2.1" if name in source.shapes and _nonzero(source.path, name) else "2.0"
    return controlnet_config(transformer_config, version, blocks)


def _nonzero(path: Path, name: str) -> bool:
    from safetensors import safe_open  # one tensor of the file, to tell 2.0 from 2.1

    with safe_open(str(path), framework="pt") as f:
        return bool(f.get_tensor(name).any())


def check_fits(source: ControlNetSource, transformer_config: dict) -> None:
    """Refuses a ControlNet made for another transformer (its width, or control at layers it does not have)."""
    dim = transformer_config.get("dim", 3840)
    width = source.embedder_shape[0]
    if width != dim:
        raise ModelSourceError(f"controlnet {source.spec}: made for a transformer of width {width}; this model's "
                               f"is {dim}")
    channels = transformer_config.get("in_channels", 16)
    if source.control_in_dim not in (channels, 2 * channels + 1):
        raise ModelSourceError(f"controlnet {source.spec}: {source.control_in_dim} control channels; this model "
                               f"takes {channels} (1.0) or {2 * channels + 1} (2.x)")
    if not source.single_file:
        places = json.loads((source.path / "config.json").read_text()).get("control_layers_places", [])
        if places and max(places) >= transformer_config.get("n_layers", 30):
            raise ModelSourceError(f"controlnet {source.spec}: controls layer {max(places)}; this model has "
                                   f"{transformer_config.get('n_layers', 30)}")


def load_controlnet(source: ControlNetSource, transformer_config: dict, device, dtype):
    """The ControlNet on ``device`` in ``dtype`` (diffusers' loaders: ``from_pretrained``, or ``from_single_file``
    with the inferred config, offline)."""
    from diffusers import ZImageControlNetModel  # where a model is loaded

    check_fits(source, transformer_config)
    if not source.single_file:
        model = ZImageControlNetModel.from_pretrained(source.path, torch_dtype=dtype, use_safetensors=True)
    else:
        with tempfile.TemporaryDirectory(prefix="zimage-controlnet-") as config_dir:
            config = {"_class_name": "ZImageControlNetModel", **inferred_config(source, transformer_config)}
            (Path(config_dir) / "config.json").write_text(json.dumps(config))
            model = ZImageControlNetModel.from_single_file(str(source.path), config=config_dir,
                                                           local_files_only=True, torch_dtype=dtype)
    return model.to(device).eval().requires_grad_(False)
