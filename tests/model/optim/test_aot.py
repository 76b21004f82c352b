"""optim/aot.py: the first replica on a node saves its transformer blocks' compiled code at the start of its warm-up,
and the next replica loads it and traces none of them; what the code can't check, its directory's key does; a call
the code doesn't fit, a file that doesn't load, fall back to torch.compile. Two replicas on one compile cache (the
first in a fresh process), the tiny model on the CPU (float32; the CPU plan fuses no projections, which a GPU
replica's does)."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import max_pixel_diff

def start_replica(cache: str, out: str) -> dict:
    """A replica's engine start (model/startup.py, serving/generator.py) on the CPU: load, the speed-ups with compile
    and its saved code, the warm-up (batch 1 and 2), which saves the code when it is the node's first; then requests
    (a batch of two prompts of different lengths, and one alone) written to ``out`` as PNGs. The VAE decodes in tiles
    (eagerly): only the blocks compile here. What it did, as JSON."""
    import dataclasses

    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Engine, Job
    from zimage_serve.model.optim import aot
    from zimage_serve.model.planner import Workload, make_plan
    from zimage_serve.model.sizes import sizes_of
    from zimage_serve.model.sources import resolve
    from zimage_serve.model.startup import compiled_graphs, warm_up

    source = resolve("tiny")
    plan = make_plan(sizes_of(source), None, Workload(64, 64, 2))
    engine = Engine.load(source, dataclasses.replace(plan, vae_tiling=True), device="cpu", dtype="float32")
    engine.set_progress(False)
    graphs = compiled_graphs()
    engine._accelerate({"compile": True, "fuse": True, "cuda_graphs": False, "compile_artifacts": True,
                        "cache_dir": cache})
    warm = warm_up(engine, 64, 64, (1, 2), caption_tokens=(16, 40))
    at_ready = compiled_graphs()
    hidden = engine.pipe.transformer.config.cap_feat_dim
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randn(n, hidden, generator=g) for n in (7, 33, 20)]
    images = engine.generate([Job(GenerationRequest("p", seed=i, width=64, height=64, steps=2), e)
                              for i, e in enumerate(prompts[:2])]).images
    images += engine.generate([Job(GenerationRequest("p", seed=2, width=64, height=64, steps=2), prompts[2])]).images
    for i, image in enumerate(images):
        image.save(f"{out}/{i}.png")
    torch.save(prompts, f"{out}/prompts.pt")
    transformer = engine.pipe.transformer
    return {"compile": engine.speedups["compile"], "calls": warm.calls, "saved": sorted(warm.saved or {}),
            "dir": str(engine.artefacts_dir), "graphs_in_warm_up": at_ready - graphs,
            "graphs_after_requests": compiled_graphs() - at_ready, "uses_artefacts": aot.uses_artefacts(transformer),
            "compiled_instead": aot.calls_compiled_instead(transformer)}


_IN_A_PROCESS = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
sys.path[:0] = sys.argv[3].split(":")  # this module's directory and tests/ (conftest)
import torch
torch._dynamo.config.enable_aot_compile = False  # as before torch 2.13 (the device's 2.11): the save turns it on
from test_aot import start_replica
print(json.dumps(start_replica(sys.argv[1], sys.argv[2])))
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two replicas started one after the other on one node: the first in a process of its own (a cold one), the
    second in this one (a warm one, which pays no imports): (the first's report, the second's, their outputs)."""
    root = tmp_path_factory.mktemp("aot")
    (root / "first").mkdir()
    (root / "second").mkdir()
    # Inductor's cache (its kernels, built with the C++ compiler on the CPU) kept from run to run of the suite; the
    # saved code goes under ``root``, where the first replica finds none
    env = {**os.environ,
           "TORCHINDUCTOR_CACHE_DIR": os.path.join(os.environ["ZIMAGE_CACHE_DIR"], "compile-aot-first-replica"),
           "TORCHINDUCTOR_COMPILE_THREADS": "1",  # (see test_accel.py)
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # this process's threads (a test before may have set them)
    r = subprocess.run([sys.executable, "-c", _IN_A_PROCESS, str(root / "compile"), str(root / "first"),
                        f"{os.path.dirname(__file__)}:{os.path.dirname(os.path.dirname(os.path.dirname(__file__)))}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    first = {**json.loads(r.stdout.strip().splitlines()[-1]), "log": r.stderr}
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("zimage_serve").addHandler(handler)
    try:
        second = {**start_replica(str(root / "compile"), str(root / "second")), "log": "\n".join(warnings)}
    finally:
        logging.getLogger("zimage_serve").removeHandler(handler)
    return first, second, root


def test_the_first_replica_saves_each_block_kinds_code_and_the_second_loads_it_and_traces_no_block(replicas):
    first, second, root = replicas
    # the first: an eager pass that records a call of each kind, the save, then the rest of its warm-up on the saved
    # code, as the second's
    assert [call[1] for call in first["calls"][:2]] == ["record", "save compiled"]
    assert [name.split("-")[0] for name in first["saved"]] == ["mod_mask", "mod_nomask", "nomod_mask", "nomod_nomask"]
    assert "saved code of 4 block kinds loaded" in first["compile"] and first["compiled_instead"] == {}
    assert sorted(p.name for p in (root / "compile" / "aot").iterdir()) == [os.path.basename(first["dir"])]
    index = json.loads((root / "compile" / "aot" / os.path.basename(first["dir"]) / "index.json").read_text())
    assert index == {name: "saved" for name in first["saved"]}
    # the second: the same directory (the same key), every kind loaded; its warm-up records nothing, no block ran
    # through torch.compile, and nothing compiled after it was ready
    assert second["dir"] == first["dir"] and "saved code of 4 block kinds loaded" in second["compile"]
    assert second["uses_artefacts"] and second["compiled_instead"] == {} and second["saved"] == []
    assert all(call[1] != "record" for call in second["calls"])
    assert second["graphs_in_warm_up"] == 0 and second["graphs_after_requests"] == 0
    assert "could not" not in second["log"] and "don't fit" not in second["log"]


def test_both_replicas_make_the_eager_engines_images(replicas, tiny_source):
    """The first runs the code it compiled and saved, the second the code it loaded: the same code, so the same
    pixels; both the eager engine's up to float rounding."""
    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Engine, Job
    from zimage_serve.model.planner import Workload, make_plan
    from zimage_serve.model.sizes import sizes_of

    _, _, root = replicas
    engine = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(64, 64, 2)), device="cpu",
                         dtype="float32")
    engine.set_progress(False)
    prompts = torch.load(root / "first" / "prompts.pt")
    eager = engine.generate([Job(GenerationRequest("p", seed=i, width=64, height=64, steps=2), e)
                             for i, e in enumerate(prompts[:2])]).images
    eager += engine.generate([Job(GenerationRequest("p", seed=2, width=64, height=64, steps=2), prompts[2])]).images
    for i, image in enumerate(eager):
        compiled, loaded = (Image.open(root / name / f"{i}.png").convert("RGB") for name in ("first", "second"))
        assert max_pixel_diff(compiled, image) <= 2 and max_pixel_diff(loaded, image) <= 2
        assert np.array_equal(np.asarray(loaded), np.asarray(compiled))


def _transformer(tiny_source, fuse=True, dtype=torch.float32):
    from diffusers import ZImageTransformer2DModel

    from zimage_serve.model.optim.fusion import fuse_projections

    model = ZImageTransformer2DModel.from_pretrained(tiny_source.path, subfolder="transformer", dtype=dtype)
    model.eval().requires_grad_(False)
    if fuse:
        fuse_projections(model)
    return model


def test_the_key_and_the_variants_change_with_what_the_code_assumes(tiny_source, monkeypatch, tmp_path):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from zimage_serve.model.optim.aot import variant
    from zimage_serve.model.optim.aot_key import artefact_key

    fused = artefact_key(_transformer(tiny_source))
    assert artefact_key(_transformer(tiny_source)) == fused  # another process's same model: the same directory
    assert artefact_key(_transformer(tiny_source, fuse=False)) != fused  # other modules in the blocks
    assert artefact_key(_transformer(tiny_source, dtype=torch.bfloat16)) != fused
    assert artefact_key(_transformer(tiny_source), compile_mode="max-autotune-no-cudagraphs") != fused
    assert artefact_key(_transformer(tiny_source), batched=False) != fused  # a batch fixed at 1
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # (the code guards them)
    try:
        assert artefact_key(_transformer(tiny_source)) != fused
    finally:
        torch.set_num_threads(threads)
    # (set_attention_backend sets the process's backend too: restored by monkeypatch.undo below)
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    other_backend = _transformer(tiny_source, fuse=False)
    other_backend.set_attention_backend("_native_math")  # the processors' backend
    assert artefact_key(other_backend) != artefact_key(_transformer(tiny_source, fuse=False))
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", AttentionBackendName.FLEX)  # the process's
    assert artefact_key(_transformer(tiny_source)) != fused
    monkeypatch.undo()
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "7")  # how fast it compiles, not what: the same directory
    monkeypatch.chdir(tmp_path)  # (a Ray worker runs elsewhere than its driver)
    assert artefact_key(_transformer(tiny_source)) == fused
    monkeypatch.setenv("TORCHINDUCTOR_MAX_AUTOTUNE", "1")  # what it compiles: another
    assert artefact_key(_transformer(tiny_source)) != fused
    # within one transformer, a block of another structure (unfused here; LoRA slots on some blocks only, in
    # serving) is another variant, with code of its own
    args = (torch.zeros(1, 4, 8), None, torch.zeros(1, 4, 2))
    assert variant(_transformer(tiny_source).layers[0], args) != variant(_transformer(tiny_source, fuse=False).layers[0],
                                                                          args)
    assert variant(_transformer(tiny_source).layers[0], args[:2]) is None  # arguments no artefact takes


