"""LoRA adapters on the engine's transformer: where an adapter's file is, and loading it through diffusers
(``load_lora_weights``, which also converts the kohya / ComfyUI key layouts it knows for Z-Image).

An adapter that can't be used (a missing file, one that is no safetensors file, one made for another model or
with other shapes) is an :class:`~zimage_serve.core.errors.AdapterError` naming the adapter and why, raised
before anything is generated; a failed load leaves no part of the adapter in the model.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import AdapterError

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what pipeline.save_lora_weights writes


def adapter_file(source: str, label: str = "the adapter", param: str | None = None) -> Path:
    """The .safetensors file of an adapter: ``source`` itself, or the one in the directory ``source`` (diffusers'
    ``pytorch_lora_weights.safetensors``, else its only .safetensors file). ``label`` names it in errors."""
    path = Path(source).expanduser()
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
    raise AdapterError(f"{label}: {source} does not exist (a .safetensors file, or a directory with one)",
                       param=param)


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


def load_adapter(pipe, name: str, source: str) -> Path:
    """Load the adapter at ``source`` into ``pipe``'s transformer as ``name`` (inactive until selected); returns
    its file."""
    path = adapter_file(source, f"adapter {name!r}")
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    except Exception as e:  # safetensors' and peft's errors: a corrupt file, unknown keys, mismatched shapes
        _forget(pipe, name)
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise AdapterError(f"adapter {name!r} ({path}) could not be loaded: {reason}", param=name) from None
    if name not in pipe.get_list_adapters().get("transformer", []):
        raise AdapterError(f"adapter {name!r} ({path}) holds no weights for this model's transformer", param=name)
    return path


def _forget(pipe, name: str) -> None:
    """Whatever part of a failed adapter was injected, removed."""
    try:
        if name in pipe.get_list_adapters().get("transformer", []):
            pipe.delete_adapters([name])
    except Exception:  # nothing was injected
        pass
