"""The engine against stock diffusers ZImagePipeline on the same tiny checkpoint, pixel for pixel."""

import numpy as np
import pytest
import torch

from conftest import job, max_pixel_diff, stock_image
from zimage_serve.model.engine import Engine
from zimage_serve.model.planner import GiB, Workload, make_plan
from zimage_serve.model.sizes import sizes_of


@pytest.fixture(scope="module")
def engine(tiny_source):
    e = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(128, 128, 4)))
    e.set_progress(False)
    return e


def test_one_image_equals_stock(engine, stock_pipe):
    emb = engine.encode(["a cat in the rain"])[0]
    ours = engine.generate([job(emb, seed=7, width=64, height=96)]).images[0]
    assert ours.size == (64, 96)
    assert max_pixel_diff(ours, stock_image(stock_pipe, "a cat in the rain", 7, 64, 96)) <= 1


def test_batch_keeps_each_seed_and_equals_stock(engine, stock_pipe):
    prompts = ["a cat", "a lighthouse on a cliff at dusk, oil painting", "a cat", "x"]
    embs = engine.encode(prompts)
    jobs = [job(e, seed=s, width=64, height=64) for e, s in zip(embs, [1, 2, 3, 4])]
    jobs.append(job(embs[0], seed=5, width=48, height=64))  # another shape: its own batch
    result = engine.generate(jobs)
    assert sorted(result.batch_sizes) == [1, 4]
    for j, prompt, image in zip(jobs, prompts + ["a cat"], result.images):
        assert max_pixel_diff(image, stock_image(stock_pipe, prompt, j.request.seed, j.request.width, j.request.height)) <= 1
    assert max_pixel_diff(result.images[0], result.images[2]) > 0  # same prompt, other seed


def test_max_batch_splits(engine):
    emb = engine.encode(["a cat"])[0]
    result = engine.generate([job(emb, seed=s, width=64, height=64) for s in range(6)])
    assert result.batch_sizes == [4, 2] and len(result.images) == 6
    latents_only = engine.generate([job(emb, seed=s, width=64, height=64) for s in range(2)], decode=False)
    assert latents_only.images == [None, None] and latents_only.batch_sizes == [2]


def test_guidance_with_negative_prompt_equals_stock(engine, stock_pipe):
    pos, neg = engine.encode(["a cat", "blurry"])
    ours = engine.generate([job(pos, seed=3, width=64, height=64, steps=4, guidance_scale=2.0, negative_embeds=neg)])
    ref = stock_image(stock_pipe, "a cat", 3, 64, 64, steps=4, guidance_scale=2.0, negative_prompt="blurry")
    assert max_pixel_diff(ours.images[0], ref) <= 1


@pytest.mark.parametrize("policy", ["resident", "offload", "sequential"])
def test_every_plan_kind_loads_and_generates_the_same_image(tiny_source, stock_pipe, policy):
    """GPU plans followed on CPU: the same hooks (model offload, group offload) with the CPU as 'GPU'."""
    plan = make_plan(sizes_of(tiny_source), 80 * GiB, Workload(64, 64, 1), policy=policy)
    assert plan.kind == policy
    engine = Engine.load(tiny_source, plan, device="cpu", dtype="float32")
    engine.set_progress(False)
    emb = engine.encode(["a cat"])[0]
    image = engine.generate([job(emb, seed=11, width=64, height=64)]).images[0]
    assert max_pixel_diff(image, stock_image(stock_pipe, "a cat", 11, 64, 64)) <= 1
    if policy == "sequential":
        from diffusers.hooks.group_offloading import _is_group_offload_enabled

        assert _is_group_offload_enabled(engine.pipe.transformer)
    if policy == "offload":
        assert engine.loaded.hooks


def test_a_streamed_plan_with_the_speedups_runs_its_transformer_eagerly(tiny_source, stock_pipe):
    """The sequential plan (diffusers' group offloading) asked to compile: its hooks onload each block in code that
    torch.compile must not trace (the warm-up failed on a 4 GiB card, bench run60), so the transformer stays eager
    and the image is stock's."""
    import dataclasses

    plan = make_plan(sizes_of(tiny_source), 80 * GiB, Workload(64, 64, 1), policy="sequential")
    engine = Engine.load(tiny_source, dataclasses.replace(plan, vae_tiling=True), device="cpu", dtype="float32")
    engine.set_progress(False)
    engine._accelerate({"compile": True, "fuse": True, "cuda_graphs": True, "compile_artifacts": True})
    assert "compile" not in engine.speedups
    emb = engine.encode(["a cat"])[0]
    image = engine.generate([job(emb, seed=11, width=64, height=64)]).images[0]
    assert max_pixel_diff(image, stock_image(stock_pipe, "a cat", 11, 64, 64)) <= 1