def test_a_call_the_code_does_not_fit_and_a_file_that_does_not_load_fall_back_to_torch_compile(replicas, tiny_source,
                                                                                               tmp_path, caplog):
    from zimage_serve.model.optim import aot
    from zimage_serve.model.optim.accel import accelerate

    first, _, root = replicas
    model = _transformer(tiny_source, fuse=False)  # (as the replicas' CPU engines)
    c = model.config
    with torch.inference_mode(), aot.Recorder(model) as recorder:  # (eager: nothing compiled or loaded yet)
        model([torch.randn(c.in_channels, 1, 8, 8) for _ in range(2)], torch.full((2,), 0.5),
              [torch.randn(16, c.cap_feat_dim) for _ in range(2)], return_dict=False)
    name = next(n for n in recorder.examples if n.startswith("nomod_nomask-"))
    block, args = recorder.examples[name]
    saved_dir = root / "compile" / "aot" / os.path.basename(first["dir"])
    # a replica like the first finds its recording; one whose blocks differ (fused here, LoRA slots on some blocks in
    # serving) records its own
    assert not aot.needs_recording(saved_dir, model) and aot.needs_recording(saved_dir, _transformer(tiny_source))
    assert aot.load(model, saved_dir) == first["saved"]
    with torch.inference_mode():
        fits = block(*args)
        x = args[0]
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1])  # x as a view with other strides: the code guards them
        wide[..., :x.shape[-1]] = x
        assert torch.allclose(block(wide[..., :x.shape[-1]], *args[1:]), fits, atol=1e-5)
        assert torch.equal(block(*args), fits)  # the artefact stays for the calls that fit it
    assert aot.calls_compiled_instead(model) == {name: 1}
    assert f"the saved compiled {name} blocks don't fit this call" in caplog.text

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "mod_mask.bin").write_bytes(b"not a compiled function")
    model = _transformer(tiny_source, fuse=False)
    assert aot.load(model, broken) == [] and not aot.uses_artefacts(model)
    assert "could not load the compiled mod_mask blocks" in caplog.text
    seconds = {}
    applied = accelerate(model, compile=True, fuse=False, compile_artifacts=True, cache_dir=str(tmp_path / "c"),
                         seconds=seconds)
    assert applied["compile"] == "regional (repeated blocks)"  # nothing saved there: torch.compile's way
    assert sorted(seconds) == ["compile", "compile_setup"] and all(s >= 0 for s in seconds.values())


