"""Partial residency and FP8 plans (model/placement.py, optim/streamer.py) on the tiny model, GPU plans followed on
the CPU (the CPU as 'GPU'): each plan's placement, and its pixels equal to the resident plan's (bf16 plans) or the
resident FP8 plan's (FP8 plans)."""

import pytest

from conftest import max_pixel_diff
from zimage_serve.core.request import GenerationRequest
from zimage_serve.model import placement
from zimage_serve.model.engine import Engine, Job
from zimage_serve.model.planner import GiB, Workload, make_plan
from zimage_serve.model.sizes import sizes_of

PROMPT = "a tram in the fog"


def image(tiny_source, plan, seed=7):
    engine = Engine.load(tiny_source, plan, device="cpu", dtype="float32")
    engine.set_progress(False)
    request = GenerationRequest(PROMPT, seed=seed, width=64, height=64)
    return engine, engine.generate([Job.of(request, engine.encode([PROMPT]))]).images[0]


def plan_of(tiny_source, policy, fp8=False):
    plan = make_plan(sizes_of(tiny_source), 80 * GiB, Workload(64, 64, 1), policy=policy, fp8=fp8)
    assert plan.kind == policy and plan.weights == ("fp8" if fp8 else "bf16")
    return plan


@pytest.fixture(scope="module")
def resident(tiny_source):
    return image(tiny_source, plan_of(tiny_source, "resident"))[1]


def test_a_partial_plan_streams_blocks_spread_among_the_resident_ones_and_makes_the_resident_image(tiny_source,
                                                                                                  resident):
    plan = plan_of(tiny_source, "partial")
    assert (plan.blocks_resident, plan.blocks_streamed) == (1, 1)  # the tiny model has 2 main blocks
    engine, ours = image(tiny_source, plan)
    streamer = engine.streamer
    assert streamer is not None and streamer.blocks == [engine.pipe.transformer.layers[1].block]
    assert max_pixel_diff(ours, resident) <= 1  # (the suite's bound: a rare value rounds the other way)
    assert "streamed_blocks" in engine.placement and "partial: 1 main blocks resident, 1 streamed" in plan.describe()


def test_more_streamed_blocks_than_buffers_are_copied_in_turn_each_step(tiny_source, resident):
    """Three blocks through the two buffers (the tiny model's noise refiner and its two main blocks, in the order
    they run): the first and the third share a buffer, so both are copied from their host copies at every step, and
    the image is the resident one."""
    from zimage_serve.model.optim.streamer import BlockStreamer, StreamedBlock

    engine = Engine.load(tiny_source, plan_of(tiny_source, "resident"), device="cpu", dtype="float32")
    engine.set_progress(False)
    t = engine.pipe.transformer
    streamer = BlockStreamer([t.noise_refiner[0], t.layers[0], t.layers[1]], "cpu")
    for i, (stack, j) in enumerate([(t.noise_refiner, 0), (t.layers, 0), (t.layers, 1)]):
        stack[j] = StreamedBlock(stack[j], streamer, i)
    request = GenerationRequest(PROMPT, seed=7, width=64, height=64)
    ours = engine.generate([Job.of(request, engine.encode([PROMPT]))]).images[0]
    assert max_pixel_diff(ours, resident) <= 1
    # all three once, then blocks 0 and 2 in turn at each of the 7 other steps, and block 0 for the next call
    assert streamer.copies == 3 + 2 * 7 + 1
    assert t.layers[0].block.attention.to_out[0].weight.data_ptr() in {b["attention.to_out.0.weight"].data_ptr()
                                                                 for b in streamer.buffers}


@pytest.mark.parametrize("layers,streamed,positions", [
    (2, 1, [1]), (30, 1, [29]), (30, 0, []), (30, 30, list(range(30))),
    (30, 11, [1, 4, 7, 9, 12, 15, 18, 20, 23, 26, 29]),  # the emulated 12 GiB card's split
    (30, 22, [0, 1, 3, 4, 5, 7, 8, 9, 11, 12, 14, 15, 16, 18, 19, 20, 22, 23, 24, 26, 27, 29])])  # the 8 GiB card's
def test_streamed_blocks_are_spread_evenly_and_the_last_block_is_among_them(layers, streamed, positions):
    """Between two streamed blocks run resident ones, beside whose compute the next copy runs: no run of resident
    blocks longer than the even share, and no gap between streamed ones wider than it."""
    from zimage_serve.model.optim.streamer import streamed_positions

    got = streamed_positions(layers, streamed)
    assert got == positions and len(set(got)) == streamed
    if streamed:
        gaps = [b - a for a, b in zip([-1] + got, got)]
        assert max(gaps) - min(gaps) <= 1 and got[-1] == layers - 1


