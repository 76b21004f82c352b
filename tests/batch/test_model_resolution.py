"""``--model auto`` in the batch job is resolved for where the images are made: the hub model when the Ray
cluster has GPUs and the model is in the ModelScope cache, though the driver itself has no GPU."""

import json
import re
import shutil
from argparse import Namespace

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


@pytest.mark.ray
def test_the_job_on_a_cluster_with_gpus_uses_the_cached_hub_model(serve_cluster, hub_cache, tmp_path, capsys):
    """The driver (this process: no GPU) runs the job on a cluster that advertises logical GPUs (the session's
    cluster has 4): it says, and uses, the hub model."""
    import ray

    from zimage_serve.batch.job import run

    assert ray.cluster_resources().get("GPU", 0) > 0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"a hub prompt {i}", "seed": i}) + "\n"
                               for i in range(2)))
    out = tmp_path / "out"
    args = Namespace(prompts=str(prompts), out=str(out), model="auto", size="64x64", steps=2, seed=0, batch_size=2,
                     gpus="1", format="png", policy="auto", compile=False, fp8=False, encoder_cpus=1,
                     encoder_dtype="float32", verify=False)
    assert run(args) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("model ")]
    assert len(said) == 1 and re.match(rf"model {re.escape(DEFAULT_HUB_ID)}(;|$)", said[0]), said
    assert "random test weights" not in err
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["id"] for m in manifest) == ["p0", "p1"]
    assert all((out / m["file"]).stat().st_size == m["bytes"] for m in manifest)
