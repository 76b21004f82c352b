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


def test_one_compiled_attention_graph_serves_batch_one_and_two(transformer):
    """The fused processor takes q, k, v and RoPE's cos/sin without views of non-contiguous tensors: compiled with
    a dynamic batch under backed_size_oblivious (accel.compile_setup sets it), batch 1 reuses batch 2's graph
    instead of compiling its own (a warm replica's start loads one graph fewer per block kind), with the eager
    result."""
    import torch._dynamo
    import torch._dynamo.utils
    from torch.fx.experimental import _config as fx_config

    fused = copy.deepcopy(transformer)
    fuse_projections(fused)
    attention = fused.layers[0].attention
    heads, dim = attention.heads, fused.config.dim

    def inputs(batch, seed=0):
        g = torch.Generator().manual_seed(seed)
        freqs = torch.polar(torch.ones(batch, 24, dim // heads // 2), torch.randn(batch, 24, dim // heads // 2,
                                                                                  generator=g))
        return torch.randn(batch, 24, dim, generator=g), freqs

    torch._dynamo.reset()
    compiled = torch.compile(attention, fullgraph=True, dynamic=True)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # (other tests of this process compiled too)
    try:
        with fx_config.patch(backed_size_oblivious=True), torch.inference_mode():
            outs = {}
            for batch in (2, 1):
                x, freqs = inputs(batch)
                outs[batch] = (compiled(x, freqs_cis=freqs), attention(x, freqs_cis=freqs))
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    finally:
        torch._dynamo.reset()
    assert graphs == 1
    for got, expected in outs.values():
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