def test_without_text_encoder_needs_embeddings(tiny_source):
    plan = make_plan(sizes_of(tiny_source), None, Workload(64, 64, 1))
    engine = Engine.load(tiny_source, plan, with_text_encoder=False)
    assert engine.encoder is None
    with pytest.raises(RuntimeError, match="without a text encoder"):
        engine.encode(["a cat"])
    emb = torch.randn(5, 32)
    assert engine.generate([job(emb, seed=1, width=64, height=64)]).images[0].size == (64, 64)


def test_images_are_converted_like_diffusers_postprocess():
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor

    from zimage_serve.model.engine import _to_pil

    for dtype in (torch.float32, torch.bfloat16):
        decoded = (torch.randn(1, 3, 40, 24, generator=torch.Generator().manual_seed(0)) * 1.3).to(dtype)
        expected = VaeImageProcessor(vae_scale_factor=16).postprocess(decoded, output_type="pil")[0]
        assert np.array_equal(np.asarray(_to_pil(decoded)), np.asarray(expected))


def test_compiled_decoder_compiles_for_the_plan_size_only(tiny_source):
    """accel.accelerate_vae with Engine._decode's rule: the plan's size runs compiled (the same image),
    any other size runs eagerly without compiling again. The compile cache is the default one (the test cache's
    ``compile/``), as a restarted replica's is: warm after the first run on a machine (16 s -> 3 s on 2 cores)."""
    import torch._dynamo

    from zimage_serve.model.optim.accel import accelerate_vae

    plan = make_plan(sizes_of(tiny_source), None, Workload(64, 48, 1))
    engine = Engine.load(tiny_source, plan)
    embeds = engine.encode(["a lighthouse"])[0]
    make = lambda w, h: np.asarray(engine.generate([job(embeds, 3, w, h, steps=2)]).images[0], dtype=np.int16)
    eager_plan_size, eager_other = make(64, 48), make(32, 32)
    torch._dynamo.reset()
    norms = 2 * len(engine.pipe.vae.decoder.up_blocks) * (engine.pipe.vae.config.layers_per_block + 1) + 5  # + mid, norm_out
    assert accelerate_vae(engine.pipe.vae, cache_dir=None) == {"vae_compile": f"{norms} GroupNorm+SiLU"}
    engine.compiled_decoder = True
    compiled = make(64, 48)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames >= 1
    assert np.abs(compiled - eager_plan_size).max() <= 2
    assert np.array_equal(make(32, 32), eager_other)  # eager: bit for bit
    engine.enable_vae_tiling(tile=32)
    make(64, 48)  # the plan's size, decoded in tiles: eager too
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames  # nothing compiled for either


@pytest.mark.parametrize("spare_gib,tiling,graphs", [(40.0, False, True), (0.5, False, False), (0.0005, False, False),
                                                     (40.0, True, True)])
def test_graphs_need_headroom_over_the_plan_and_the_decoder_compiles_unless_tiled(tiny_source, tmp_path, spare_gib,
                                                                                   tiling, graphs):
    import dataclasses

    from zimage_serve.model.sizes import sizes_of

    workload = Workload(256, 256, 1)
    peak = make_plan(sizes_of(tiny_source), 80 * GiB, workload).peak_gib
    plan = make_plan(sizes_of(tiny_source), int((peak + spare_gib) * GiB), workload)
    assert plan.kind == "resident"
    engine = Engine.load(tiny_source, dataclasses.replace(plan, vae_tiling=tiling), device="cpu", dtype="float32")
    engine._accelerate({"compile": True, "fuse": False, "cuda_graphs": True, "cache_dir": str(tmp_path)})  # lazy: nothing compiles yet
    assert engine.compiled_decoder is not tiling and ("vae_compile" in engine.speedups) is not tiling
    assert ("cuda_graph_blocks" in engine.speedups) is graphs  # graphs ask 1 GiB + the plan's activations


