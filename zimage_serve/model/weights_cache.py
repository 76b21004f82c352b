"""An optional cache of the transformer's weights converted to the serving dtype (ZIMAGE_WEIGHTS_CACHE=1).

The hub ships the 6.15B transformer in float32 (24.6 GB); replicas serve it in bf16. With the cache on,
the first load converts as usual and then saves the converted transformer (12.3 GB) under
ZIMAGE_CACHE_DIR/weights/<checkpoint revision>-<dtype>/; every later load reads that instead: half the
bytes from disk, nothing to convert. The cache is keyed by the checkpoint's revision (which changes when
any of its files does), written to a temporary directory and renamed into place when complete, so a
reader never sees half a cache, and checked like any checkpoint before use: a damaged one is removed and
the load falls back to the checkpoint (and writes the cache again).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from ..settings import environment
from ..core.errors import ModelSourceError
from .sources import ModelSource, read_safetensors_header, weight_files

log = logging.getLogger("zimage_serve")
_SAFETENSORS_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
STALE_TMP_S = 3600  # a copy still being written is younger than this (12.3 GB took 16 s on the H100 machine)


def cache_path(source: ModelSource, dtype: str) -> Path | None:
    """Where the transformer converted to ``dtype`` is cached, or None when the cache is off or useless
    (the checkpoint already stores it in ``dtype``)."""
    env = environment()
    if not env.weights_cache:
        return None
    stored = {d for d, _ in source.tensors.get("transformer", {}).values()}
    if stored == {_SAFETENSORS_DTYPE.get(dtype)}:
        return None
    return env.cache_dir / "weights" / f"{source.revision}-{dtype}" / "transformer"


def usable(path: Path | None) -> bool:
    """Whether a complete, undamaged cache is at ``path``; a damaged one is removed (and written again later)."""
    if path is None or not path.is_dir():
        return False
    try:
        if not (path / "config.json").exists():
            raise ModelSourceError(f"{path / 'config.json'} is missing")
        for f in weight_files(path):
            read_safetensors_header(f)
        return True
    except ModelSourceError as e:
        log.warning("weights cache %s is damaged (%s): removing it, loading the checkpoint", path, e)
        shutil.rmtree(path.parent, ignore_errors=True)
        return False


def save(transformer, path: Path) -> None:
    """Save the loaded, not yet modified, transformer at ``path`` (diffusers' own layout, safetensors).
    Another replica saving at once is harmless: the first complete rename wins, the other copy is dropped."""
    tmp = path.parent.with_name(f".{path.parent.name}.{uuid.uuid4().hex[:8]}.tmp")
    for stale in path.parent.parent.glob(f".{path.parent.name}.*.tmp"):  # left by a writer that was killed
        if time.time() - stale.stat().st_mtime > STALE_TMP_S:
            shutil.rmtree(stale, ignore_errors=True)
    try:
        transformer.save_pretrained(tmp / path.name, safe_serialization=True, max_shard_size="5GB")
        os.rename(tmp, path.parent)
        log.info("weights cache written: %s", path)
    except OSError as e:  # a full disk or a read-only cache must not stop the replica: it runs uncached
        if not usable(path):
            log.warning("weights cache not written (%s); loads keep reading the checkpoint", e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
