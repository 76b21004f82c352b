"""The lean VAE decoder and encoder: the same image (latents) as diffusers', with fewer or smaller intermediates."""

import pytest
import torch
from torch.nn import functional as F

from zimage_serve.model.optim.lean_vae import conv_in_bands, lean_decoder, lean_encoder, upsample_conv_in_bands


@pytest.mark.parametrize("h,w,band", [(7, 5, 40), (8, 8, 1), (3, 9, 10_000), (5, 4, 64)])
def test_banded_upsample_conv_equals_the_whole(h, w, band):
    g = torch.Generator().manual_seed(h * w)
    x = torch.randn(2, 3, h, w, generator=g)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(upsample_conv_in_bands(x, conv, band_elements=band), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("h,w,band", [(7, 5, 30), (8, 8, 1), (3, 9, 10_000), (6, 4, 24)])
def test_banded_conv_equals_the_whole(h, w, band):
    g = torch.Generator().manual_seed(h + w)
    x = torch.randn(1, 3, h, w, generator=g)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    torch.testing.assert_close(conv_in_bands(x, conv, band_elements=band), conv(x), rtol=1e-5, atol=1e-6)


def test_lean_decoder_decodes_the_same_image(tiny_path, monkeypatch):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_path, subfolder="vae", dtype=torch.float32).eval()
    z = torch.randn(1, vae.config.latent_channels, 24, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = vae.decode(z).sample
        changed = lean_decoder(vae, band_elements=512)  # several bands at this small size
        interpolated_rows = []
        interpolate = F.interpolate
        monkeypatch.setattr(F, "interpolate", lambda x, **kw: interpolated_rows.append(x.shape[2]) or interpolate(x, **kw))
        got = vae.decode(z).sample
    assert changed["group_norm_silu"] == 2 * sum(1 for _ in vae.decoder.modules() if type(_).__name__ == "ResnetBlock2D") + 1
    assert changed["banded_upsamplers"] == len(vae.config.block_out_channels) - 1
    assert changed["banded_convs"] > 2 * len(vae.decoder.up_blocks)
    assert len(interpolated_rows) > changed["banded_upsamplers"] and max(interpolated_rows) < z.shape[2]  # in bands
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_lean_encoder_encodes_bit_for_bit_the_same_latents(tiny_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_path, subfolder="vae", dtype=torch.float32).eval()
    x = torch.rand(1, 3, 48, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        expected = vae.encode(x).latent_dist.parameters
        changed = lean_encoder(vae)
        got = vae.encode(x).latent_dist.parameters
    resnets = sum(1 for m in vae.encoder.modules() if type(m).__name__ == "ResnetBlock2D")
    assert changed == {"encoder_group_norm_silu": 2 * resnets + 1}
    assert torch.equal(got, expected)  # the same operations in the same order: exact
