"""Previews of an image while it is denoised: the latents projected to RGB, never a VAE decode.

Z-Image's latents are the Flux VAE's 16 channels (normalized: ``(z - shift) x scale``), so a fixed linear map of
the 16 channels to RGB (ComfyUI's ``latent_formats.Flux`` factors, fitted to that VAE) gives a recognisable image
at 1/8 of the size, for a few thousand multiply-adds a latent pixel. Mid-way through denoising the latents are
still part noise; the preview shows the flow-matching estimate of the clean image instead,
``x0 = x_t - sigma_t v`` with ``v`` from the last step's two latents (``(x_t - x_prev) / (sigma_t - sigma_prev)``).

Where the previews fall is ``core.request.preview_steps``'s to say; :func:`to_rgb` makes one preview image.
"""

from __future__ import annotations

import torch
from PIL import Image

# ComfyUI's latent_formats.Flux: RGB = latents @ FACTORS + BIAS, in [-1, 1]
FLUX_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
)
FLUX_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
UPSCALE = 2  # a preview is 1/4 of the image's side (the latents are 1/8)


def clean_estimate(latents: torch.Tensor, previous: torch.Tensor | None, sigma: float, sigma_previous: float) -> torch.Tensor:
    """The flow-matching estimate of the clean latents from the last step (``latents`` at ``sigma``, ``previous``
    at ``sigma_previous``); the latents themselves when there is no previous step to tell the velocity."""
    if previous is None or sigma_previous == sigma:
        return latents
    velocity = (latents - previous) / (sigma - sigma_previous)
    return latents - sigma * velocity


def to_rgb(latents: torch.Tensor) -> Image.Image:
    """One preview image from one image's latents ``[16, h, w]`` (any device): RGB at twice the latents' size."""
    factors = torch.tensor(FLUX_RGB_FACTORS, device=latents.device, dtype=torch.float32)
    bias = torch.tensor(FLUX_RGB_BIAS, device=latents.device, dtype=torch.float32)
    channels = latents.shape[0]
    if channels != factors.shape[0]:  # another VAE: its first three channels, as they are
        rgb = latents[:3].float().permute(1, 2, 0)
    else:
        rgb = torch.einsum("chw,cr->hwr", latents.float(), factors) + bias
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    image = Image.fromarray(pixels)
    return image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.BILINEAR)