def test_the_warm_up_runs_each_batch_size_prompt_length_and_a_batch_of_mixed_lengths(tiny_source):
    """model/startup.warm_up's calls: a batch of prompts of different lengths is padded to the longest with a mask,
    which compiled code traces apart (and CUDA graphs capture apart): the warm-up runs one, so that the first such
    batch of requests doesn't compile."""
    from zimage_serve.model.startup import warm_up

    engine = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(64, 64, 3)))
    engine.set_progress(False)
    vae, decoded = engine.pipe.vae, []
    decode = vae.decode
    vae.decode = lambda latents, **kw: decoded.append(latents.shape) or decode(latents, **kw)
    warm = warm_up(engine, 64, 64, (1, 3), caption_tokens=(16, 80))
    assert [c[:2] for c in warm.calls] == [(1, 16), (1, 80), (3, 16), (3, 80), (3, "16/80/16")]
    assert len(decoded) == 1  # the first call's image only: the VAE decodes one at a time, whatever the batch
    vae.decode = decode
    assert warm.compile_s == 0  # (nothing compiles on this plan)


def test_a_start_may_leave_the_text_encoder_to_add_once_serving(tiny_source, engine):
    """start_engine(text_encoder_later=True): the plan keeps the text encoder where the engine runs, and the start
    leaves it out (a replica adds it once ready: serving/generator.py); added, it encodes as one loaded with the
    rest. Where the plan encodes on the CPU encoders there is nothing to add."""
    from zimage_serve.model.startup import StartClock, add_text_encoder, start_engine

    clock = StartClock()
    started = start_engine("tiny", Workload(64, 64, 1), clock, encode_on="gpu", text_encoder_later=True)
    assert started.text_encoder_later and started.engine.encoder is None
    assert "load_text_encoder_s" not in clock.details and "load_vae_s" in clock.details
    assert {"imports_torch_s", "imports_diffusers_s"} <= set(clock.details)  # (where the imports went)
    with pytest.raises(RuntimeError, match="without a text encoder"):
        started.engine.encode(["a cat"])
    assert add_text_encoder(started.engine) > 0
    ours, reference = started.engine.encode(["a lighthouse"])[0], engine.encode(["a lighthouse"])[0]
    assert ours.dtype == reference.dtype and torch.equal(ours, reference)
    assert add_text_encoder(started.engine) == 0.0  # (added once)

    on_cpu = start_engine("tiny", Workload(64, 64, 1), StartClock(), encode_on="cpu", text_encoder_later=True)
    assert not on_cpu.text_encoder_later and on_cpu.engine.encoder is None


def test_the_text_encoder_added_beside_batches_waits_for_their_lock_and_says_how_it_went(tiny_source, engine):
    """finish_start_in_background(text_encoder=True) (a replica, once ready): the model's skeleton is built while the batches'
    lock is held (from_pretrained sets process-wide state: torch's default dtype, torch.linspace), so a batch in
    flight holds it up; its weights then read outside the lock, it encodes as the one from_pretrained loads. Told
    "ready" and the seconds, or why it failed (an offload plan's text encoder is loaded with the rest)."""
    import queue
    import threading

    from zimage_serve.model.startup import add_text_encoder, finish_start_in_background

    told, batch = queue.Queue(), threading.Lock()
    resident = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(64, 64, 1)),
                           with_text_encoder=False)
    with batch:  # a batch in flight
        finish_start_in_background(resident, batch, text_encoder=True, added=lambda *a: told.put(a))
        with pytest.raises(queue.Empty):
            told.get(timeout=1)
        assert resident.encoder is None
    state, seconds = told.get(timeout=60)
    assert state == "ready" and seconds > 0
    prompts = ["a lighthouse", "a red door in the rain, oil painting"]
    for ours, reference in zip(resident.encode(prompts), engine.encode(prompts)):
        assert ours.dtype == reference.dtype and torch.equal(ours, reference)
    theirs = engine.encoder.model.state_dict()
    assert {k: v.dtype for k, v in resident.encoder.model.state_dict().items()} == {k: v.dtype for k, v in theirs.items()}

    plan = make_plan(sizes_of(tiny_source), 80 * GiB, Workload(64, 64, 1), policy="offload")
    offload = Engine.load(tiny_source, plan, device="cpu", dtype="float32", with_text_encoder=False)
    with pytest.raises(ValueError, match="loaded with the rest"):
        add_text_encoder(offload)
    finish_start_in_background(offload, batch, text_encoder=True, added=lambda *a: told.put(a))
    assert told.get(timeout=60) == ("failed: ValueError: the offload plan's text encoder is loaded with the rest "
                                    "(Engine.load)", None)
    assert offload.encoder is None
