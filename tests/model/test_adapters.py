"""LoRA adapters on the engine (model/adapters.py, Engine.load_adapter) against stock diffusers' ZImagePipeline +
load_lora_weights + set_adapters, pixel for pixel on the tiny model, with adapters written by testing/lora.py."""

import weakref

import pytest
import torch
from diffusers import ZImagePipeline

from conftest import max_pixel_diff, stock_image
from zimage_serve.core.errors import AdapterError
from zimage_serve.core.request import GenerationRequest
from zimage_serve.model.engine import Engine, Job
from zimage_serve.model.planner import Workload, make_plan
from zimage_serve.model.sizes import sizes_of
from zimage_serve.testing.lora import write_lora

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread, as under pytest-xdist on 2 cores (conftest.py): a batch's images equal the solo ones bit for
    bit only where a matmul's split over threads doesn't follow the batch size (with 2 threads, 1 level apart)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loras(tiny_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {name: write_lora(root / name, tiny_path, rank=4, seed=seed).parent for name, seed in (("ink", 1), ("oil", 2))}


@pytest.fixture(scope="module")
def stock(tiny_path, loras):
    """Stock diffusers with both adapters loaded, as their users load them."""
    pipe = ZImagePipeline.from_pretrained(tiny_path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for name, path in loras.items():
        pipe.load_lora_weights(str(path), adapter_name=name)
    return pipe


def stock_with(pipe, adapter: str | None, scale: float, seed: int):
    if adapter is None:
        pipe.disable_lora()
    else:
        pipe.enable_lora()
        pipe.set_adapters([adapter], [scale])
    return stock_image(pipe, PROMPT, seed, 64, 64, steps=4)


@pytest.fixture(scope="module")
def engine(tiny_source, loras):
    e = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(64, 64, 4)))
    e.set_progress(False)
    e.load_adapter("ink", str(loras["ink"]), scale=0.8)
    e.load_adapter("oil", str(loras["oil"] / "pytorch_lora_weights.safetensors"))  # the file itself
    return e


def job(engine, seed, adapter=None, scale=None):
    request = GenerationRequest(PROMPT, seed=seed, width=64, height=64, steps=4, adapter=adapter, adapter_scale=scale)
    return Job.of(request, engine.encode([PROMPT]))


def test_make_lora_writes_the_same_adapter_for_the_same_seed_and_another_for_another(tiny_path, tmp_path, loras):
    """The same tensors and metadata (safetensors orders its header's metadata keys as it likes, so not always
    the same bytes)."""
    from safetensors import safe_open

    def content(path):
        with safe_open(str(path), "pt") as f:
            return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}

    again_meta, again = content(write_lora(tmp_path / "again", tiny_path, rank=4, seed=1))
    ink_meta, ink = content(loras["ink"] / "pytorch_lora_weights.safetensors")
    _, oil = content(loras["oil"] / "pytorch_lora_weights.safetensors")
    assert again_meta == ink_meta and ink_meta["lora_adapter_metadata"]
    assert again.keys() == ink.keys() == oil.keys() and len(ink) == 2 * 7 * 4  # A and B, 7 layers, 4 blocks
    assert all(torch.equal(again[k], ink[k]) for k in ink) and not any(torch.equal(oil[k], ink[k]) for k in ink)


def test_an_adapter_at_its_scale_equals_stock_and_visibly_changes_the_image(engine, stock, stock_pipe):
    base = stock_image(stock_pipe, PROMPT, 3, 64, 64, steps=4)
    (ink,) = engine.generate([job(engine, 3, "ink")]).images  # its configured scale, 0.8
    assert max_pixel_diff(ink, stock_with(stock, "ink", 0.8, 3)) == 0
    assert max_pixel_diff(ink, base) > 8
    (oil,) = engine.generate([job(engine, 3, "oil", 1.7)]).images
    assert max_pixel_diff(oil, stock_with(stock, "oil", 1.7, 3)) == 0


def test_base_and_adapters_in_one_call_each_equal_their_solo_stock_image_and_nothing_leaks(engine, stock, stock_pipe):
    jobs = [job(engine, 1, "ink"), job(engine, 2), job(engine, 3, "oil"), job(engine, 4, "ink", 0.3), job(engine, 5)]
    result = engine.generate(jobs)
    assert sorted(result.batch_sizes) == [1, 1, 1, 2]  # never two adapters (or scales) in one batch
    refs = [stock_with(stock, "ink", 0.8, 1), stock_image(stock_pipe, PROMPT, 2, 64, 64, steps=4),
            stock_with(stock, "oil", 1.0, 3), stock_with(stock, "ink", 0.3, 4),
            stock_image(stock_pipe, PROMPT, 5, 64, 64, steps=4)]
    for image, ref in zip(result.images, refs):
        assert max_pixel_diff(image, ref) == 0
    for _ in range(20):  # switching back and forth never changes the base weights
        engine.generate([job(engine, 9, "oil", 2.0)])
        engine.generate([job(engine, 9, "ink", 0.5)])
    (base,) = engine.generate([job(engine, 2)]).images
    assert max_pixel_diff(base, refs[1]) == 0


