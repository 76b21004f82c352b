"""Edit lines of a batch job's prompts file: checked with the file, their inputs read by the encoder stage, a
missing or unreadable input that line's error (the other rows go on), and the images equal stock diffusers'.
The stages run here in this process, as Ray Data's actors run them (the job's driver over Ray: test_job.py)."""

import json

import numpy as np
import pytest
import torch
from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline
from PIL import Image

from conftest import max_pixel_diff
from zimage_serve.batch.prompts_file import PromptsFileError, read_prompts
from zimage_serve.batch.stages import EncodeStage, GenerateStage, WriteStage, batch_of, row


def picture(width=80, height=72, seed=0) -> Image.Image:
    rgb = np.random.RandomState(seed).randint(0, 255, (height, width, 3)).astype(np.uint8)
    return Image.fromarray(rgb).resize((width, height))


@pytest.fixture
def prompts(tmp_path):
    picture().save(tmp_path / "in.png")
    mask = np.zeros((72, 80), np.uint8)
    mask[20:50, 20:60] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    whole = (tmp_path / "in.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(whole[: len(whole) // 2])  # as a copy cut short leaves it
    lines = [{"id": "restyle", "prompt": "ink drawing", "seed": 3, "image": "in.png", "strength": 0.5},
             {"id": "repaint", "prompt": "a window", "seed": 4, "image": "in.png", "mask": "mask.png", "size": "64x64"},
             {"id": "missing", "prompt": "x", "image": "nowhere.png"},
             {"id": "broken", "prompt": "x", "image": "broken.png"},
             {"id": "plain", "prompt": "a cat", "seed": 5}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_edit_lines_are_checked_with_the_file(tmp_path):
    for line, says in [({"id": "a", "prompt": "x", "mask": "m.png"}, "need an image"),
                       ({"id": "a", "prompt": "x", "image": "i.png", "strength": 0}, "strength must be greater than 0"),
                       ({"id": "a", "prompt": "x", "image": 7}, "image must be a string")]:
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps(line) + "\n")
        with pytest.raises(PromptsFileError, match=says):
            read_prompts(path)


def test_the_stages_edit_report_bad_inputs_per_line_and_go_on(prompts, tmp_path, stock_pipe):
    items = read_prompts(prompts, size="64x64")
    assert items[0].image == str(prompts.parent / "in.png") and not items[0].sized and items[1].sized
    batch = batch_of([row(i, i.request()) for i in items])
    encoded = EncodeStage("tiny", threads=1, dtype="float32")(batch)
    errors = dict(zip(batch["id"], encoded["error"]))
    assert errors["missing"].startswith("can't read image") and "nowhere.png" in errors["missing"]
    assert "truncated or corrupt" in errors["broken"] and not errors["restyle"] and not errors["plain"]
    generated = GenerateStage("tiny", batch_size=4, policy="auto", max_side=128)(encoded)
    written = WriteStage(str(tmp_path / "out"))(generated)
    rows = {rid: (file, error, size) for rid, file, error, size in
            zip(written["id"], written["file"], written["error"], written["size"])}
    assert rows["missing"][:2] == ("", errors["missing"]) and rows["broken"][0] == ""
    assert rows["restyle"] == ("restyle.png", "", "80x64")  # the input's size, rounded down to 16s
    assert rows["repaint"] == ("repaint.png", "", "64x64") and rows["plain"] == ("plain.png", "", "64x64")

    def stock(cls, seed, **kw):
        pipe = cls(**stock_pipe.components)
        pipe.set_progress_bar_config(disable=True)
        return pipe(generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=8, guidance_scale=0.0,
                    **kw).images[0]

    resized = ZImageImg2ImgPipeline(**stock_pipe.components).image_processor.resize
    out = tmp_path / "out"
    ref = stock(ZImageImg2ImgPipeline, 3, prompt="ink drawing", image=resized(picture(), 64, 80), strength=0.5)
    assert max_pixel_diff(Image.open(out / "restyle.png").convert("RGB"), ref) <= 1
    ref = stock(ZImageInpaintPipeline, 4, prompt="a window", image=resized(picture(), 64, 64),
                mask_image=Image.open(prompts.parent / "mask.png"), height=64, width=64, strength=1.0)
    assert max_pixel_diff(Image.open(out / "repaint.png").convert("RGB"), ref) <= 1
