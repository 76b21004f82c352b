"""What the edit and ControlNet modes share: the input images at the size of the edit, masks, control images, and
the seeds' generators."""

from __future__ import annotations

import torch


def init_images(pipe, jobs) -> list:
    """Each job's input image as RGB at the request's size: resized with the pipeline's own
    ``image_processor.resize`` when the input is of another size (the ingress chose the size: the input's,
    rounded down to multiples of 16 and within the bounds, or the one asked for)."""
    images = []
    for job in jobs:
        r = job.request
        image = r.init_image.image()  # decoded (and bounded) where it arrived
        if image.size != (r.width, r.height):
            image = pipe.image_processor.resize(image, r.height, r.width)
        images.append(image)
    return images


def masks(jobs) -> list:
    """Each job's mask as diffusers reads one (white = repaint); the pipeline resizes it to the edit's size."""
    return [job.request.mask_image.image() for job in jobs]


def control_images(jobs) -> list:
    """Each job's control image (RGB) as it arrived; the ControlNet pipelines resize it to the request's size."""
    return [job.request.control_image.image() for job in jobs]


def generators(jobs) -> list:
    """One CPU generator per image, seeded with its seed: what the stock pipeline draws from
    ``generator=torch.Generator("cpu").manual_seed(seed)`` (the VAE's sample of the input, then the noise)."""
    return [torch.Generator("cpu").manual_seed(job.request.seed) for job in jobs]
