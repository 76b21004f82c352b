"""Image to image: ``ZImageImg2ImgPipeline`` on the engine's modules."""

from __future__ import annotations

import torch
from diffusers import ZImageImg2ImgPipeline

from .edit_inputs import generators, init_images


def denoise(engine, jobs, embeds: list, negative: list | None) -> torch.Tensor:
    r = jobs[0].request
    pipe = engine.pipeline(ZImageImg2ImgPipeline)
    return pipe(
        image=init_images(pipe, jobs), strength=r.strength, prompt_embeds=embeds, negative_prompt_embeds=negative,
        generator=generators(jobs), height=r.height, width=r.width, num_inference_steps=r.steps,
        guidance_scale=r.guidance_scale, output_type="latent", **engine.step_hooks(jobs),
    ).images
