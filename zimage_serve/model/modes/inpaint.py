"""Inpainting: ``ZImageInpaintPipeline`` on the engine's modules: the input is kept where the mask is black."""

from __future__ import annotations

import torch
from diffusers import ZImageInpaintPipeline

from .edit_inputs import generators, init_images, masks


def denoise(engine, jobs, embeds: list, negative: list | None) -> torch.Tensor:
    r = jobs[0].request
    pipe = engine.pipeline(ZImageInpaintPipeline)
    return pipe(
        image=init_images(pipe, jobs), mask_image=masks(jobs), strength=r.strength, prompt_embeds=embeds,
        negative_prompt_embeds=negative, generator=generators(jobs), height=r.height, width=r.width,
        num_inference_steps=r.steps, guidance_scale=r.guidance_scale, output_type="latent", **engine.step_hooks(jobs),
    ).images
