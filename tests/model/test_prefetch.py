"""model/prefetch.py: weights read in threads equal what safetensors and diffusers read; bad files are named."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from zimage_serve.core.errors import ModelSourceError
from zimage_serve.model.prefetch import WeightReader, assemble


@pytest.fixture
def mixed(tmp_path):
    tensors = {"w": torch.randn(64, 48), "b": torch.randn(7).to(torch.bfloat16), "ids": torch.arange(5),
               "mask": torch.tensor([True, False, True]), "empty": torch.zeros(0, 3)}
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({k: tensors[k] for k in ("w", "ids")}, first)
    save_file({k: tensors[k] for k in ("b", "mask", "empty")}, second)
    return [first, second], tensors


def test_reads_every_tensor_as_safetensors_does(mixed):
    files, tensors = mixed
    got = WeightReader(files, "cpu", threads=3).result()
    assert set(got) == set(tensors)
    for name, expected in tensors.items():
        assert got[name].dtype == expected.dtype and torch.equal(got[name], expected), name


def test_reads_only_the_tensors_it_is_told_to_keep(mixed):
    files, tensors = mixed
    reader = WeightReader(files, "cpu", keep=lambda name: name in ("w", "mask"))
    got = reader.result()
    assert set(got) == {"w", "mask"} and torch.equal(got["w"], tensors["w"])
    assert reader.bytes == tensors["w"].nbytes + tensors["mask"].nbytes  # the others never read


def test_converts_floating_tensors_only(mixed):
    files, tensors = mixed
    got = WeightReader(files, "cpu", torch.bfloat16).result()
    assert got["w"].dtype == torch.bfloat16 and torch.equal(got["w"], tensors["w"].to(torch.bfloat16))
    assert got["ids"].dtype == torch.int64 and got["mask"].dtype == torch.bool


def test_each_tensor_is_its_own_allocation(mixed):
    """A fused projection replaces its parts: what it replaces must be freed, not pinned by a shared buffer."""
    files, _ = mixed
    got = WeightReader(files, "cpu").result()
    pointers = {t.untyped_storage().data_ptr() for t in got.values() if t.numel()}
    assert len(pointers) == sum(1 for t in got.values() if t.numel())


def test_a_truncated_file_is_named(mixed):
    files, _ = mixed
    data = files[0].read_bytes()
    files[0].write_bytes(data[:-10])
    with pytest.raises(ModelSourceError, match="a.safetensors"):
        WeightReader(files, "cpu").result()


def test_a_header_that_lies_is_named(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(ModelSourceError, match="bad.safetensors.*offsets"):
        WeightReader([path], "cpu")


def test_the_transformer_equals_diffusers_own_load(tiny_path):
    from diffusers import ZImageTransformer2DModel

    from zimage_serve.model.sources import weight_files

    directory = tiny_path / "transformer"
    ours = assemble(ZImageTransformer2DModel, ZImageTransformer2DModel.load_config(directory),
                    WeightReader(weight_files(directory), "cpu", torch.bfloat16).result())
    stock = ZImageTransformer2DModel.from_pretrained(directory, dtype=torch.bfloat16)
    a, b = ours.state_dict(), stock.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in b)
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())


def test_weights_that_do_not_fit_the_config_are_refused(tiny_path):
    from diffusers import ZImageTransformer2DModel

    from zimage_serve.model.sources import weight_files

    directory = tiny_path / "transformer"
    tensors = WeightReader(weight_files(directory), "cpu").result()
    tensors.pop(next(iter(tensors)))
    with pytest.raises(ModelSourceError, match="don't match its config: missing"):
        assemble(ZImageTransformer2DModel, ZImageTransformer2DModel.load_config(directory), tensors)


def test_a_reader_that_fails_leaves_it_to_diffusers(tiny_source, caplog):
    """Anything but a bad file (a bug, an unforeseen device) costs speed, not the replica."""
    from zimage_serve.model import loader
    from zimage_serve.model.planner import Workload, make_plan
    from zimage_serve.model.sizes import sizes_of

    plan = make_plan(sizes_of(tiny_source), None, Workload(64, 64, 1))
    read = loader.start_reading(tiny_source, plan, "cpu", "float32")

    class Broken(WeightReader):
        def result(self):
            raise RuntimeError("a reader bug")

    read.reader.__class__ = Broken
    loaded = loader.load(tiny_source, plan, "cpu", "float32", with_text_encoder=False, transformer=read)
    reference = loader.load(tiny_source, plan, "cpu", "float32", with_text_encoder=False)
    a, b = loaded.pipe.transformer.state_dict(), reference.pipe.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert "a reader bug" in caplog.text


def test_a_dtype_it_does_not_read_is_left_to_diffusers(tmp_path):
    """Not an error in the file: the loader has diffusers read it (loader.start_reading)."""
    from zimage_serve.model.prefetch import Unsupported

    path = tmp_path / "u32.safetensors"
    save_file({"x": torch.zeros(3, dtype=torch.uint32)}, path)
    with pytest.raises(Unsupported, match="U32"):
        WeightReader([path], "cpu")


def test_the_loaded_model_alone_holds_the_weights_read(tiny_source):
    """The reader hands its tensors over once: a loaded model's rewrites (fused projections, LoRA slots, FP8) free
    what they replace then, instead of a second copy living as long as the reader (the replica's whole start)."""
    from zimage_serve.model import loader
    from zimage_serve.model.planner import Workload, make_plan
    from zimage_serve.model.sizes import sizes_of

    plan = make_plan(sizes_of(tiny_source), None, Workload(64, 64, 1))
    read = loader.start_reading(tiny_source, plan, "cpu", "float32")
    loaded = loader.load(tiny_source, plan, "cpu", "float32", with_text_encoder=False, transformer=read)
    assert read.reader.result() == {}
    pointers = {p.data_ptr() for p in loaded.pipe.transformer.parameters()}
    assert len(pointers) == sum(1 for _ in loaded.pipe.transformer.parameters())  # read, not copied by diffusers
