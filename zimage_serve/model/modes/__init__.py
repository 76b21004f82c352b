"""The generation modes, one file each (as diffusers has one pipeline file per mode), over the engine's shared
components: each turns a batch of jobs of one ``GenerationRequest.batch_key`` into latents; the engine
decodes them. A new mode is a new file here and an entry in :data:`MODES`.

- ``text_to_image``: ``ZImagePipeline`` from the seed's noise.
- ``image_to_image``: ``ZImageImg2ImgPipeline``: the input, VAE-encoded and noised to ``strength``, denoised
  for ``steps - int(steps - steps x strength)`` steps (diffusers' count: 5 of 8 at 0.6).
- ``inpaint``: ``ZImageInpaintPipeline``: as image-to-image, with the input kept outside the mask.
- ``controlnet``: ``ZImageControlNetPipeline``: text to image, guided by a control image through the ControlNet.
- ``controlnet_inpaint``: ``ZImageControlNetInpaintPipeline``: inpainting from noise with a 2.x ControlNet.

Each runs the diffusers pipeline of its mode, built from the engine's loaded modules (one transformer, VAE
and text encoder in memory whatever the mode; each mode its own scheduler, whose state is per call), so an
image equals stock diffusers' for the same seed, inputs and parameters.
"""

from __future__ import annotations

from . import controlnet, controlnet_inpaint, image_to_image, inpaint, text_to_image

MODES = {"text-to-image": text_to_image.denoise, "image-to-image": image_to_image.denoise,
         "inpaint": inpaint.denoise, "controlnet": controlnet.denoise, "controlnet-inpaint": controlnet_inpaint.denoise}
