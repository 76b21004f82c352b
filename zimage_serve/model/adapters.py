"""LoRA adapters on the engine's transformer: where an adapter's file is, and loading it through diffusers
(``ZImagePipeline.lora_state_dict``, which also converts the kohya / ComfyUI key layouts it knows for Z-Image),
as plain tensors for the engine's LoRA slots (optim/lora_slots.py): peft never wraps the engine's layers.

An adapter that can't be used (a missing file, one that is no safetensors file, one made for another model or
with other shapes) is an :class:`~zimage_serve.core.errors.AdapterError` naming the adapter and why, raised
before anything is generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import AdapterError, ZImageError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what pipeline.save_lora_weights writes


def adapter_file(source: str, label: str = "the adapter", param: str | None = None) -> Path:
    """The .safetensors file of an adapter: ``source`` itself, or the one in the directory ``source`` (diffusers'
    ``pytorch_lora_weights.safetensors``, else its only .safetensors file). ``label`` names it in errors."""
    try:
        path = Path(source).expanduser()
    except RuntimeError as e:  # ~user that does not exist
        raise AdapterError(f"{label}: {source}: {e}", param=param) from None
    if path.is_file():
        return _checked(path, label, param)
    if path.is_dir():
        if (path / WEIGHT_NAME).is_file():
            return _checked(path / WEIGHT_NAME, label, param)
        files = sorted(path.glob("*.safetensors"))
        if len(files) == 1:
            return _checked(files[0], label, param)
        raise AdapterError(f"{label}: {path} holds {len(files)} .safetensors files; name the one to load",
                           param=param)
    # a ModelScope id: resolved like the model (sources' hub client only for an adapter that is not a local path)
    from ..core.errors import ModelSourceError
    from .sources import HUB_ID, _from_hub

    if HUB_ID.match(str(source)) and not str(source).startswith((".", "/", "~")):
        try:
            return adapter_file(str(_from_hub(str(source))), label, param)
        except ModelSourceError as e:
            raise AdapterError(f"{label}: {e}", param=param) from None
    raise AdapterError(f"{label}: {source} does not exist (a .safetensors file, a directory with one, or a "
                       "ModelScope id)", param=param)


def _checked(path: Path, label: str, param: str | None) -> Path:
    """``path`` when its safetensors header reads and names LoRA weights (read without loading them)."""
    from safetensors import safe_open  # no torch: framework "np" reads the header only

    try:
        with safe_open(str(path), framework="np") as f:
            keys = list(f.keys())
    except Exception as e:
        raise AdapterError(f"{label}: {path} is not a readable safetensors file ({str(e).strip()[:200]})",
                           param=param) from None
    if not any("lora" in k.lower() for k in keys):
        raise AdapterError(f"{label}: {path} holds no LoRA weights ({len(keys)} tensors, none named lora)",
                           param=param)
    return path


@dataclass(frozen=True)
class AdapterWeights:
    """An adapter read from its file, on the CPU: per layer of the transformer (its name before fusing), the LoRA
    matrices and what peft scales them by: {name: (A [r, in], B [out, r], (lora_alpha, r, use_rslora))}."""

    name: str
    path: Path
    modules: dict

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _, _ in self.modules.values())

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _ in self.modules.values())


def read_adapter(name: str, source: str, shapes: dict[str, tuple[int, int]]) -> AdapterWeights:
    """The adapter at ``source`` as diffusers' ``ZImagePipeline.load_lora_weights`` reads it (its key layouts,
    kohya / ComfyUI included, and the rank and alpha peft would give each layer), checked against the
    transformer's Linear layers ``shapes`` ({name: (out, in)}, lora_slots.linear_shapes). Raises AdapterError
    naming the adapter and what is wrong."""
    # diffusers' and peft's readers: only when an adapter is read
    from diffusers import ZImagePipeline
    from diffusers.utils.peft_utils import _create_lora_config
    from peft.utils.other import get_pattern_key

    path = adapter_file(source, f"adapter {name!r}", param=name)
    label = f"adapter {name!r} ({path})"
    try:
        state_dict, metadata = ZImagePipeline.lora_state_dict(str(path), return_lora_metadata=True)
    except Exception as e:  # safetensors' and diffusers' errors: a corrupt file, a layout diffusers can't convert
        raise AdapterError(f"{label} could not be read: {_first_line(e)}", param=name) from None
    prefix = "transformer."
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    metadata = {k[len(prefix):]: v for k, v in (metadata or {}).items() if k.startswith(prefix)} or None
    if not state_dict:
        raise AdapterError(f"{label} holds no weights for this model's transformer", param=name)
    unsupported = next((kind for kind, hit in (("LoKr", any(".lokr_" in k for k in state_dict)),
                                               ("DoRA", any("lora_magnitude_vector" in k for k in state_dict)),
                                               ("LoRA biases", any(".lora_B.bias" in k for k in state_dict)))
                        if hit), None)
    if unsupported:
        raise AdapterError(f"{label} uses {unsupported}, which zimage-serve does not serve (plain LoRA only)",
                           param=name)
    modules = {}
    for key, a in state_dict.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[:-len(".lora_A.weight")]
        b = state_dict.get(f"{module}.lora_B.weight")
        if b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(f"{label} is not a LoRA adapter diffusers can load: {module} has no matching lora_A "
                               "and lora_B", param=name)
        if module not in shapes:
            raise AdapterError(f"{label} was made for another base model: it has weights for {module}, which this "
                               "transformer does not have", param=name)
        out, inp = shapes[module]
        if (b.shape[0], a.shape[1]) != (out, inp):
            raise AdapterError(f"{label} was made for other shapes: {module} is {out}x{inp} here, the adapter's "
                               f"update is {b.shape[0]}x{a.shape[1]}", param=name)
        modules[module] = (a, b)
    if not modules:
        raise AdapterError(f"{label} holds no LoRA matrices (lora_A / lora_B) for this model's transformer", param=name)
    # the LoraConfig diffusers makes for peft from this file, and peft's per-layer rank and alpha from it
    ranks = {f"^{m}.lora_B.weight": b.shape[1] for m, (_, b) in modules.items()}
    try:
        config = _create_lora_config(state_dict, None, metadata, ranks, is_unet=True)
    except Exception as e:
        raise AdapterError(f"{label} has LoRA metadata peft can't use: {_first_line(e)}", param=name) from None
    weights = {}
    for module, (a, b) in modules.items():
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
        weights[module] = (a, b, (alpha, r, bool(config.use_rslora)))
    return AdapterWeights(name, path, weights)


def transformer_shapes(model_dir) -> dict[str, tuple[int, int]]:
    """{name: (out, in)} of the Linear layers of the transformer in ``model_dir``, from its config alone (made on
    the meta device: no weights read), which adapters are checked against before the model loads."""
    import torch  # (see read_adapter)
    from diffusers import ZImageTransformer2DModel

    from .optim.lora_slots import linear_shapes

    config = ZImageTransformer2DModel.load_config(str(model_dir), subfolder="transformer")
    with torch.device("meta"):
        return linear_shapes(ZImageTransformer2DModel.from_config(config))


def read_adapters(adapters: dict[str, str], shapes: dict[str, tuple[int, int]]) -> tuple[dict, dict[str, str]]:
    """Every adapter of ``adapters`` ({name: source}) read and checked against the transformer's ``shapes``
    (:func:`transformer_shapes`): ({name: its AdapterWeights} of those that can be used, {name: why not} of the
    others). One that can't be used never stops the rest."""
    good, errors = {}, {}
    for name, source in adapters.items():
        try:
            good[name] = read_adapter(name, source, shapes)
        except ZImageError as e:  # AdapterError, or the hub's error for an id that can't be fetched
            errors[name] = str(e)
    return good, errors


def slot_reserve_bytes(spec, shapes: dict[str, tuple[int, int]], held: int) -> int:
    """GPU bytes to keep free for LoRA slots of ``spec`` and ``held`` adapters held beside them: float32 at the slots'
    rank, (rank x (in + out) + out) x 4 bytes a layer each (an upper bound: the engine's are in its dtype)."""
    layer_bytes = sum((spec.rank * (shapes[m][0] + shapes[m][1]) + shapes[m][0]) * 4 for m in spec.modules)
    return layer_bytes * (held + 1)


def slot_spec(adapters: list[AdapterWeights]):
    """The LoRA slots that fit every one of ``adapters``: the layers any of them changes, at the largest rank."""
    from .optim.lora_slots import SlotSpec  # torch: only when adapters are used

    return SlotSpec(frozenset(m for a in adapters for m in a.modules), max(a.rank for a in adapters))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