def test_code_called_at_the_count_it_was_saved_at_runs_in_a_process_at_another_count(replicas, tiny_source):
    """As code for a GPU is called (aot_key.GPU_THREADS): at the CPU thread count it was saved at (here the first
    replica's), by a process whose own count differs (a batch job's GPU worker of 1 CPU, a replica of 2), without
    a miss; the process's count is left as it was. At the process's own count the same code's guards refuse the
    call (Dynamo's global state). The directory's key names the fixed count, not the process's."""
    from zimage_serve.model.optim import aot
    from zimage_serve.model.optim.aot_key import artefact_key

    first, _, root = replicas
    saved_dir = root / "compile" / "aot" / os.path.basename(first["dir"])
    model = _transformer(tiny_source, fuse=False)  # (as the replicas' CPU engines)
    c = model.config
    with torch.inference_mode(), aot.Recorder(model) as recorder:
        model([torch.randn(c.in_channels, 1, 8, 8) for _ in range(2)], torch.full((2,), 0.5),
              [torch.randn(16, c.cap_feat_dim) for _ in range(2)], return_dict=False)
    name = next(n for n in recorder.examples if n.startswith("nomod_nomask-"))
    block, args = recorder.examples[name]
    with torch.inference_mode():
        expected = block(*args)
    saved_at = torch.get_num_threads()  # (the first replica's: its process was given this one's)
    key = artefact_key(model, threads=saved_at)
    torch.set_num_threads(saved_at + 2)  # another process's count: the same directory, the same code
    try:
        assert key == os.path.basename(first["dir"])  # the first replica's directory, whatever this count
        assert artefact_key(model, threads=saved_at) == key and artefact_key(model) != key
        assert aot.load(model, saved_dir, threads=saved_at) == first["saved"]
        with torch.inference_mode():
            assert torch.allclose(block(*args), expected, atol=1e-5)
            assert torch.get_num_threads() == saved_at + 2
            _, check, _ = aot._shared(model)["loaded"][name]
            assert not check(block, *args)  # at the process's own count its guards refuse it
        assert aot.calls_compiled_instead(model) == {}
    finally:
        torch.set_num_threads(saved_at)


