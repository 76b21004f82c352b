"""The bf16 weights cache on the real tiny checkpoint: written on the first load, read on the next."""

import os
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from zimage_serve.model import weights_cache
from zimage_serve.model.loader import load
from zimage_serve.model.planner import Workload, make_plan
from zimage_serve.model.sizes import sizes_of
from zimage_serve.model.sources import read_safetensors_header, weight_files


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("ZIMAGE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ZIMAGE_WEIGHTS_CACHE", "1")
    return tmp_path


def _load(source):
    plan = make_plan(sizes_of(source), None, Workload(64, 64, 1))
    return load(source, plan, device="cpu", dtype="bfloat16", with_text_encoder=False)


def _weights(loaded) -> dict:
    return {k: v.clone() for k, v in loaded.pipe.transformer.state_dict().items()}


def test_the_first_load_writes_the_cache_and_the_next_reads_it(tiny_source, cache_on):
    first = _load(tiny_source)
    assert "weights_cache_write" in first.seconds
    path = weights_cache.cache_path(tiny_source, "bfloat16")
    assert path.is_relative_to(cache_on / "weights")
    files = weight_files(path)
    assert files and all({d for d, _ in read_safetensors_header(f).values()} == {"BF16"} for f in files)
    # Change one cached tensor: the next load must show it, so it read the cache, not the checkpoint
    tensors = load_file(files[0])
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, files[0], metadata={"format": "pt"})
    second = _load(tiny_source)
    assert "weights_cache_write" not in second.seconds
    expected = _weights(first)
    expected[name] = expected[name] + 1
    got = _weights(second)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_a_damaged_cache_is_removed_and_the_checkpoint_loaded_again(tiny_source, cache_on):
    reference = _weights(_load(tiny_source))
    shard = weight_files(weights_cache.cache_path(tiny_source, "bfloat16"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated, as by a full disk or a killed copy
    again = _load(tiny_source)
    assert "weights_cache_write" in again.seconds  # it fell back to the checkpoint and wrote the cache anew
    got = _weights(again)
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert weights_cache.usable(weights_cache.cache_path(tiny_source, "bfloat16"))


def test_the_cache_is_off_by_default_and_skipped_where_it_would_copy_the_checkpoint(tiny_source, cache_on, monkeypatch):
    assert weights_cache.cache_path(tiny_source, "float32") is None  # tiny stores float32 already
    monkeypatch.delenv("ZIMAGE_WEIGHTS_CACHE")
    assert weights_cache.cache_path(tiny_source, "bfloat16") is None
    assert "weights_cache_write" not in _load(tiny_source).seconds
    assert not (cache_on / "weights").exists()


def test_a_copy_left_by_a_killed_writer_is_cleaned_up_once_stale(tiny_source, cache_on):
    path = weights_cache.cache_path(tiny_source, "bfloat16")
    stale = path.parent.with_name(f".{path.parent.name}.deadbeef.tmp")
    fresh = path.parent.with_name(f".{path.parent.name}.cafef00d.tmp")  # another replica writing right now
    for d in (stale, fresh):
        (d / "transformer").mkdir(parents=True)
    old = time.time() - 2 * weights_cache.STALE_TMP_S
    os.utime(stale, (old, old))
    _load(tiny_source)
    assert not stale.exists() and fresh.exists() and weights_cache.usable(path)
