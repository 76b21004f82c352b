"""The batch job on local Ray with the tiny checkpoint: images, manifest, resume, kill -9, bad files."""

import copy
import hashlib
import json
import re
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace

import pytest
from diffusers import ZImagePipeline
from PIL import Image

from conftest import max_pixel_diff, run_cli, stock_image
from test_startup_output import lines_of, message, repeated
from zimage_serve.batch.job import encoder_cpus, run
from zimage_serve.batch.stages import EncodeStage, batch_of, row
from zimage_serve.core.request import GenerationRequest
from zimage_serve.core.errors import ZImageError
from zimage_serve.batch.prompts_file import Item, PromptsFileError, read_prompts
from zimage_serve.model.sources import resolve
from zimage_serve.testing.lora import write_lora


def _prompts(path, n, size="64x64"):
    lines = [json.dumps({"id": f"img-{i:03d}", "prompt": f"prompt number {i % 7}", "seed": 1000 + i, "size": size})
             for i in range(n)]
    lines.append(json.dumps({"id": "../../escape", "prompt": "a bird", "seed": 5, "size": size}))
    path.write_text("\n".join(lines) + "\n")
    return n + 1


def _args(prompts, out, **kw):
    return Namespace(prompts=str(prompts), out=str(out), model="tiny", size="64x64", steps=8, seed=0, batch_size=4,
                     gpus="1", format="png", policy="auto", compile=True, fp8=False, encoder_cpus=None,
                     encoder_dtype="float32", verify=False, **kw)


def _check_output(out, expected: int):
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ids = [m["id"] for m in manifest]
    assert len(ids) == len(set(ids)) == expected
    images = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert images == sorted(m["file"] for m in manifest)
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    for m in manifest:
        assert hashlib.sha256((out / m["file"]).read_bytes()).hexdigest() == m["sha256"]
        assert (out / m["file"]).stat().st_size == m["bytes"]
        assert "/" not in m["file"]
    return {m["id"]: m for m in manifest}


def test_plain_text_prompts_get_line_number_ids(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a cat\n\na dog\n")
    items = read_prompts(p)
    assert [(i.id, i.prompt, i.seed) for i in items] == [("line-000001", "a cat", 1), ("line-000003", "a dog", 3)]


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "line 2: duplicate id 'a' (first on line 1)"),
    ('{"id": "", "prompt": "x"}\n', "line 1: id must be a non-empty"),
    ('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "x", "size": "100x100"}\n', "line 2: size width must be a multiple of 16"),
    ('{"id": "a", "prompt": "x"}\n{not json\n', "line 2: not valid JSON"),
    ('{"id": "a", "prompt": ""}\n', "line 1: prompt must not be empty"),
    ('{"id": "a", "prompt": "x", "steps": 0}\n', "line 1: steps must be between"),
    ('{"id": "a", "prompt": "x", "colour": 1}\n', "line 1: unknown field(s) colour"),
    ('{"id": "a", "prompt": "x", "seed": "one"}\n', "line 1: seed must be an integer"),
    ("\n\n", "no prompts"),
])
def test_bad_prompt_files_are_rejected_with_line_numbers(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(PromptsFileError) as e:
        read_prompts(p)
    assert message in str(e.value)


def test_bad_file_exits_nonzero_before_any_model_loads(capsys, tmp_path):
    """In this process, not marked ray: a job that started Ray here would fail the test (conftest.py)."""
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n{"id": "b", "prompt": "z", "size": "7x7"}\n')
    code, out, err = run_cli(capsys, "batch", "--prompts", str(p), "--out", str(tmp_path / "out"))
    assert code == 2
    assert "line 2: duplicate id" in err and "line 3: size" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
    with pytest.raises(ZImageError, match="--gpus"):
        ok = tmp_path / "ok.txt"
        ok.write_text("a cat\n")
        run(Namespace(**{**vars(_args(ok, tmp_path / "o")), "gpus": "x"}))


@pytest.fixture(scope="module")
def killed_then_rerun(tmp_path_factory):
    """The job as a user runs it (its own Ray, in the process it runs in), killed midway; then, with a torn last
    manifest line and a partial file left as a kill leaves them and a line added to the prompts meanwhile, run
    again to the end. One pair of runs, which the two tests below assert on: (the prompts file, the output
    directory, the prompts' count before the late line, what the killed run had finished, the rerun)."""
    tmp_path = tmp_path_factory.mktemp("killed")
    prompts = tmp_path / "prompts.jsonl"
    n = _prompts(prompts, 24, size="128x128")  # at least 9 GPU batches left when killed: ample time
    ink = write_lora(tmp_path / "ink", resolve("tiny").path, rank=4, seed=1).parent
    with open(prompts, "a") as f:  # a line with a LoRA adapter of the job's (--adapter), at the adapter's scale
        f.write(json.dumps({"id": "inked", "prompt": "prompt number 3", "seed": 1003, "size": "128x128",
                            "model": "ink"}) + "\n")
    n += 1
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "zimage_serve.batch", "--prompts", str(prompts), "--out", str(out), "--model", "tiny",
           "--batch-size", "2", "--gpus", "1", "--steps", "6", "--adapter", f"ink={ink}:0.7"]
    env = dict(os.environ, RAY_ADDRESS="")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 6:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = manifest.read_text().splitlines()
    done = len(lines)
    assert 0 < done < n, "the run was not killed midway"
    first_run = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # the kill may have torn the last line
            continue
        first_run[entry["id"]] = entry
    with open(manifest, "a") as f:
        f.write('{"id": "img-000", "prompt": "torn')  # a torn last line, as a kill during a write leaves
    (out / ".tmp-deadbeef-img-999.png").write_bytes(b"partial")
    with open(prompts, "a") as f:  # the file grew meanwhile
        f.write(json.dumps({"id": "late", "prompt": "a late prompt", "seed": 9, "size": "64x64"}) + "\n")
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return prompts, out, n, first_run, rerun


