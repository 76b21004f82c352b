"""One resolver for every model source: ``tiny``, a local directory, or a ModelScope hub id.

Every source ends as a :class:`ModelSource`: a validated local directory in the diffusers layout
whose weights are safetensors only. Validation reads only JSON files and safetensors headers, so
it is fast on a 33 GB checkpoint and names the exact file that is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from ..settings import environment
from ..core.checkpoints import DEFAULT_HUB_ID, RANDOM_WEIGHTS_MARKER
from ..core.errors import ModelSourceError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TINY_VERSION = "tiny-v1"  # bump when checkpoint.SHAPES["tiny"] changes
WEIGHTED = ("transformer", "text_encoder", "vae")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ModelSource:
    """A checked local checkpoint. ``revision`` keys caches (it changes when any file changes)."""

    spec: str
    path: Path
    revision: str
    random_weights: bool
    tensors: dict  # component -> {tensor name: (dtype, numel)} from safetensors headers

    @property
    def label(self) -> str:
        return f"{self.spec} (random test weights: images are noise)" if self.random_weights else self.spec


log = logging.getLogger("zimage_serve")


def resolve(spec: str, gpu: bool = False) -> ModelSource:
    """Turn ``--model`` into a validated local checkpoint, or raise ModelSourceError saying why.

    ``auto`` is the hub model when a GPU is present and the model is in the cache, else ``tiny``.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ModelSourceError("no model given: pass --model tiny, a local directory, or a hub id")
    if spec == "auto":
        cached = cached_hub(DEFAULT_HUB_ID) if gpu else None
        if cached is not None:
            return _validate(DEFAULT_HUB_ID, cached)
        log.warning("no GPU or no cached %s: serving the embedded tiny checkpoint (random test weights: "
                    "images are noise); pass --model to choose", DEFAULT_HUB_ID)
        spec = "tiny"
    if spec == "tiny":
        return _validate(spec, ensure_tiny())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"model {spec!r} is a file; give the checkpoint's directory (with model_index.json)")
        return _validate(spec, path)
    if HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return _validate(spec, _from_hub(spec))
    raise ModelSourceError(f"model {spec!r} is neither a local directory nor a hub id like Tongyi-MAI/Z-Image-Turbo")


def ensure_tiny() -> Path:
    """The embedded random-weight checkpoint, written to the cache on first use."""
    path = environment().cache_dir / TINY_VERSION
    if not (path / "model_index.json").exists():
        from ..testing.checkpoint import write_checkpoint  # the writer's torch and diffusers only when needed

        write_checkpoint(path, "tiny", overwrite=False)
    return path


_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken", RANDOM_WEIGHTS_MARKER]


def cached_hub(model_id: str) -> Path | None:
    from modelscope import snapshot_download  # imported here: only hub ids need it

    try:
        return Path(snapshot_download(model_id, local_files_only=True, allow_patterns=_PATTERNS))
    except Exception:
        return None


def _from_hub(model_id: str) -> Path:
    env = environment()
    cached = cached_hub(model_id)
    if cached is not None:
        return cached
    from modelscope import snapshot_download  # as in cached_hub

    try:
        socket.create_connection((env.hub_domain, 443), timeout=3).close()
    except OSError as e:
        raise ModelSourceError(
            f"model {model_id!r} is not in the ModelScope cache at {env.modelscope_cache} and the hub "
            f"({env.hub_domain}) can't be reached ({e.__class__.__name__}). Download it on a connected machine "
            f"into a directory and set MODELSCOPE_CACHE to it, or pass --model /path/to/checkpoint") from None
    try:
        return Path(snapshot_download(model_id, allow_patterns=_PATTERNS))
    except Exception as e:
        raise ModelSourceError(f"downloading {model_id!r} from ModelScope into {env.modelscope_cache} failed: {e}") from None


def safetensors_header(path: Path) -> tuple[int, dict, int]:
    """(where the tensors' data begins, {tensor name: its header entry (dtype, shape, data_offsets)}, the file's
    size) of a safetensors file, or ModelSourceError when its header can't be read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 100 * 2**20):
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise ModelSourceError(f"{path} is not a readable safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return 8 + n, header, size


def read_safetensors_header(path: Path) -> dict:
    """Tensor name -> (dtype, numel), checking that the file holds all the bytes its header promises."""
    data, header, size = safetensors_header(path)
    end, tensors = 0, {}
    for name, info in header.items():
        numel = 1
        for d in info["shape"]:
            numel *= d
        tensors[name] = (info["dtype"], numel)
        end = max(end, info["data_offsets"][1])
    if data + end != size:
        raise ModelSourceError(f"{path} is truncated or corrupt: the header needs {data + end} bytes, the file has {size}")
    return tensors


def weight_files(component_dir: Path) -> list[Path]:
    indexes = sorted(component_dir.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ModelSourceError(f"{indexes[0]} is not a valid shard index ({e})") from None
        files = [component_dir / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.exists():
                raise ModelSourceError(f"{f} is missing (listed in {indexes[0].name})")
        return files
    files = sorted(component_dir.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in component_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelSourceError(f"{component_dir} has only pickle weights ({', '.join(pickles)}); "
                                   "zimage-serve loads safetensors only")
        raise ModelSourceError(f"{component_dir} has no .safetensors weights")
    return files


def _validate(spec: str, root: Path) -> ModelSource:
    index = root / "model_index.json"
    if not index.exists():
        raise ModelSourceError(f"{index} is missing: {root} is not a diffusers checkpoint")
    try:
        meta = json.loads(index.read_text())
    except ValueError as e:
        raise ModelSourceError(f"{index} is not valid JSON ({e})") from None
    if meta.get("_class_name") != "ZImagePipeline":
        raise ModelSourceError(f"{index} describes a {meta.get('_class_name')!r}, not a Z-Image checkpoint (ZImagePipeline)")
    digest = hashlib.sha256(index.read_bytes())
    tensors = {}
    for component in ("transformer", "text_encoder", "vae", "tokenizer", "scheduler"):
        cdir = root / component
        if component not in meta or not cdir.is_dir():
            raise ModelSourceError(f"{cdir} is missing: a Z-Image checkpoint needs {component}/")
        configs = [cdir / n for n in ("config.json", "scheduler_config.json", "tokenizer_config.json") if (cdir / n).exists()]
        if not configs:
            raise ModelSourceError(f"{cdir} has no config file (config.json / scheduler_config.json / tokenizer_config.json)")
        for c in configs:
            digest.update(c.read_bytes())
        if component in WEIGHTED:
            tensors[component] = {}
            for f in weight_files(cdir):
                tensors[component].update(read_safetensors_header(f))
                st = f.stat()
                digest.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    if not any((root / "tokenizer" / n).exists() for n in ("tokenizer.json", "vocab.json")):
        raise ModelSourceError(f"{root / 'tokenizer' / 'tokenizer.json'} is missing")
    random_weights = (root / RANDOM_WEIGHTS_MARKER).exists()
    return ModelSource(spec=spec, path=root, revision=digest.hexdigest()[:16], random_weights=random_weights, tensors=tensors)


def config_of(source: ModelSource, component: str) -> dict:
    return json.loads((source.path / component / "config.json").read_text())