@pytest.fixture
def fp8_tiny(monkeypatch):
    """FP8 for the tiny model's 64-wide layers (the real model's are 3840+; the threshold keeps embedders bf16)."""
    monkeypatch.setattr(placement, "FP8_MIN_FEATURES", 16)


def test_fp8_plans_quantize_the_blocks_and_a_partial_fp8_plan_makes_the_resident_fp8_image(tiny_source, resident,
                                                                                           fp8_tiny):
    engine, fp8_resident = image(tiny_source, plan_of(tiny_source, "resident", fp8=True))
    assert engine.placement["fp8_linear_layers"] > 0
    from zimage_serve.model.optim.fp8 import Float8Linear

    assert isinstance(engine.pipe.transformer.layers[0].attention.to_q, Float8Linear)
    assert 0 < max_pixel_diff(fp8_resident, resident)  # FP8 changes the image, as it does on the GPU
    engine, partial = image(tiny_source, plan_of(tiny_source, "partial", fp8=True))
    assert engine.streamer is not None and max_pixel_diff(partial, fp8_resident) <= 1


def test_fp8_auto_is_a_memory_plan():
    from zimage_serve.model.planner import Z_IMAGE_TURBO

    twelve = make_plan(Z_IMAGE_TURBO, 12 * GiB, Workload(1024, 1024, 4), fp8="auto")
    assert (twelve.kind, twelve.weights, twelve.transformer) == ("resident", "fp8", "gpu")
    assert make_plan(Z_IMAGE_TURBO, 24 * GiB, Workload(1024, 1024, 4), fp8="auto").weights == "bf16"  # bf16 fits
    eight = make_plan(Z_IMAGE_TURBO, 8 * GiB, Workload(1024, 1024, 4), fp8="auto")
    bf16 = make_plan(Z_IMAGE_TURBO, 8 * GiB, Workload(1024, 1024, 4))
    assert (eight.kind, eight.weights, bf16.kind, bf16.weights) == ("partial", "fp8", "partial", "bf16")
    assert eight.blocks_streamed < bf16.blocks_streamed


@pytest.mark.parametrize("gib", [8, 12])
def test_a_partial_plan_fills_the_budget(gib):
    from zimage_serve.model.planner import Z_IMAGE_TURBO

    plan = make_plan(Z_IMAGE_TURBO, gib * GiB, Workload(1024, 1024, 4))
    assert plan.kind == "partial" and plan.blocks_resident + plan.blocks_streamed == 30
    assert 0.85 * gib <= plan.peak_gib <= gib
    one_more = Z_IMAGE_TURBO.block_bytes() / GiB
    assert plan.peak_gib + one_more > gib  # no block left out that would have fit


def test_below_the_smallest_plan_the_error_names_the_minimum():
    from zimage_serve.core.errors import PlanError
    from zimage_serve.model.planner import Z_IMAGE_TURBO

    with pytest.raises(PlanError, match=r"The smallest needs 3\.\d\d GiB"):
        make_plan(Z_IMAGE_TURBO, 2 * GiB, Workload(1024, 1024, 1))


def test_gpu_processes_get_expandable_segments_unless_the_user_chose(monkeypatch):
    from zimage_serve.model.machine import EXPANDABLE_SEGMENTS, prepare_allocator

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    prepare_allocator()
    import os

    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == EXPANDABLE_SEGMENTS
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    prepare_allocator()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"


def test_fp8_true_keeps_the_text_encoder_on_a_large_card_and_adapters_get_no_partial_plan():
    from zimage_serve.model.planner import Z_IMAGE_TURBO

    big = make_plan(Z_IMAGE_TURBO, 80 * GiB, Workload(1024, 1024, 4), fp8=True)
    assert (big.kind, big.weights, big.text_encoder) == ("resident", "fp8", "gpu")
    lora = make_plan(Z_IMAGE_TURBO, 12 * GiB, Workload(1024, 1024, 4), fp8="auto", partial_ok=False)
    assert (lora.kind, lora.weights) == ("resident", "fp8")
    assert make_plan(Z_IMAGE_TURBO, 8 * GiB, Workload(1024, 1024, 4), partial_ok=False).kind == "sequential"
