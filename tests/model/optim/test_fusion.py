"""Fused projections against diffusers' own blocks, on the tiny model's real classes."""

import copy

import pytest
import torch

from zimage_serve.model.optim.fusion import FusedAttnProcessor, FusedFeedForward, fuse_projections


@pytest.fixture(scope="module")
def transformer(tiny_path):
    from diffusers import ZImageTransformer2DModel

    model = ZImageTransformer2DModel.from_pretrained(tiny_path, subfolder="transformer", dtype=torch.float32)
    return model.eval().requires_grad_(False)


def _forward(model, seed=0, caption_tokens=(7,), size=32):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(model.config.in_channels, 1, size // 8, size // 8, generator=g) for _ in caption_tokens]
    caps = [torch.randn(n, model.config.cap_feat_dim, generator=g) for n in caption_tokens]
    t = torch.full((len(caption_tokens),), 0.5)
    with torch.inference_mode():
        return torch.stack(model(latents, t, caps, return_dict=False)[0])


@pytest.mark.parametrize("caption_tokens", [(7,), (5, 40)])  # one image; a batch whose captions need a mask
def test_fused_model_equals_diffusers(transformer, caption_tokens):
    fused = copy.deepcopy(transformer)
    blocks = len(transformer.layers) + len(transformer.noise_refiner) + len(transformer.context_refiner)
    assert fuse_projections(fused) == blocks
    expected = _forward(transformer, caption_tokens=caption_tokens)
    got = _forward(fused, caption_tokens=caption_tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_fusion_frees_the_old_weights(transformer):
    fused = copy.deepcopy(transformer)
    before = sum(p.numel() for p in fused.parameters())
    fuse_projections(fused)
    assert sum(p.numel() for p in fused.parameters()) == before
    block = fused.layers[0]
    assert not hasattr(block.attention, "to_q") and isinstance(block.attention.processor, FusedAttnProcessor)
    assert isinstance(block.feed_forward, FusedFeedForward)
    assert fuse_projections(fused) == 0  # already fused: nothing left to do
