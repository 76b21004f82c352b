"""Everything read from the environment, in one place.

| variable | meaning |
|---|---|
| ZIMAGE_CACHE_DIR | where ``--model tiny`` and the compile cache live (default ~/.cache/zimage-serve) |
| MODELSCOPE_CACHE | where hub models are downloaded (ModelScope's own variable; default ~/.cache/modelscope) |
| ZIMAGE_DEVICE | force ``cpu`` or ``cuda`` (default: cuda when available) |
| ZIMAGE_API_KEYS | comma-separated API keys; when set (or the file is), every route but /healthz and /readyz needs one |
| ZIMAGE_API_KEYS_FILE | a file with one API key per line |
| MODELSCOPE_DOMAIN | the hub host to reach (ModelScope's own variable; default modelscope.cn) |
| ZIMAGE_WEIGHTS_CACHE | ``1``: keep the transformer converted to bf16 under ZIMAGE_CACHE_DIR/weights (weights_cache.py) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Environment:
    cache_dir: Path
    modelscope_cache: Path
    device: str | None
    api_keys: tuple[str, ...]
    hub_domain: str
    weights_cache: bool


def _api_keys() -> tuple[str, ...]:
    keys = [k.strip() for k in os.environ.get("ZIMAGE_API_KEYS", "").split(",")]
    path = os.environ.get("ZIMAGE_API_KEYS_FILE")
    if path:
        keys += [line.strip() for line in Path(path).read_text().splitlines()]
    return tuple(k for k in keys if k and not k.startswith("#"))


def environment() -> Environment:
    """Read the environment now (cheap; call where needed rather than caching at import)."""
    home = Path.home() / ".cache"
    device = os.environ.get("ZIMAGE_DEVICE") or None
    return Environment(
        cache_dir=Path(os.environ.get("ZIMAGE_CACHE_DIR", home / "zimage-serve")),
        modelscope_cache=Path(os.environ.get("MODELSCOPE_CACHE", home / "modelscope")),
        device=device,
        api_keys=_api_keys(),
        hub_domain=os.environ.get("MODELSCOPE_DOMAIN", "modelscope.cn"),
        weights_cache=os.environ.get("ZIMAGE_WEIGHTS_CACHE", "0").strip().lower() in ("1", "true", "yes", "on"),
    )