def test_an_unusable_adapter_is_refused_by_name_and_leaves_the_engine_as_it_was(engine, tmp_path, loras, stock_pipe):
    from safetensors.torch import load_file, save_file

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00not safetensors at all")
    other = load_file(loras["ink"] / "pytorch_lora_weights.safetensors")
    key = next(k for k in other if k.endswith("lora_A.weight"))
    other[key] = torch.zeros(4, other[key].shape[1] + 8, dtype=other[key].dtype)  # made for a wider model
    save_file(other, str(tmp_path / "other.safetensors"))
    (tmp_path / "two").mkdir()
    for name in ("a", "b"):
        save_file({}, str(tmp_path / "two" / f"{name}.safetensors"))
    save_file({"x": torch.zeros(2)}, str(tmp_path / "no-lora.safetensors"))
    for source, says in ((tmp_path / "missing", "does not exist"), (corrupt, "is not a readable safetensors file"),
                         (tmp_path / "no-lora.safetensors", "holds no LoRA weights"),
                         (tmp_path / "other.safetensors", "was made for other shapes"), (tmp_path / "two", "holds 2")):
        with pytest.raises(AdapterError, match=says) as e:
            engine.load_adapter("bad", str(source))
        assert "'bad'" in str(e.value)
    assert sorted(engine.adapters) == ["ink", "oil"]
    (base,) = engine.generate([job(engine, 2)]).images
    assert max_pixel_diff(base, stock_image(stock_pipe, PROMPT, 2, 64, 64, steps=4)) == 0
    with pytest.raises(ValueError, match="adapter 'bad' is not loaded"):
        engine.generate([job(engine, 2, "bad")])


def test_a_thousand_switches_leave_the_base_bit_identical_and_an_evicted_adapter_gone(engine, tiny_source, loras):
    """The LoRA slots never touch the base weights: after 1,000 switches (and generating with each adapter) the
    base image is a fresh engine's (one that never held an adapter), bit for bit; an unloaded adapter is refused, and loaded again it
    makes the same image as before."""
    (ink_before,) = engine.generate([job(engine, 6, "ink", 1.3)]).images
    choices = [("ink", 0.8), (None, None), ("oil", 2.0), ("ink", 0.1), ("oil", 1.0)]
    for i in range(1000):
        adapter, scale = choices[i % len(choices)]
        engine._use_adapter(GenerationRequest(PROMPT, seed=0, adapter=adapter, adapter_scale=scale))
    (base,) = engine.generate([job(engine, 7)]).images
    fresh = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(64, 64, 4)))
    fresh.set_progress(False)
    assert fresh.slots is None
    assert max_pixel_diff(base, fresh.generate([job(fresh, 7)]).images[0]) == 0
    engine.unload_adapter("ink")
    with pytest.raises(ValueError, match="adapter 'ink' is not loaded"):
        engine.generate([job(engine, 6, "ink")])
    engine.load_adapter("ink", str(loras["ink"]), scale=0.8)
    (ink_after,) = engine.generate([job(engine, 6, "ink", 1.3)]).images
    assert max_pixel_diff(ink_after, ink_before) == 0


def test_a_kohya_layout_adapter_with_alphas_equals_stock_loading_the_same_file(engine, stock, loras, tmp_path):
    """``lora_unet_..._to_q.lora_down.weight`` / ``lora_up`` / ``.alpha`` keys, as kohya's trainer writes them:
    diffusers converts them (alpha folded into the matrices) and so do we."""
    from safetensors.torch import load_file, save_file

    kohya = {}
    for key, tensor in load_file(loras["oil"] / "pytorch_lora_weights.safetensors").items():
        module, _, kind = key.removeprefix("transformer.").rpartition(".lora_")
        base = "lora_unet_" + module.replace(".", "_")
        kohya[f"{base}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor
        kohya[f"{base}.alpha"] = torch.tensor(2.0)  # alpha 2 at rank 4: half the update
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    engine.load_adapter("kohya", str(tmp_path / "kohya.safetensors"))
    stock.load_lora_weights(str(tmp_path / "kohya.safetensors"), adapter_name="kohya")
    try:
        (image,) = engine.generate([job(engine, 8, "kohya", 1.5)]).images
        assert max_pixel_diff(image, stock_with(stock, "kohya", 1.5, 8)) <= 1  # alpha folded: rounding, as elsewhere
        (oil,) = engine.generate([job(engine, 8, "oil", 1.5)]).images
        assert max_pixel_diff(image, oil) > 0  # the alpha took effect
    finally:
        engine.unload_adapter("kohya")
        stock.delete_adapters(["kohya"])


def test_fused_projections_and_wider_slots_run_adapters_as_stock_does_up_to_rounding(tiny_source, loras, stock,
                                                                                    tmp_path):
    """On a fused transformer (to_qkv, w13: one slot per fused layer, lora_b block-diagonal) whose slots were made
    for a rank-8 adapter, a rank-4 adapter's image is stock's up to float rounding; the base stays exact."""
    from zimage_serve.model.adapters import slot_spec
    from zimage_serve.model.optim.fusion import fuse_projections

    e = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(64, 64, 4)))
    e.set_progress(False)
    assert fuse_projections(e.pipe.transformer) == 4
    wide = e.read_adapter("wide", str(write_lora(tmp_path / "wide", tiny_source.path, rank=8, seed=5).parent))
    e._install_slots(slot_spec([wide]))
    assert e.slots.rank == 8 and sorted(e.slots.layers)[0].endswith("attention.to_out.0")
    assert sum(layer.slot.parts for layer in e.slots.layers.values()) == 7 * 4
    e.load_adapter("ink", str(loras["ink"]))
    (ink,) = e.generate([job(e, 3, "ink", 0.8)]).images
    assert max_pixel_diff(ink, stock_with(stock, "ink", 0.8, 3)) <= 1
    with pytest.raises(AdapterError, match="needs rank 16"):
        e.load_adapter("huge", str(write_lora(tmp_path / "huge", tiny_source.path, rank=16, seed=6).parent))