def _engine(tiny_source, directory):
    """The tiny engine on the CPU, its blocks eager, told to save and load its blocks' code in ``directory``."""
    from zimage_serve.model.engine import Engine
    from zimage_serve.model.planner import Workload, make_plan
    from zimage_serve.model.sizes import sizes_of

    engine = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(64, 64, 2)), device="cpu",
                         dtype="float32")
    engine.set_progress(False)
    engine.speedups["compile"] = "none"
    engine.artefacts_dir = directory
    return engine


def test_a_replica_that_started_while_the_first_was_saving_runs_the_saved_code(replicas, tiny_source, tmp_path):
    """Its start found nothing saved; by its warm-up the first replica's code is there: it loads it, records nothing."""
    import shutil

    from zimage_serve.model.optim import aot
    from zimage_serve.model.startup import warm_up

    first, _, root = replicas
    directory = tmp_path / "aot"
    engine = _engine(tiny_source, directory)
    shutil.copytree(root / "compile" / "aot" / os.path.basename(first["dir"]), directory)  # (saved meanwhile)
    warm = warm_up(engine, 64, 64, (1, 2), caption_tokens=(16, 40))
    assert warm.saved is None and all(call[1] != "record" for call in warm.calls)
    assert aot.loaded_variants(engine.pipe.transformer) == set(first["saved"])
    assert aot.calls_compiled_instead(engine.pipe.transformer) == {}


