import json
import shutil
import time

import pytest

from zimage_serve.core.errors import ModelSourceError
from zimage_serve.model.sources import read_safetensors_header, resolve


@pytest.fixture
def copy(tiny_path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_path, dst)
    return dst


def test_tiny_resolves_to_a_validated_random_weight_checkpoint(tiny_source):
    assert tiny_source.random_weights and "random test weights" in tiny_source.label
    for sub in ("transformer", "text_encoder", "vae", "tokenizer", "scheduler"):
        assert (tiny_source.path / sub).is_dir()
    assert set(tiny_source.tensors) == {"transformer", "text_encoder", "vae"}


def test_local_directory_resolves_and_revision_tracks_content(copy, tiny_source):
    src = resolve(str(copy))
    assert src.path == copy and src.revision == resolve(str(copy)).revision
    cfg = copy / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"shift": 3.0', '"shift": 2.0'))
    assert resolve(str(copy)).revision != src.revision


def test_missing_file_is_named(copy):
    (copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelSourceError, match=r"vae has no \.safetensors"):
        resolve(str(copy))


def test_missing_component_is_named(copy):
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(ModelSourceError, match=r"tokenizer is missing"):
        resolve(str(copy))


def test_truncated_shard_is_named(copy):
    shard = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError, match=r"diffusion_pytorch_model.safetensors is truncated or corrupt"):
        resolve(str(copy))


def test_garbage_shard_is_named(copy):
    (copy / "text_encoder" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelSourceError, match=r"model.safetensors is not a readable safetensors file"):
        resolve(str(copy))


def test_missing_sharded_file_is_named(copy):
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (copy / "vae" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelSourceError, match=r"model-00001-of-00002.safetensors is missing"):
        resolve(str(copy))


def test_pickle_only_weights_are_refused(copy):
    shard = copy / "vae" / "diffusion_pytorch_model.safetensors"
    shard.rename(copy / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelSourceError, match="safetensors only"):
        resolve(str(copy))


def test_not_a_z_image_checkpoint(copy):
    index = copy / "model_index.json"
    index.write_text(index.read_text().replace("ZImagePipeline", "FluxPipeline"))
    with pytest.raises(ModelSourceError, match="not a Z-Image checkpoint"):
        resolve(str(copy))
    index.unlink()
    with pytest.raises(ModelSourceError, match="model_index.json is missing"):
        resolve(str(copy))


def test_uncached_hub_id_fails_fast_naming_id_cache_and_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "hub.invalid")
    t0 = time.monotonic()
    with pytest.raises(ModelSourceError) as e:
        resolve("Tongyi-MAI/Z-Image-Turbo")
    assert time.monotonic() - t0 < 15
    msg = str(e.value)
    assert "Tongyi-MAI/Z-Image-Turbo" in msg and str(tmp_path / "ms") in msg and "MODELSCOPE_CACHE" in msg


def test_neither_directory_nor_hub_id():
    with pytest.raises(ModelSourceError, match="neither a local directory nor a hub id"):
        resolve("./no/such/dir")
    with pytest.raises(ModelSourceError, match="no model given"):
        resolve("")


def test_header_reader_counts_tensors(tiny_path):
    tensors = read_safetensors_header(tiny_path / "vae" / "diffusion_pytorch_model.safetensors")
    assert tensors["decoder.conv_out.bias"] == ("F32", 3)


def test_remote_code_is_never_trusted_and_pickles_never_loaded():
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "zimage_serve"
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "trust_remote_code=True" not in text, source
        assert "use_safetensors=False" not in text and "torch.load(" not in text, source
