"""The installed distributions' import names, worked out once per node instead of twice per process.

Importing diffusers and importing transformers each call ``importlib.metadata.packages_distributions()`` (which
distribution provides each importable name): a walk over every installed distribution that parses the file list
of each one without a ``top_level.txt`` (torch's alone lists thousands of files). On the GPU machine, where many
distributions are installed, each call took about 0.7 s of a replica's start (bench ``startup_profile``:
``transformers.utils.import_utils`` 0.74 s and ``diffusers.utils.import_utils`` 0.68 s of their own time).

:func:`remember_package_map` makes ``packages_distributions`` answer from a memo: worked out at most once per
process, and kept in a small JSON file in the node's cache, named after what the answer depends on: the
distributions each directory on ``sys.path`` holds (installing, upgrading or removing one adds, renames or removes
its ``.dist-info`` directory, and so changes the file's name). A file that can't be
read or written is no error: the answer is then worked out as before. Every call returns a fresh copy.

This module imports neither torch nor diffusers: GPU workers call it first thing (model/startup.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

# the standard library's own (not our memo, should this module be imported again after remember_package_map)
_computed = getattr(importlib.metadata.packages_distributions, "__wrapped__", importlib.metadata.packages_distributions)
_memo: dict[str, list[str]] | None = None
KEEP_FILES = 16  # the node's newest answers kept (each Ray session may put a directory of its own on sys.path)


def _key() -> str:
    """A hash of the distributions on sys.path: each directory's ``.dist-info`` and ``.egg-info`` entries (their
    names carry the version), and its ``.pth`` files."""
    parts = []
    for entry in sys.path:
        try:
            names = sorted(n for n in os.listdir(entry or ".") if n.endswith((".dist-info", ".egg-info", ".pth")))
        except OSError:  # not a directory: a zip (its time, then), or gone
            try:
                names = os.stat(entry).st_mtime_ns
            except OSError:
                names = None
        parts.append((entry, names))
    return hashlib.sha256(repr((sys.version, parts)).encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, list[str]] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        return None
    return data


def _write(path: Path, data: dict[str, list[str]]) -> None:
    """``data`` to ``path`` whole or not at all (whoever else writes it meanwhile), readable by the node's other
    users; the directory's oldest answers beyond :data:`KEEP_FILES` removed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = f.name
            json.dump(data, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
        for old in sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_FILES:]:
            old.unlink(missing_ok=True)
    except (OSError, ValueError, TypeError):
        pass
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def package_map(directory: Path | None) -> dict[str, list[str]]:
    """``packages_distributions()``'s answer: this process's memo, else ``directory``'s file for this environment,
    else worked out (and written there). A fresh copy each time (callers may change theirs). The memo is the
    process's: once made, ``directory`` is not looked at again (None: no file read or written for it)."""
    global _memo
    if _memo is None:
        path = directory / f"{_key()}.json" if directory is not None else None
        _memo = _read(path) if path is not None else None
        if _memo is None:
            _memo = {name: list(dists) for name, dists in _computed().items()}
            if path is not None:
                _write(path, _memo)
    return {name: list(dists) for name, dists in _memo.items()}


def remember_package_map(directory: Path | None) -> None:
    """From now on, ``importlib.metadata.packages_distributions()`` answers from :func:`package_map` (the node's
    file in ``directory``, None: this process's memo only). Call it before diffusers or transformers is imported."""
    def packages_distributions() -> dict[str, list[str]]:
        return package_map(directory)

    packages_distributions.__wrapped__ = _computed
    importlib.metadata.packages_distributions = packages_distributions
