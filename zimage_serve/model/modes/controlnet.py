"""ControlNet: ``ZImageControlNetPipeline`` on the engine's modules and its ControlNet, from each job's seed noise;
each job's control image is resized to the request's size by the pipeline (as stock diffusers does)."""

from __future__ import annotations

import torch

from .edit_inputs import control_images
from .text_to_image import noise


def denoise(engine, jobs, embeds: list, negative: list | None) -> torch.Tensor:
    from diffusers import ZImageControlNetPipeline  # only where a ControlNet runs (diffusers' controlnets: 1.6 s to import)

    r = jobs[0].request
    pipe = engine.pipeline(ZImageControlNetPipeline)
    with engine.blocks_one_by_one():
        return pipe(
            control_image=control_images(jobs), controlnet_conditioning_scale=r.control_scale,
            prompt_embeds=embeds, negative_prompt_embeds=negative,
            latents=torch.cat([noise(engine, j.request) for j in jobs]), height=r.height, width=r.width,
            num_inference_steps=r.steps, guidance_scale=r.guidance_scale, output_type="latent", **engine.step_hooks(jobs),
        ).images
