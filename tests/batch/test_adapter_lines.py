"""LoRA adapters in a batch job: ``--adapter NAME=SOURCE[:SCALE]`` and prompts-file lines that name one in ``model``
(with ``lora_scale``), checked with the file; the GPU stage holds the job's adapters and each line's image equals
stock diffusers' load_lora_weights + set_adapters at that scale; an adapter that can't be read is its lines'
error in the manifest while the rest goes on. The stages run here, in this process, as Ray Data's actors run
them; the job's driver over Ray is test_job.py's."""

import json

import pytest
import torch
from diffusers import ZImagePipeline
from PIL import Image

from conftest import max_pixel_diff, run_cli, stock_image
from zimage_serve.arguments import parse_adapters
from zimage_serve.batch.prompts_file import PromptsFileError, read_prompts
from zimage_serve.batch.stages import EncodeStage, GenerateStage, WriteStage, batch_of, row
from zimage_serve.core.errors import InvalidInput
from zimage_serve.testing.lora import write_lora


@pytest.fixture(scope="module")
def ink(tiny_path, tmp_path_factory):
    return write_lora(tmp_path_factory.mktemp("loras") / "ink", tiny_path, rank=4, seed=1).parent


def test_adapter_lines_are_checked_with_the_file(tmp_path):
    for line, says in [({"id": "a", "prompt": "x", "model": "oil"}, "model 'oil' is not an adapter of this job; adapters: ink"),
                       ({"id": "a", "prompt": "x", "lora_scale": 0.5}, "lora_scale needs a model"),
                       ({"id": "a", "prompt": "x", "model": "ink", "lora_scale": 2.5}, "lora_scale must be from 0 to 2"),
                       ({"id": "a", "prompt": "x", "model": "ink", "lora_scale": "1"}, "lora_scale must be a number"),
                       ({"id": "a", "prompt": "x", "model": 3}, "model must be a string")]:
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps(line) + "\n")
        with pytest.raises(PromptsFileError, match=f"line 1: {says}"):
            read_prompts(path, adapters=frozenset({"ink"}))
    path.write_text(json.dumps({"id": "a", "prompt": "x", "model": "ink"}) + "\n")
    with pytest.raises(PromptsFileError, match="adapters: none \\(give them with --adapter NAME=SOURCE\\)"):
        read_prompts(path)
    path.write_text(json.dumps({"id": "a", "prompt": "x", "model": ""}) + "\n")  # "" is the base model
    assert read_prompts(path)[0].request().adapter is None


def test_a_bad_adapter_argument_is_one_line_before_ray_starts(capsys, tmp_path, ink, monkeypatch):
    """In this process, not marked ray: a job that started Ray here would fail the test (conftest.py)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "x", "model": "ink"}) + "\n")
    for adapter, says in [(f"ink={tmp_path / 'nowhere'}", "does not exist"), ("ink", "expected NAME=SOURCE"),
                          (f"ink={ink}:3", "must be from 0 to 2")]:
        code, out, err = run_cli(capsys, "batch", "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                                 "--adapter", adapter)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    with pytest.raises(InvalidInput, match="given twice"):
        parse_adapters([f"ink={ink}", f"ink={ink}:0.5"])
    with pytest.raises(InvalidInput, match="~nosuchuser-zimage"):  # one line, not the home lookup's traceback
        parse_adapters(["ink=~nosuchuser-zimage/x.safetensors"])
    relative = ink.relative_to(ink.parent.parent)  # the actors may run elsewhere: they get the absolute path
    monkeypatch.chdir(ink.parent.parent)
    assert parse_adapters([f"ink={relative}:0.5"]) == {"ink": {"source": str(ink), "scale": 0.5}}


def test_the_stages_run_each_line_with_its_adapter_as_stock_does_and_a_broken_one_fails_only_its_lines(
        tmp_path, tiny_path, ink):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file at all")
    adapters = parse_adapters([f"ink={ink}:0.8"])
    adapters["bad"] = {"source": str(broken)}  # as a file changed after the driver's check leaves it
    lines = [{"id": "base", "prompt": "a paper boat", "seed": 3},
             {"id": "inked", "prompt": "a paper boat", "seed": 3, "model": "ink"},  # the adapter's scale, 0.8
             {"id": "strong", "prompt": "a paper boat", "seed": 3, "model": "ink", "lora_scale": 1.7},
             {"id": "broken", "prompt": "a paper boat", "seed": 3, "model": "bad"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = read_prompts(path, size="64x64", steps=4, adapters=frozenset(adapters))
    requests = [i.request() for i in items]
    assert [(r.adapter, r.adapter_scale) for r in requests] == [(None, None), ("ink", None), ("ink", 1.7), ("bad", None)]
    batch = batch_of([row(i, r) for i, r in zip(items, requests)])
    encoded = EncodeStage("tiny", threads=1, dtype="float32")(batch)
    stage = GenerateStage("tiny", batch_size=4, policy="auto", max_side=64, adapters=adapters)
    assert list(stage.adapter_errors) == ["bad"]
    written = WriteStage(str(tmp_path / "out"))(stage(encoded))
    rows = {rid: (file, error, model, scale) for rid, file, error, model, scale in
            zip(written["id"], written["file"], written["error"], written["model"], written["lora_scale"])}
    assert rows["base"] == ("base.png", "", "", 0.0)
    assert rows["inked"] == ("inked.png", "", "ink", 0.8) and rows["strong"] == ("strong.png", "", "ink", 1.7)
    assert rows["broken"][:3] == ("", stage.adapter_errors["bad"], "bad") and "not a readable safetensors file" in rows["broken"][1]

    stock = ZImagePipeline.from_pretrained(tiny_path, dtype=torch.float32)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(str(ink), adapter_name="ink")
    image = lambda rid: Image.open(tmp_path / "out" / f"{rid}.png").convert("RGB")
    for rid, scale in (("inked", 0.8), ("strong", 1.7)):
        stock.set_adapters(["ink"], [scale])
        assert max_pixel_diff(image(rid), stock_image(stock, "a paper boat", 3, 64, 64, steps=4)) <= 1, rid
    stock.disable_lora()
    assert max_pixel_diff(image("base"), stock_image(stock, "a paper boat", 3, 64, 64, steps=4)) <= 1
    assert max_pixel_diff(image("inked"), image("base")) > 0 and max_pixel_diff(image("inked"), image("strong")) > 0
