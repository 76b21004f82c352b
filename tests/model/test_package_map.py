"""model/package_map.py: the installed packages' import names, remembered per node, equal to what the standard
library works out, and worked out again when the installed distributions change."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from zimage_serve.model import package_map


@pytest.fixture
def fresh(monkeypatch):
    """No process memo, and ``importlib.metadata`` restored after the test."""
    monkeypatch.setattr(package_map, "_memo", None)
    monkeypatch.setattr(importlib.metadata, "packages_distributions", importlib.metadata.packages_distributions)


def _distribution(site, name: str, version: str, top_level: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(top_level + "\n")


def test_answers_what_the_standard_library_works_out_and_keeps_it_on_the_node(fresh, tmp_path):
    expected = package_map._computed()
    assert package_map.package_map(tmp_path) == expected
    [written] = tmp_path.glob("*.json")
    assert json.loads(written.read_text()) == expected


def test_a_later_process_reads_the_nodes_file(fresh, tmp_path):
    package_map.package_map(tmp_path)
    [written] = tmp_path.glob("*.json")
    written.write_text(json.dumps({"only_in_the_file": ["from-the-file"]}))  # what a reader that recomputes can't see
    package_map._memo = None  # as in a new process on the node
    assert package_map.package_map(tmp_path) == {"only_in_the_file": ["from-the-file"]}


def test_each_call_returns_its_own_copy(fresh, tmp_path):
    first = package_map.package_map(tmp_path)
    name = next(iter(first))
    first[name].append("changed by a caller")
    first["added"] = ["by a caller"]
    second = package_map.package_map(tmp_path)
    assert "changed by a caller" not in second[name] and "added" not in second


def test_a_distribution_installed_later_is_seen(fresh, tmp_path, monkeypatch):
    site, cache = tmp_path / "site", tmp_path / "cache"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    _distribution(site, "zimage_probe_one", "1.0", "zimage_probe_one")
    assert package_map.package_map(cache)["zimage_probe_one"] == ["zimage_probe_one"]
    _distribution(site, "zimage_probe_two", "2.0", "zimage_probe_two")
    package_map._memo = None  # a new process after the install
    got = package_map.package_map(cache)
    assert got["zimage_probe_two"] == ["zimage_probe_two"] and got["zimage_probe_one"] == ["zimage_probe_one"]
    assert len(list(cache.glob("*.json"))) == 2  # one file per set of installed distributions


def test_a_cache_that_cant_be_written_is_no_error(fresh, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert package_map.package_map(blocked / "imports") == package_map._computed()


def test_diffusers_and_transformers_use_the_remembered_map(tmp_path):
    """In a fresh process: remembered before the imports, the libraries' own maps are the node file's (a name only
    the file has shows it)."""
    code = (
        "import json; from pathlib import Path; from zimage_serve.model import package_map as p; "
        f"d = Path({str(tmp_path)!r}); m = p.package_map(d); [f] = d.glob('*.json'); "
        "f.write_text(json.dumps({**m, 'zimage_sentinel': ['from-the-node-file']})); p._memo = None; "
        "p.remember_package_map(d); "
        "import diffusers.utils.import_utils as du, transformers.utils.import_utils as tu; "
        "print(json.dumps([du._package_map.get('zimage_sentinel'), "
        "tu._package_distribution_mapping().get('zimage_sentinel')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["from-the-node-file"], ["from-the-node-file"]]


def test_imported_again_after_remembering_it_still_works_the_map_out(fresh, tmp_path):
    import importlib

    package_map.remember_package_map(tmp_path)
    again = importlib.reload(package_map)
    assert again._computed is importlib.metadata.packages_distributions.__wrapped__
    again._memo = None
    assert again.package_map(None) == again._computed()  # (no recursion through the patch)
