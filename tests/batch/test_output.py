"""OutputDir.recover: what a rerun counts as finished, on real files."""

import hashlib
import json

from zimage_serve.batch.output import OutputDir, write_atomic


def _finished(out: OutputDir, name: str, data: bytes, with_size: bool = True) -> None:
    write_atomic(out.path, name, data)
    entry = {"id": name.split(".")[0], "file": name, "sha256": hashlib.sha256(data).hexdigest()}
    out.append({**entry, "bytes": len(data)} if with_size else entry)


def test_a_truncated_image_is_forgotten_and_the_manifest_rewritten(tmp_path):
    out = OutputDir(tmp_path)
    _finished(out, "a.png", b"a" * 100)
    _finished(out, "b.png", b"b" * 100)
    (tmp_path / "b.png").write_bytes(b"b" * 40)
    with open(out.manifest, "a") as f:
        f.write('{"id": "c", "file": "c.p')  # torn by a kill
    (tmp_path / ".tmp-0123-c.png").write_bytes(b"partial")
    assert set(out.recover()) == {"a"}
    assert [json.loads(line)["id"] for line in out.manifest.read_text().splitlines()] == ["a"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_an_image_altered_in_place_is_found_only_when_verifying(tmp_path):
    out = OutputDir(tmp_path)
    _finished(out, "a.png", b"a" * 100)
    (tmp_path / "a.png").write_bytes(b"x" * 100)  # same size, other bytes: changed outside the job
    assert set(out.recover()) == {"a"}  # the size is all a plain rerun reads
    assert out.recover(verify=True) == {}


def test_entries_from_before_sizes_were_listed_are_checked_by_digest(tmp_path):
    out = OutputDir(tmp_path)
    _finished(out, "a.png", b"a" * 100, with_size=False)
    _finished(out, "b.png", b"b" * 100, with_size=False)
    (tmp_path / "b.png").write_bytes(b"x" * 100)
    assert set(out.recover()) == {"a"}
