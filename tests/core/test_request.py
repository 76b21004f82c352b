"""GenerationRequest, the one typed request: the texts to encode, the split into images, what may share a batch."""

import pickle

import pytest

from zimage_serve.core.errors import InvalidInput

from zimage_serve.core.pixels import Pixels
from zimage_serve.core.request import GenerationRequest

PX = Pixels("RGB", 2, 2, bytes(12))  # a decoded upload, as core.images makes one
MASK = Pixels("L", 2, 2, bytes(4))


def test_texts_are_the_prompt_and_the_negative_prompt_only_when_guided():
    plain = GenerationRequest("a fox", seed=1, negative_prompt="blurry")
    assert plain.texts == ("a fox",) and not plain.guided
    guided = plain.replace(guidance_scale=4.0)
    assert guided.texts == ("a fox", "blurry") and guided.guided
    assert GenerationRequest("a fox", seed=1, guidance_scale=2.0).texts == ("a fox", "")  # stock's default negative


def test_images_split_n_with_consecutive_seeds_and_keep_everything_else():
    request = GenerationRequest("a fox", seed=41, n=3, width=512, height=256, output_format="jpeg", quality=80)
    images = request.images()
    assert [i.seed for i in images] == [41, 42, 43] and all(i.n == 1 for i in images)
    assert {(i.prompt, i.size, i.output_format, i.quality) for i in images} == {("a fox", "512x256", "jpeg", 80)}


def test_batch_key_separates_what_cannot_share_a_transformer_batch():
    base = GenerationRequest("a fox", seed=1)
    assert base.batch_key == base.replace(prompt="a tram", seed=9, negative_prompt="x").batch_key
    for change in ({"width": 512}, {"steps": 4}, {"guidance_scale": 1.5}, {"adapter": "ink"},
                   {"init_image": PX, "strength": 0.6}, {"control_image": PX},
                   {"control_image": PX, "control_scale": 1.2}):
        assert base.replace(**change).batch_key != base.batch_key, change


@pytest.mark.parametrize("fields, mode", [({}, "text-to-image"), ({"init_image": PX}, "image-to-image"),
                                          ({"init_image": PX, "mask_image": MASK}, "inpaint"),
                                          ({"control_image": PX}, "controlnet"),
                                          ({"init_image": PX, "mask_image": MASK, "control_image": PX},
                                           "controlnet-inpaint")])
def test_mode_follows_the_images_given(fields, mode):
    assert GenerationRequest("a fox", seed=1, **fields).mode == mode


def test_control_requests_get_diffusers_scale_and_refuse_what_no_pipeline_runs():
    assert GenerationRequest("a fox", seed=1, control_image=PX).control_scale == 0.75
    inpaint = GenerationRequest("a fox", seed=1, control_image=PX, init_image=PX, mask_image=MASK)
    assert inpaint.strength is None  # ControlNet inpainting generates from noise
    with pytest.raises(InvalidInput, match="needs a mask") as e:
        GenerationRequest("a fox", seed=1, control_image=PX, init_image=PX)
    assert e.value.param == "control_image"
    with pytest.raises(InvalidInput, match="strength does not apply"):
        GenerationRequest("a fox", seed=1, control_image=PX, init_image=PX, mask_image=MASK, strength=0.5)
    with pytest.raises(InvalidInput, match="needs a control_image"):
        GenerationRequest("a fox", seed=1, control_scale=1.0)


def test_an_edit_gets_its_modes_default_strength_and_a_mask_needs_an_image():
    assert GenerationRequest("a fox", seed=1, init_image=PX).strength == 0.6  # ZImageImg2ImgPipeline's
    assert GenerationRequest("a fox", seed=1, init_image=PX, mask_image=MASK).strength == 1.0  # the inpaint one's
    assert GenerationRequest("a fox", seed=1, init_image=PX, strength=0.3).strength == 0.3
    assert GenerationRequest("a fox", seed=1).strength is None
    assert GenerationRequest("a fox", seed=1, init_image=PX).batch_key == \
        GenerationRequest("a tram", seed=2, init_image=Pixels("RGB", 2, 2, bytes([7]) * 12), strength=0.6).batch_key
    with pytest.raises(ValueError, match="mask_image needs an init_image"):
        GenerationRequest("a fox", seed=1, mask_image=MASK)


def test_the_encoders_copy_carries_the_texts_not_the_images():
    edit = GenerationRequest("a fox", seed=1, init_image=PX, mask_image=MASK, guidance_scale=2.0)
    light = edit.without_images()
    assert light.texts == edit.texts and light.init_image is None and light.mask_image is None


def test_it_is_frozen_and_crosses_processes_intact():
    request = GenerationRequest("a fox", seed=1, init_image=PX, enqueued_at=12.5)
    with pytest.raises(AttributeError):
        request.seed = 2
    assert pickle.loads(pickle.dumps(request)) == request