@pytest.mark.ray  # the job starts its own Ray, in the process it runs in
def test_kill_9_midway_then_rerun_ends_with_exactly_one_image_per_id_equal_to_stock(killed_then_rerun, stock_pipe, capsys):
    """The job as a user runs it: killed midway; rerun, with a line added meanwhile, it does the rest and the new
    line, keeping what was done; a third run has nothing to do."""
    prompts, out, n, first_run, r = killed_then_rerun
    manifest = out / "manifest.jsonl"
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{n + 1 - len(first_run)} to generate" in r.stderr, r.stderr[-2000:]
    after = _check_output(out, n + 1)
    assert {k: after[k] for k in first_run} == first_run  # what the killed run finished was kept, not redone
    m = after["img-003"]
    assert (m["seed"], m["size"], m["steps"]) == (1003, "128x128", 6)
    image = Image.open(out / m["file"]).convert("RGB")
    assert max_pixel_diff(image, stock_image(stock_pipe, "prompt number 3", 1003, 128, 128, steps=6)) <= 1
    late = Image.open(out / after["late"]["file"]).convert("RGB")
    assert max_pixel_diff(late, stock_image(stock_pipe, "a late prompt", 9, 64, 64, steps=6)) <= 1
    assert after["../../escape"]["file"].startswith("id-")  # never a path outside the output directory
    inked = after["inked"]
    assert (inked["model"], inked["lora_scale"]) == ("ink", 0.7) and "model" not in m
    # stock diffusers with the adapter, on a copy of the session's transformer (peft wraps the layers it adapts)
    stock = ZImagePipeline(**{**stock_pipe.components, "transformer": copy.deepcopy(stock_pipe.transformer)})
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(str(out.parent / "ink"), adapter_name="ink")
    stock.set_adapters(["ink"], [0.7])
    assert max_pixel_diff(Image.open(out / inked["file"]).convert("RGB"),
                          stock_image(stock, "prompt number 3", 1003, 128, 128, steps=6)) <= 1
    assert not (out.parent / "escape.png").exists()
    # a third run has nothing to do: it says so and returns before starting Ray (here, in this process)
    before = manifest.read_text()
    capsys.readouterr()
    adapter = [f"ink={out.parent / 'ink'}:0.7"]
    assert run(Namespace(**{**vars(_args(prompts, out, adapter=adapter)), "steps": 6})) == 0
    assert f"{n + 1} prompts: {n + 1} already done in {out}, 0 to generate" in capsys.readouterr().err
    assert manifest.read_text() == before


