"""JobStore on the real local filesystem (pytest's tmp_path): roundtrips, restart, path safety, torn writes, TTL."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

from zimage_serve.jobs.store import STATUSES, TERMINAL, JobStore


def _record(store: JobStore, created_at: float = 100.0, status: str = "queued", **extra) -> dict:
    return {"id": store.new_id(), "status": status, "created_at": created_at, **extra}


class _NoFilesystem:
    """Stands in for the store's filesystem: any use fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the filesystem was used: {name}")


class _FailingMove:
    """The real filesystem, except that ``move`` (the rename that publishes a write) fails."""

    def __init__(self, fs):
        self._fs = fs

    def move(self, src, dst):
        raise OSError("disk full (simulated)")

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_constants():
    assert TERMINAL == frozenset({"succeeded", "failed", "cancelled"})
    assert STATUSES == ("queued", "running", "succeeded", "failed", "cancelled")
    assert TERMINAL < set(STATUSES)


def test_new_id_shape_and_unique():
    ids = {JobStore.new_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"job_[0-9a-f]{32}", i) for i in ids)


def test_create_record_body_save_roundtrip(tmp_path):
    root = tmp_path / "jobs"
    store = JobStore(str(root))
    assert root.is_dir() and store.location == str(root)
    record = _record(store, note="猫 ünïcode")
    body = {"prompt": "a cat, 猫", "n": 2}
    store.create(record, body)

    assert store.record(record["id"]) == record
    assert store.body(record["id"]) == body
    job_dir = root / record["id"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["record.json", "request.json"]
    assert "猫" in (job_dir / "request.json").read_text(encoding="utf-8")  # UTF-8, not \\u escapes

    record.update(status="running", started_at=101.0)
    store.save(record)
    assert store.record(record["id"]) == record
    assert store.body(record["id"]) == body  # written once, untouched by save

    assert store.record(store.new_id()) is None  # well-formed but unknown
    assert store.body(store.new_id()) is None


def test_create_and_save_reject_bad_ids(tmp_path):
    store = JobStore(str(tmp_path))
    for bad in ("../escape", "job_xyz", None, "job_" + "A" * 32):
        with pytest.raises(ValueError):
            store.create({"id": bad, "status": "queued", "created_at": 1.0}, {})
        with pytest.raises(ValueError):
            store.save({"id": bad, "status": "queued", "created_at": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_put_image_image_roundtrip(tmp_path):
    store = JobStore(str(tmp_path))
    record = _record(store)
    store.create(record, {})
    data0, data1 = b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"RIFF....WEBP"
    assert store.put_image(record["id"], 0, data0, "png") == "image-0.png"
    assert store.put_image(record["id"], 1, data1, "webp") == "image-1.webp"
    assert store.image(record["id"], 0, "png") == data0
    assert store.image(record["id"], 1, "webp") == data1
    assert (tmp_path / record["id"] / "image-0.png").read_bytes() == data0
    assert store.image(record["id"], 2, "png") is None  # not written
    assert store.image(record["id"], 0, "jpeg") is None  # another extension
    assert store.image(store.new_id(), 0, "png") is None  # unknown job
    for index, ext in ((-1, "png"), (True, "png"), (0, "../png"), (0, "p/g"), (0, "")):
        with pytest.raises(ValueError):
            store.put_image(record["id"], index, b"x", ext)
        assert store.image(record["id"], index, ext) is None


def test_delete(tmp_path):
    store = JobStore(str(tmp_path))
    keep, gone = _record(store), _record(store)
    for r in (keep, gone):
        store.create(r, {"prompt": "p"})
    store.put_image(gone["id"], 0, b"img", "png")
    store.delete(gone["id"])
    assert not (tmp_path / gone["id"]).exists()
    assert store.record(gone["id"]) is None and store.image(gone["id"], 0, "png") is None
    assert store.record(keep["id"]) == keep
    store.delete(gone["id"])  # missing is fine
    store.delete(store.new_id())
    store.delete("../..")  # not an id: nothing happens
    assert tmp_path.is_dir() and [r["id"] for r in store.load_all()] == [keep["id"]]


def test_restarted_process_sees_every_record_sorted(tmp_path):
    store = JobStore(str(tmp_path / "root"))
    late, early, middle = _record(store, 300.0), _record(store, 100.0), _record(store, 200.0, "succeeded")
    for r in (late, early, middle):
        store.create(r, {"prompt": r["id"]})
    middle["finished_at"] = 250.0
    store.save(middle)

    restarted = JobStore(str(tmp_path / "root"))
    assert restarted.load_all() == [early, middle, late]
    assert restarted.body(late["id"]) == {"prompt": late["id"]}
    assert JobStore(str(tmp_path / "empty")).load_all() == []


def test_unchecked_ids_never_touch_the_filesystem(tmp_path):
    store = JobStore(str(tmp_path))
    store._fs = _NoFilesystem()
    for bad in ("../../etc/passwd", "job_xyz", "../x", "", "job_" + "0" * 31, "job_" + "0" * 32 + "/..",
                "/etc/passwd", "job_" + "0" * 32 + "\n", None, 7):
        assert store.record(bad) is None
        assert store.body(bad) is None
        assert store.image(bad, 0, "png") is None
        store.delete(bad)
    assert store.image(JobStore.new_id(), 0, "../../x") is None


def test_no_escape_from_the_root(tmp_path):
    """A JSON file outside the root, reachable by a relative path, stays unreachable."""
    (tmp_path / "secret.json").write_text(json.dumps({"id": "secret"}))
    (tmp_path / "record.json").write_text(json.dumps({"id": "secret"}))
    store = JobStore(str(tmp_path / "a" / "b"))
    for bad in ("../../secret.json", "../..", "..", "../../"):
        assert store.record(bad) is None and store.body(bad) is None
    assert store.image("../x", 0, "png") is None
    assert store.load_all() == []


def test_torn_writes_are_skipped(tmp_path, caplog):
    store = JobStore(str(tmp_path))
    good = _record(store)
    store.create(good, {"prompt": "p"})
    # leftover temporary files: in a job directory and at the root
    (tmp_path / good["id"] / ".tmp-0123abcd-record.json").write_text('{"id": "' + good["id"] + '", "sta')
    (tmp_path / ".tmp-0123abcd-x").write_bytes(b"")
    corrupt, bodyless, not_object, wrong_id = (store.new_id() for _ in range(4))
    (tmp_path / corrupt).mkdir()
    (tmp_path / corrupt / "record.json").write_text('{"id": "' + corrupt + '", "status": "que')  # torn
    (tmp_path / bodyless).mkdir()  # killed between request.json and record.json
    (tmp_path / bodyless / "request.json").write_text("{}")
    (tmp_path / not_object).mkdir()
    (tmp_path / not_object / "record.json").write_text("[1, 2]")
    (tmp_path / wrong_id).mkdir()
    (tmp_path / wrong_id / "record.json").write_text(json.dumps({"id": good["id"], "created_at": 1.0}))
    (tmp_path / "not-a-job").mkdir()
    (tmp_path / "stray.txt").write_text("hi")
    undecodable = store.new_id()
    (tmp_path / undecodable).mkdir()
    (tmp_path / undecodable / "record.json").write_bytes(b"\xff\xfe\x00garbage")
    dir_record = store.new_id()
    (tmp_path / dir_record / "record.json").mkdir(parents=True)  # unreadable: a directory

    with caplog.at_level(logging.WARNING, logger="zimage_serve"):
        assert JobStore(str(tmp_path)).load_all() == [good]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for job_id in (corrupt, bodyless, not_object, wrong_id, undecodable, dir_record):
        assert job_id in warned
    assert store.record(corrupt) is None and store.record(not_object) is None


def test_save_leaves_no_temporary_files(tmp_path):
    store = JobStore(str(tmp_path))
    record = _record(store)
    store.create(record, {"prompt": "p"})
    for i in range(5):
        record["status"] = STATUSES[i]
        store.save(record)
        store.put_image(record["id"], i, b"x" * i, "png")
    names = sorted(p.name for p in (tmp_path / record["id"]).iterdir())
    assert names == ["image-0.png", "image-1.png", "image-2.png", "image-3.png", "image-4.png",
                     "record.json", "request.json"]
    assert json.loads((tmp_path / record["id"] / "record.json").read_text(encoding="utf-8")) == record


def test_failed_publish_keeps_the_old_record(tmp_path):
    store = JobStore(str(tmp_path))
    record = _record(store)
    store.create(record, {})
    store._fs = _FailingMove(store._fs)
    with pytest.raises(OSError):
        store.save({**record, "status": "running"})
    with pytest.raises(OSError):
        store.put_image(record["id"], 0, b"img", "png")
    assert store.record(record["id"]) == record  # the old record, whole
    assert sorted(p.name for p in (tmp_path / record["id"]).iterdir()) == ["record.json", "request.json"]


def test_expired_only_terminal_and_older_than_ttl(tmp_path):
    store = JobStore(str(tmp_path))
    now, ttl = 10_000.0, 3600.0
    ids = [JobStore.new_id() for _ in range(8)]
    records = [
        {"id": ids[0], "status": "succeeded", "created_at": 1.0, "finished_at": now - ttl - 1},  # expired
        {"id": ids[1], "status": "failed", "created_at": 1.0, "finished_at": now - 2 * ttl},  # expired
        {"id": ids[2], "status": "cancelled", "created_at": 1.0, "finished_at": now - ttl - 0.5},  # expired
        {"id": ids[3], "status": "succeeded", "created_at": 1.0, "finished_at": now - ttl + 1},  # too recent
        {"id": ids[4], "status": "running", "created_at": 1.0, "finished_at": now - 2 * ttl},  # not terminal
        {"id": ids[5], "status": "queued", "created_at": 1.0},  # not terminal
        {"id": ids[6], "status": "failed", "created_at": 1.0},  # no finished_at
        {"id": ids[7], "status": "failed", "created_at": 1.0, "finished_at": None},
    ]
    assert store.expired(records, ttl, now=now) == ids[:3]
    assert store.expired(iter(records), ttl, now=now) == ids[:3]  # any iterable
    assert store.expired(records, 0.0, now=now) == ids[:4]


def test_expired_defaults_to_the_clock(tmp_path):
    store = JobStore(str(tmp_path))
    old = _record(store, status="succeeded", finished_at=time.time() - 100)
    fresh = _record(store, status="succeeded", finished_at=time.time())
    assert store.expired([old, fresh], 50.0) == [old["id"]]


def test_file_uri_root_is_the_same_store(tmp_path):
    root = tmp_path / "via-uri"
    uri = f"file://{root}"
    store = JobStore(uri)
    assert root.is_dir() and store.location == uri
    record = _record(store)
    store.create(record, {"prompt": "p"})
    store.put_image(record["id"], 0, b"img", "png")
    assert (root / record["id"] / "record.json").is_file()
    plain = JobStore(str(root))
    assert plain.load_all() == [record] and plain.image(record["id"], 0, "png") == b"img"
    record["status"] = "succeeded"
    plain.save(record)
    assert store.record(record["id"]) == record and store.load_all() == [record]
    store.delete(record["id"])
    assert plain.load_all() == [] and root.is_dir()
