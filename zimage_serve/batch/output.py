"""The batch job's output directory: atomic image writes and a manifest that survives kill -9.

Invariants: an image file exists under its final name only when complete (written to a temporary
name, fsynced, renamed); a manifest line is appended only after its image is in place, one line a
write, fsynced. On start, a torn last line and leftover temporary files are removed and ids whose
image is missing or has another size than listed are forgotten, so a rerun does exactly the rest.
Reading every image back to compare its SHA-256 (``verify``) also finds images altered in place, but
reads the whole output again: hours for millions of images (bench/recover.py), so it is opt-in.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

MANIFEST = "manifest.jsonl"
TMP_PREFIX = ".tmp-"


def write_atomic(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``directory/name`` so that the name never holds a partial file."""
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(TMP_PREFIX):
        raise ValueError(f"unsafe output name {name!r}")
    final = directory / name
    tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


class OutputDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = self.path / MANIFEST

    def recover(self, verify: bool = False) -> dict[str, dict]:
        """Clean up after a killed run; return the finished entries by id (manifest rewritten if needed).
        An entry counts as finished when its image has the size it lists; with ``verify`` (or an entry from
        before sizes were listed), the SHA-256 it lists."""
        for tmp in self.path.glob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
        done: dict[str, dict] = {}
        dirty = False
        if self.manifest.exists():
            for line in self.manifest.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    image = self.path / entry["file"]
                    ok = "/" not in entry["file"] and image.is_file() and (
                        image.stat().st_size == entry["bytes"] if "bytes" in entry and not verify
                        else hashlib.sha256(image.read_bytes()).hexdigest() == entry["sha256"])
                except (ValueError, KeyError, TypeError):
                    ok = False
                if ok and entry["id"] not in done:
                    done[entry["id"]] = entry
                else:
                    dirty = True
        if dirty:
            body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in done.values())
            write_atomic(self.path, MANIFEST, body.encode())
        return done

    def append(self, entry: dict) -> None:
        with open(self.manifest, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
