"""Text to image: ``ZImagePipeline`` from each job's seed noise (the stock pipeline's, for ``seed``)."""

from __future__ import annotations

import torch


def noise(engine, request) -> torch.Tensor:
    """The initial latents ``ZImagePipeline`` draws with ``generator=torch.Generator("cpu").manual_seed(seed)``."""
    generator = torch.Generator("cpu").manual_seed(request.seed)
    pipe = engine.pipe
    return pipe.prepare_latents(1, pipe.transformer.in_channels, request.height, request.width, torch.float32,
                                engine.device, generator)


def denoise(engine, jobs, embeds: list, negative: list | None) -> torch.Tensor:
    r = jobs[0].request
    return engine.pipe(
        prompt_embeds=embeds, negative_prompt_embeds=negative, latents=torch.cat([noise(engine, j.request) for j in jobs]),
        height=r.height, width=r.width, num_inference_steps=r.steps, guidance_scale=r.guidance_scale,
        output_type="latent", **engine.step_hooks(jobs),
    ).images
