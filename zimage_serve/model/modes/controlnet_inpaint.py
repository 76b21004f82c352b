"""ControlNet inpainting: ``ZImageControlNetInpaintPipeline`` (a 2.x Union ControlNet) on the engine's modules, from
each job's seed noise, the input image outside the mask and the control image as the ControlNet's conditions."""

from __future__ import annotations

import torch

from .edit_inputs import control_images, init_images, masks
from .text_to_image import noise


def denoise(engine, jobs, embeds: list, negative: list | None) -> torch.Tensor:
    from diffusers import ZImageControlNetInpaintPipeline  # only where a ControlNet runs (see controlnet.py)

    r = jobs[0].request
    pipe = engine.pipeline(ZImageControlNetInpaintPipeline)
    with engine.blocks_one_by_one():
        return pipe(
            image=init_images(pipe, jobs), mask_image=masks(jobs), control_image=control_images(jobs),
            controlnet_conditioning_scale=r.control_scale, prompt_embeds=embeds, negative_prompt_embeds=negative,
            latents=torch.cat([noise(engine, j.request) for j in jobs]), height=r.height, width=r.width,
            num_inference_steps=r.steps, guidance_scale=r.guidance_scale, output_type="latent", **engine.step_hooks(jobs),
        ).images
