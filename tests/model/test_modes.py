"""The edit modes (model/modes) against stock ZImageImg2ImgPipeline / ZImageInpaintPipeline built from the same
tiny checkpoint's components, pixel for pixel, solo and batched with other modes."""


import pytest
import torch
from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline
from PIL import Image

from conftest import max_pixel_diff, picture, png, square_mask
from zimage_serve.core.images import with_edit_inputs
from zimage_serve.core.request import GenerationRequest
from zimage_serve.model.engine import Engine, Job
from zimage_serve.model.planner import Workload, make_plan
from zimage_serve.model.sizes import sizes_of

PROMPT = "a red barn in snow"


@pytest.fixture(scope="module")
def engine(tiny_source):
    e = Engine.load(tiny_source, make_plan(sizes_of(tiny_source), None, Workload(128, 128, 4)))
    e.set_progress(False)
    return e


@pytest.fixture(scope="module")
def stock(stock_pipe):
    pipes = {cls: cls(**stock_pipe.components) for cls in (ZImageImg2ImgPipeline, ZImageInpaintPipeline)}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


def stock_edit(pipe, image, seed, steps=8, **kw):
    return pipe(prompt=PROMPT, image=image, num_inference_steps=steps, guidance_scale=0.0,
                generator=torch.Generator("cpu").manual_seed(seed), **kw).images[0]


def edit_job(engine, seed, image: Image.Image, mask=None, strength=None, width=64, height=64, steps=8):
    """The job of an edit of ``image`` uploaded as a PNG (with ``mask``): decoded as every layer decodes one."""
    request = with_edit_inputs(GenerationRequest(PROMPT, seed=seed, steps=steps, strength=strength), png(image),
                               png(mask) if mask is not None else None, (width, height))
    return Job.of(request, engine.encode(list(request.texts)))


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_image_to_image_equals_stock(engine, stock, strength):
    ours = engine.generate([edit_job(engine, 5, picture(), strength=strength)]).images[0]
    ref = stock_edit(stock[ZImageImg2ImgPipeline], picture(), 5, strength=strength)
    assert max_pixel_diff(ours, ref) <= 1


def test_image_to_image_defaults_to_diffusers_strength_and_runs_steps_times_strength(engine, stock):
    calls = []
    hook = engine.pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        (ours,) = engine.generate([edit_job(engine, 2, picture(), steps=10)]).images
    finally:
        hook.remove()
    assert len(calls) == 6  # int(10 x 0.6): diffusers' default strength for image to image
    assert max_pixel_diff(ours, stock_edit(stock[ZImageImg2ImgPipeline], picture(), 2, steps=10)) <= 1


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_inpaint_equals_stock_and_keeps_the_unmasked_input(engine, stock, strength):
    ours = engine.generate([edit_job(engine, 9, picture(), square_mask(), strength=strength)]).images[0]
    ref = stock_edit(stock[ZImageInpaintPipeline], picture(), 9, mask_image=square_mask(), strength=strength)
    assert max_pixel_diff(ours, ref) <= 1
    plain = engine.generate([edit_job(engine, 9, picture(), strength=strength)]).images[0]
    assert max_pixel_diff(ours, plain) > 0  # the mask changed the image: this was inpainting


def test_an_openai_mask_repaints_its_transparent_pixels(engine, stock):
    """OpenAI's convention (transparent = repaint) is diffusers' white = repaint, inverted from the alpha."""
    rgba = picture().convert("RGBA")
    rgba.putalpha(Image.eval(square_mask(), lambda v: 255 - v))  # transparent in the square
    ours = engine.generate([edit_job(engine, 4, picture(), rgba)]).images[0]
    ref = stock_edit(stock[ZImageInpaintPipeline], picture(), 4, mask_image=square_mask(), strength=1.0)
    assert max_pixel_diff(ours, ref) <= 1


def test_an_input_of_another_size_is_resized_with_the_pipelines_resize(engine, stock):
    big = picture(100, 70, seed=3)
    ours = engine.generate([edit_job(engine, 6, big, strength=0.6, width=64, height=48)]).images[0]
    pipe = stock[ZImageImg2ImgPipeline]
    ref = stock_edit(pipe, pipe.image_processor.resize(big, 48, 64), 6, strength=0.6, height=48, width=64)
    assert ours.size == (64, 48) and max_pixel_diff(ours, ref) <= 1


def test_modes_never_share_a_batch_and_each_image_equals_its_solo_stock_image(engine, stock, stock_pipe):
    from conftest import stock_image

    jobs = [edit_job(engine, 1, picture(seed=1), strength=0.6), edit_job(engine, 2, picture(seed=2), strength=0.6),
            edit_job(engine, 3, picture(seed=3), square_mask(), strength=0.6),
            Job.of(GenerationRequest(PROMPT, seed=4, width=64, height=64), engine.encode([PROMPT]))]
    result = engine.generate(jobs)
    assert sorted(result.batch_sizes) == [1, 1, 2]
    refs = [stock_edit(stock[ZImageImg2ImgPipeline], picture(seed=1), 1, strength=0.6),
            stock_edit(stock[ZImageImg2ImgPipeline], picture(seed=2), 2, strength=0.6),
            stock_edit(stock[ZImageInpaintPipeline], picture(seed=3), 3, mask_image=square_mask(), strength=0.6),
            stock_image(stock_pipe, PROMPT, 4, 64, 64)]
    for image, ref in zip(result.images, refs):
        assert max_pixel_diff(image, ref) <= 1
