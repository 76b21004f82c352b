"""``--model auto`` in the batch job is resolved for where the images are made: the hub model when the Ray
cluster has GPUs and the model is in the ModelScope cache, though the driver itself has no GPU."""

import json
import re
import shutil

import pytest

from zimage_serve.core.checkpoints import DEFAULT_HUB_ID, RANDOM_WEIGHTS_MARKER


@pytest.fixture
def hub_cache(tiny_path, tmp_path, monkeypatch):
    """A ModelScope cache under a temporary MODELSCOPE_CACHE holding "the hub model": a copy of the tiny
    checkpoint without its random-weights marker. It is in the flat layout ``{cache}/{owner}/{name}`` that
    modelscope's snapshot_download(local_files_only=True) finds by reading MODELSCOPE_CACHE on every call
    (its newer ``models/{owner}--{name}/snapshots/`` layout is looked up under the cache root that the first
    call of the process fixed)."""
    cache = tmp_path / "modelscope"
    model = cache / DEFAULT_HUB_ID
    shutil.copytree(tiny_path, model)
    (model / RANDOM_WEIGHTS_MARKER).unlink(missing_ok=True)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    return model


def test_auto_is_the_cached_hub_model_with_a_gpu_and_tiny_without(hub_cache, tiny_path):
    from zimage_serve.model.sources import cached_hub, resolve

    assert cached_hub(DEFAULT_HUB_ID) == hub_cache
    on_gpus = resolve("auto", gpu=True)
    assert (on_gpus.spec, on_gpus.path, on_gpus.random_weights) == (DEFAULT_HUB_ID, hub_cache, False)
    assert on_gpus.label == DEFAULT_HUB_ID
    without = resolve("auto", gpu=False)
    assert without.path == tiny_path and without.random_weights


# the driver's own cluster, as `ray start --num-gpus 1` would give it on a GPU node: one logical GPU, the real CPUs
# (the job's encoder and generator actors reserve one each: more than the session's shared cluster has free)
ON_A_GPU_CLUSTER = ("import os, sys, ray; ray.init(num_cpus=os.cpu_count(), num_gpus=1, include_dashboard=False, "
                    "logging_level='WARNING'); from zimage_serve.batch.__main__ import main; sys.exit(main())")


@pytest.mark.ray  # its own Ray, in the process it starts
def test_the_job_on_a_cluster_with_gpus_uses_the_cached_hub_model(hub_cache, tmp_path):
    """The driver (a process with no GPU) runs the job on a cluster that advertises a logical GPU: it says, and
    uses, the hub model."""
    import os
    import subprocess
    import sys

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"a hub prompt {i}", "seed": i}) + "\n"
                               for i in range(2)))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", ON_A_GPU_CLUSTER, "--prompts", str(prompts), "--out", str(out),
                        "--model", "auto", "--size", "64x64", "--steps", "2", "--batch-size", "2", "--gpus", "1",
                        "--no-compile", "--encoder-cpus", "1", "--encoder-dtype", "float32"],
                       capture_output=True, text=True, env=dict(os.environ, RAY_ADDRESS=""), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    said = [line for line in r.stderr.splitlines() if line.startswith("model ")]
    assert len(said) == 1 and re.match(rf"model {re.escape(DEFAULT_HUB_ID)}(;|$)", said[0]), said
    assert "random test weights" not in r.stderr
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["id"] for m in manifest) == ["p0", "p1"]
    assert all((out / m["file"]).stat().st_size == m["bytes"] for m in manifest)