def test_a_save_that_runs_out_of_memory_leaves_the_replica_warming_up_and_serving(tiny_source, tmp_path, monkeypatch,
                                                                                   caplog):
    from zimage_serve.model.optim import aot
    from zimage_serve.model.startup import warm_up

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(aot, "save", out_of_memory)
    engine = _engine(tiny_source, tmp_path / "aot")
    warm = warm_up(engine, 64, 64, (1, 2), caption_tokens=(16, 40))
    assert warm.saved is None and [call[1] for call in warm.calls][:2] == ["record", 16]  # the rest ran
    assert "the blocks' compiled code was not saved (OutOfMemoryError: CUDA out of memory" in caplog.text
    assert not aot.uses_artefacts(engine.pipe.transformer) and aot.needs_recording(tmp_path / "aot",
                                                                                    engine.pipe.transformer)


def test_a_replica_on_saved_code_serves_after_the_warm_ups_first_call_and_finishes_it_beside_batches(
        replicas, tiny_source, tmp_path):
    """warm_up(later=True) on saved code: one call, then the others in a thread, each holding the batches' lock,
    compiling nothing; done is told their seconds and every call."""
    import shutil
    import threading

    from zimage_serve.model.optim import aot
    from zimage_serve.model.startup import compiled_graphs, finish_start_in_background, warm_up

    first, _, root = replicas
    directory = tmp_path / "aot"
    engine = _engine(tiny_source, directory)
    shutil.copytree(root / "compile" / "aot" / os.path.basename(first["dir"]), directory)
    warm = warm_up(engine, 64, 64, (1, 2), caption_tokens=(16, 40), later=True)
    assert [c[:2] for c in warm.calls] == [(1, 16)] and len(warm.rest) == 4
    graphs, lock, finished = compiled_graphs(), threading.Lock(), threading.Event()
    told = []
    lock.acquire()  # a batch holds the GPU
    finish_start_in_background(engine, lock, warm, lambda seconds, calls: told.append((seconds, calls)) or finished.set())
    assert not finished.wait(1.0) and len(warm.calls) == 1  # it waits for the batch
    lock.release()
    assert finished.wait(60)
    seconds, calls = told[0]
    assert seconds > 0 and [c[:2] for c in calls] == [(1, 16), (1, 40), (2, 16), (2, 40), (2, "16/40")]
    assert compiled_graphs() == graphs and aot.calls_compiled_instead(engine.pipe.transformer) == {}


def test_a_warm_up_with_blocks_to_compile_runs_every_call_before_the_start_ends(tiny_source, tmp_path):
    """Without saved code (a node's first replica failed to save it), later=True changes nothing: the calls compile."""
    from zimage_serve.model.startup import warm_up

    engine = _engine(tiny_source, None)
    warm = warm_up(engine, 64, 64, (1, 2), caption_tokens=(16, 40), later=True)
    assert len(warm.calls) == 5 and warm.rest == []


def test_a_replica_missing_a_saved_variant_runs_every_warm_up_call_before_the_start_ends(replicas, tiny_source,
                                                                                         tmp_path):
    """One variant's code not saved (its save failed): that variant compiles in the warm-up, so nothing is left for
    after the start."""
    import shutil

    from zimage_serve.model.optim import aot
    from zimage_serve.model.startup import warm_up

    first, _, root = replicas
    directory = tmp_path / "aot"
    shutil.copytree(root / "compile" / "aot" / os.path.basename(first["dir"]), directory)
    missing = next(name for name in first["saved"] if name.startswith("nomod_mask"))
    (directory / f"{missing}.bin").unlink()
    index = json.loads((directory / "index.json").read_text())
    (directory / "index.json").write_text(json.dumps({**index, missing: "not saved: out of memory"}))
    engine = _engine(tiny_source, directory)
    warm = warm_up(engine, 64, 64, (1, 2), caption_tokens=(16, 40), later=True)
    assert missing not in aot.loaded_variants(engine.pipe.transformer) and aot.uses_artefacts(engine.pipe.transformer)
    assert len(warm.calls) == 5 and warm.rest == []