@pytest.mark.ray
def test_the_batch_job_prints_no_deprecation_and_no_line_twice(killed_then_rerun):
    """What a user reads (tests/test_startup_output.py's checks), in a real run of the job with its own local
    Ray: the rerun above, which resumes, then generates on one generator actor."""
    _, _, n, first_run, r = killed_then_rerun
    assert r.returncode == 0, r.stderr[-3000:]
    output = r.stdout + r.stderr
    assert "DeprecationWarning" not in output and "deprecated" not in output, output
    assert "concurrency" not in output, output
    assert "Failed to convert column" not in output, output  # the typed requests are pickled by design
    assert not repeated(output), repeated(output)
    assert sum(message(line).startswith("plan: ") for line in lines_of(output)) == 1, output  # one generator actor
    assert f"wrote {n + 1 - len(first_run)} images" in output, output
    # stderr a pipe: no bar redraws, ours or the libraries' in any actor (Ray forwards theirs); a count line at the end
    assert "\r" not in r.stderr and "%|" not in r.stderr, r.stderr[-3000:]
    done = n + 1 - len(first_run)
    assert re.search(rf"^batch: {done}/{done} images in [\dms.]+ \([\d.]+ img/s\)$", r.stderr, re.M), r.stderr[-3000:]


def test_batch_gpu_speedups_are_on_by_default_and_can_be_turned_off():
    from zimage_serve.cli import _parser

    args = _parser().parse_args(["batch", "--prompts", "p.jsonl", "--out", "o"])
    assert args.compile is True and args.fp8 == "off"
    args = _parser().parse_args(["batch", "--prompts", "p.jsonl", "--out", "o", "--no-compile", "--fp8"])
    assert args.compile is False and args.fp8 == "on"
    assert _parser().parse_args(["batch", "--prompts", "p.jsonl", "--out", "o", "--fp8", "auto"]).fp8 == "auto"


def test_the_encoder_stage_gets_the_cpus_and_dtype_it_is_given():
    import numpy as np
    import torch

    assert encoder_cpus(None, cluster_cpus=16, generator_actors=1) == 7  # the H100 host: 1 GPU, 16 cores
    assert encoder_cpus(None, cluster_cpus=2, generator_actors=1) == 1
    assert encoder_cpus(None, cluster_cpus=256, generator_actors=8) == 16
    assert encoder_cpus(None, cluster_cpus=64, generator_actors=4, node_cpus=8) == 8  # one actor lives on one node
    assert encoder_cpus(3, cluster_cpus=2, generator_actors=1) == 3
    threads = torch.get_num_threads()
    try:
        requests = [GenerationRequest("a red fox", seed=0), GenerationRequest("a lighthouse at dusk, oil painting", seed=1)]
        items = [Item(id=str(i), prompt=r.prompt, seed=r.seed, width=r.width, height=r.height, steps=r.steps)
                 for i, r in enumerate(requests)]
        batch = batch_of([row(i, r) for i, r in zip(items, requests)])
        exact = EncodeStage("tiny", threads=1, dtype="float32")
        assert torch.get_num_threads() == 1 and exact.dtype == torch.float32
        fast = EncodeStage("tiny", threads=2, dtype="bfloat16")
        assert torch.get_num_threads() == 2 and fast.dtype == torch.bfloat16
        for a, b in zip(exact(batch)["embeds"], fast(batch)["embeds"]):
            assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
            assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
    finally:
        torch.set_num_threads(threads)


def test_bad_encoder_cpus_is_refused_before_ray_starts(tmp_path):
    ok = tmp_path / "ok.txt"
    ok.write_text("a cat\n")
    with pytest.raises(ZImageError, match="--encoder-cpus must be at least 1, got 0"):
        run(Namespace(**{**vars(_args(ok, tmp_path / "o")), "encoder_cpus": 0}))


def test_blocks_hold_one_gpu_batch_up_to_a_cap_then_grow():
    from zimage_serve.batch.job import MAX_BLOCKS, block_count

    assert block_count(40, 4) == 10 and block_count(3, 4) == 1
    assert block_count(4 * MAX_BLOCKS, 4) == MAX_BLOCKS and block_count(1_000_000, 4) == MAX_BLOCKS
