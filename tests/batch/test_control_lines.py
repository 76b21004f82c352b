"""ControlNet lines of a batch job's prompts file: ``control_image`` (with ``controlnet_conditioning_scale`` and
``control_preprocess``), checked with the file; the encoder stage reads the control image, the GPU stage holds the
job's ``--controlnet``; the images equal stock ZImageControlNetPipeline / ZImageControlNetInpaintPipeline. The stages
run here, in this process, as Ray Data's actors run them."""

import json

import pytest
import torch
from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetModel, ZImageControlNetPipeline
from PIL import Image

from conftest import edges, max_pixel_diff, picture, square_mask
from zimage_serve.batch.prompts_file import PromptsFileError, read_prompts
from zimage_serve.batch.stages import EncodeStage, GenerateStage, WriteStage, batch_of, row
from zimage_serve.core.control import canny


def test_control_lines_are_checked_with_the_file(tmp_path):
    for line, says, controlnet in [
            ({"control_image": "c.png"}, "control_image needs a ControlNet: give the job one with --controlnet", False),
            ({"controlnet_conditioning_scale": 1.0}, "controlnet_conditioning_scale and control_preprocess need a control_image", True),
            ({"control_image": "c.png", "controlnet_conditioning_scale": 3}, "controlnet_conditioning_scale must be between 0 and 2", True),
            ({"control_image": "c.png", "control_preprocess": "hed"}, "control_preprocess must be one of none, canny", True),
            ({"control_image": "c.png", "image": "i.png"}, "control_image with an image needs a mask", True),
            ({"control_image": "c.png", "image": "i.png", "mask": "m.png", "strength": 0.5}, "strength does not apply", True)]:
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps({"id": "a", "prompt": "x", **line}) + "\n")
        with pytest.raises(PromptsFileError, match=f"line 1: {says}"):
            read_prompts(path, controlnet=controlnet)


def test_the_stages_make_control_lines_equal_to_stock(tmp_path, tiny_path, tiny_controlnets):
    edges().save(tmp_path / "edges.png")
    picture().save(tmp_path / "in.png")
    square_mask().save(tmp_path / "mask.png")
    square_mask().convert("RGB").save(tmp_path / "square.png")
    lines = [{"id": "lines", "prompt": "a barn", "seed": 3, "control_image": "edges.png",
              "controlnet_conditioning_scale": 1.2},
             {"id": "canny", "prompt": "a barn", "seed": 4, "control_image": "square.png", "control_preprocess": "canny"},
             {"id": "fill", "prompt": "a window", "seed": 5, "image": "in.png", "mask": "mask.png",
              "control_image": "edges.png"},
             {"id": "missing", "prompt": "x", "control_image": "nowhere.png"},
             {"id": "plain", "prompt": "a cat", "seed": 6}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = read_prompts(path, size="64x64", controlnet=True)
    encoded = EncodeStage("tiny", threads=1, dtype="float32")(batch_of([row(i, i.request()) for i in items]))
    errors = dict(zip(encoded["id"], encoded["error"]))
    assert errors["missing"].startswith("can't read control_image") and not errors["lines"]
    stage = GenerateStage("tiny", batch_size=4, policy="auto", max_side=64, controlnet=str(tiny_controlnets["2.1"]))
    WriteStage(str(tmp_path / "out"))(stage(encoded))

    model = ZImageControlNetModel.from_pretrained(tiny_controlnets["2.1"])
    from diffusers import ZImagePipeline

    base = ZImagePipeline.from_pretrained(tiny_path, dtype=torch.float32)

    def stock(cls, seed, prompt, **kw):
        pipe = cls(controlnet=model, **base.components)
        pipe.set_progress_bar_config(disable=True)
        return pipe(prompt=prompt, height=64, width=64, num_inference_steps=8, guidance_scale=0.0,
                    generator=torch.Generator("cpu").manual_seed(seed), **kw).images[0]

    out = tmp_path / "out"
    made = lambda name: Image.open(out / f"{name}.png").convert("RGB")
    assert max_pixel_diff(made("lines"), stock(ZImageControlNetPipeline, 3, "a barn", control_image=edges(),
                                               controlnet_conditioning_scale=1.2)) <= 1
    assert max_pixel_diff(made("canny"), stock(ZImageControlNetPipeline, 4, "a barn",
                                               control_image=canny(square_mask().convert("RGB")))) <= 1
    assert max_pixel_diff(made("fill"), stock(ZImageControlNetInpaintPipeline, 5, "a window", image=picture(),
                                              mask_image=square_mask(), control_image=edges())) <= 1
    assert (out / "plain.png").exists() and not (out / "missing.png").exists()


def test_inpainting_lines_with_a_1_0_controlnet_are_refused_before_the_job_starts(tmp_path, tiny_controlnets):
    from argparse import Namespace

    from zimage_serve.batch.job import run
    from zimage_serve.core.errors import ZImageError

    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "x", "image": "i.png", "mask": "m.png",
                                "control_image": "c.png"}) + "\n")
    args = Namespace(prompts=str(path), out=str(tmp_path / "out"), model="tiny", size="64x64", steps=8, seed=0,
                     batch_size=4, gpus="1", format="png", policy="auto", compile=True, fp8="off", encoder_cpus=None,
                     encoder_dtype="float32", verify=False, controlnet=str(tiny_controlnets["1.0"]))
    with pytest.raises(ZImageError, match="line 1 .* needs a 2.x Union ControlNet"):
        run(args)
