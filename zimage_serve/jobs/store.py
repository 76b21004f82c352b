"""The async jobs' output store: every accepted job's request, record and result images, under one root.

The root is a local directory (created if missing) or a ``pyarrow.fs`` URI (``file:///abs/path``,
``s3://bucket/prefix``, ``gs://bucket/prefix``). One directory a job, named by its id:
``<id>/request.json`` (the submitted body, written once, first), ``<id>/record.json`` (the job's record, a JSON
dict the caller shapes, rewritten whole on every state change) and ``<id>/image-<i>.<ext>`` (result images).
The store alone is the truth: a restarted process finds every accepted job again with ``load_all``.

Atomicity: no final name ever holds a half-written file. Locally a file is written and fsynced under a temporary
name in the same directory (``.tmp-<hex>-<name>``, never read) and renamed over its final name; on object stores
one ``open_output_stream`` write is atomic already (the object appears whole, at close). A crash can leave a
temporary file, or a job directory without ``record.json`` (killed between the writes of ``create``):
``load_all`` skips such a directory with a warning.

Ids are ``job_`` + 32 hex (uuid4), and the only shape a path is ever built from: any other id is unknown
(``None``) without a filesystem call, so no id reaches outside the root.

One store replica owns a root: concurrent writers to the same root are not coordinated (the last write of a
record wins; within one process the same holds for threads saving one job).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
from typing import Any, Iterable

import pyarrow.fs as pafs

log = logging.getLogger("zimage_serve")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TMP_PREFIX = ".tmp-"

_ID = re.compile(r"job_[0-9a-f]{32}")
_EXT = re.compile(r"[A-Za-z0-9]{1,10}")


def _valid_id(job_id: Any) -> bool:
    return isinstance(job_id, str) and _ID.fullmatch(job_id) is not None


def _image_name(index: Any, ext: Any) -> str | None:
    """``image-<i>.<ext>``; None unless the index is an int >= 0 and the extension alphanumeric."""
    ok = (isinstance(index, int) and not isinstance(index, bool) and index >= 0
          and isinstance(ext, str) and _EXT.fullmatch(ext) is not None)
    return f"image-{index}.{ext}" if ok else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _created_key(record: dict) -> tuple:
    """By ``created_at`` (a record without a numeric one last), then by id."""
    created = record.get("created_at")
    return (float(created) if _number(created) else float("inf"), str(record.get("id", "")))


class JobStore:
    def __init__(self, root: str):
        self._location = str(root)
        if "://" in self._location:
            self._fs, path = pafs.FileSystem.from_uri(self._location)
        else:
            self._fs, path = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(self._location))
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self._root = path.rstrip("/")  # "" for the filesystem root: paths are f"{root}/{id}"
        if self._local:
            self._fs.create_dir(self._root or "/", recursive=True)

    @property
    def location(self) -> str:
        """The root as given (for logs and readiness reports)."""
        return self._location

    @staticmethod
    def new_id() -> str:
        return "job_" + uuid.uuid4().hex

    def _write(self, job_id: str, name: str, data: bytes) -> None:
        directory = f"{self._root}/{job_id}"
        if not self._local:
            stream = self._fs.open_output_stream(f"{directory}/{name}")
            stream.write(data)
            stream.close()  # the object appears here, whole
            return
        self._fs.create_dir(directory, recursive=True)
        tmp = f"{directory}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._fs.move(tmp, f"{directory}/{name}")  # rename(2): atomic, replaces the old file
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _read(self, job_id: str, name: str) -> bytes | None:
        try:
            with self._fs.open_input_stream(f"{self._root}/{job_id}/{name}") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _read_json(self, job_id: str, name: str) -> dict | None:
        data = self._read(job_id, name)
        if data is None:
            return None
        try:
            value = json.loads(data.decode("utf-8"))
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
        except ValueError as e:  # UnicodeDecodeError too
            log.warning("job store %s: unreadable %s of %s: %s", self._location, name, job_id, e)
            return None

    def create(self, record: dict, body: dict) -> None:
        """A new job, named by ``record["id"]``: ``request.json`` first, then ``record.json``."""
        self._check(record.get("id"))
        self._write(record["id"], "request.json", json.dumps(body, ensure_ascii=False).encode("utf-8"))
        self.save(record)

    def save(self, record: dict) -> None:
        """Rewrite the job's ``record.json`` whole (atomic)."""
        self._check(record.get("id"))
        self._write(record["id"], "record.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))

    @staticmethod
    def _check(job_id: Any) -> None:  # before any path is built from it
        if not _valid_id(job_id):
            raise ValueError(f"job id {job_id!r} is not of the form job_<32 hex>")

    def record(self, job_id: str) -> dict | None:
        """The job's record; None when unknown, unreadable, or the id is not of the ``new_id`` shape."""
        return self._read_json(job_id, "record.json") if _valid_id(job_id) else None

    def body(self, job_id: str) -> dict | None:
        """The submitted request body; None as for ``record``."""
        return self._read_json(job_id, "request.json") if _valid_id(job_id) else None

    def put_image(self, job_id: str, index: int, data: bytes, ext: str) -> str:
        """Write result image ``index`` (atomic); returns the file name written, ``image-<i>.<ext>``."""
        name = _image_name(index, ext)
        if name is None:
            raise ValueError(f"bad image index {index!r} or extension {ext!r}")
        self._check(job_id)
        self._write(job_id, name, bytes(data))
        return name

    def image(self, job_id: str, index: int, ext: str) -> bytes | None:
        name = _image_name(index, ext)
        return self._read(job_id, name) if name is not None and _valid_id(job_id) else None

    def delete(self, job_id: str) -> None:
        """Remove the job's whole directory; a missing one (or an id of another shape) is fine."""
        if _valid_id(job_id):
            with contextlib.suppress(FileNotFoundError):
                self._fs.delete_dir(f"{self._root}/{job_id}")

    def load_all(self) -> list[dict]:
        """Every readable record, sorted by ``created_at``. A job directory without a readable ``record.json``
        (missing, corrupt, failing to read, or naming another id) is skipped with a warning; entries that are not
        job directories are ignored. Failing to list the root raises: an unreachable store is not an empty one."""
        records = []
        for info in self._fs.get_file_info(pafs.FileSelector(self._root or "/", allow_not_found=True)):
            job_id = info.base_name
            if info.type != pafs.FileType.Directory or not _valid_id(job_id):
                continue
            try:
                record = self._read_json(job_id, "record.json")
            except OSError as e:
                log.warning("job store %s: cannot read the record of %s: %s", self._location, job_id, e)
                record = None
            if record is None or record.get("id") != job_id:
                log.warning("job store %s: skipping %s: no readable record.json of that id", self._location, job_id)
                continue
            records.append(record)
        return sorted(records, key=_created_key)

    def expired(self, records: Iterable[dict], ttl_s: float, now: float | None = None) -> list[str]:
        """Ids of the terminal records whose ``finished_at`` is more than ``ttl_s`` seconds before ``now``."""
        now = time.time() if now is None else now
        return [r["id"] for r in records
                if r.get("status") in TERMINAL and _number(r.get("finished_at"))
                and now - r["finished_at"] > ttl_s and _valid_id(r.get("id"))]