def test_folded_slots_run_adapters_as_stock_does_up_to_rounding_and_switch_back_exactly(tiny_source, loras, stock,
                                                                                       monkeypatch):
    """Folded slots (the update inside the base matmul: what resident CUDA plans use) on a fused transformer: an
    adapter's image is stock's up to float rounding, the base is the plain model's up to rounding, and switching
    among adapters and back gives each image again bit for bit (the base's extra columns return to zero)."""
    from zimage_serve.model.adapters import slot_spec
    from zimage_serve.model.optim.fusion import fuse_projections
    from zimage_serve.model.optim.lora_slots import FoldedLoraSlot

    e = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(64, 64, 4)))
    e.set_progress(False)
    (plain,) = e.generate([job(e, 4)]).images
    fuse_projections(e.pipe.transformer)
    old = [weakref.ref(m.weight) for name, m in e.pipe.transformer.named_modules()
           if name.endswith(("to_qkv", "to_out.0", "w13", "w2"))]
    alive, init = [], FoldedLoraSlot.__init__

    def counting(slot, *args):  # a spy: how many of the old weights are alive as each copy is made
        alive.append(sum(ref() is not None for ref in old))
        init(slot, *args)

    monkeypatch.setattr(FoldedLoraSlot, "__init__", counting)
    e._install_slots(slot_spec([e.read_adapter("ink", str(loras["ink"]))]), fold=True)
    assert e.slots.folded and all(isinstance(layer.slot, FoldedLoraSlot) for layer in e.slots.layers.values())
    # each base weight is freed once copied, before the next copy: at most one layer's weight is ever doubled
    assert len(e.slots.layers) == len(old) == 16 and alive == [len(old) - i for i in range(len(old))]
    assert all(ref() is None for ref in old)
    e.load_adapter("ink", str(loras["ink"]))
    e.load_adapter("oil", str(loras["oil"]))
    (base,) = e.generate([job(e, 4)]).images
    assert max_pixel_diff(base, plain) <= 1
    (ink,) = e.generate([job(e, 3, "ink", 0.8)]).images
    assert max_pixel_diff(ink, stock_with(stock, "ink", 0.8, 3)) <= 1
    (oil,) = e.generate([job(e, 3, "oil", 1.5)]).images
    assert max_pixel_diff(oil, stock_with(stock, "oil", 1.5, 3)) <= 1
    assert max_pixel_diff(oil, ink) > 0
    for adapter, scale in [("ink", 2.0), (None, None), ("oil", 0.1), ("ink", 0.8)] * 5:
        e._use_adapter(GenerationRequest(PROMPT, seed=0, adapter=adapter, adapter_scale=scale))
    assert max_pixel_diff(e.generate([job(e, 3, "ink", 0.8)]).images[0], ink) == 0
    assert max_pixel_diff(e.generate([job(e, 4)]).images[0], base) == 0
    assert max_pixel_diff(e.generate([job(e, 3, "oil", 1.5)]).images[0], oil) == 0
    # a switch that fails part-way (as running out of memory would) leaves no adapter named as running: the next
    # request for the one before it writes it again instead of running on half of the other's matrices
    from zimage_serve.model.optim import lora_slots

    real, calls = lora_slots._scales, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("injected")
        return real(*args)

    monkeypatch.setattr(lora_slots, "_scales", failing)
    with pytest.raises(torch.OutOfMemoryError):
        e._use_adapter(GenerationRequest(PROMPT, seed=0, adapter="ink", adapter_scale=0.8))
    monkeypatch.setattr(lora_slots, "_scales", real)
    assert max_pixel_diff(e.generate([job(e, 3, "oil", 1.5)]).images[0], oil) == 0
