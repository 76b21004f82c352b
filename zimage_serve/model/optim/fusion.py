"""Fused projections for the Z-Image DiT: the same arithmetic in fewer, larger kernels.

diffusers' blocks run q, k and v as three 3840x3840 matmuls, the SwiGLU's gate and up projections
as two, and RoPE in complex numbers (which Inductor can't generate code for, so it breaks the
fusion around it). ``fuse_projections`` rewrites each block in place:

- ``to_q``/``to_k``/``to_v`` become one ``to_qkv`` (one matmul three times as wide);
- ``w1``/``w3`` become one ``w13``;
- RoPE is computed on (cos, sin) pairs in float32, the formula complex multiplication uses, so
  Inductor fuses it with the q/k RMSNorm and the casts.

Weights are concatenated, not copied twice: the old matrices are freed as the new ones are made.
Results equal the unfused model's up to float rounding (tested on the tiny model).
"""

from __future__ import annotations

import sys

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_z_image import FeedForward, ZSingleStreamAttnProcessor
from torch import nn
from torch.nn import functional as F

CONTROLNET_MODULE = "diffusers.models.controlnets.controlnet_z_image"


def _fusable_classes() -> tuple[tuple, tuple]:
    """(attention processors, feed-forwards) that fuse: the transformer's and the ControlNet's copies of them (the
    same arithmetic). The ControlNet's module is never imported here (diffusers' controlnets take 1.6 s to import):
    until something has imported it, no ControlNet block exists to fuse."""
    controlnet = sys.modules.get(CONTROLNET_MODULE)
    if controlnet is None:
        return (ZSingleStreamAttnProcessor,), (FeedForward,)
    return (ZSingleStreamAttnProcessor, controlnet.ZSingleStreamAttnProcessor), (FeedForward, controlnet.FeedForward)

# fused layer -> the layers it replaces, in the order of its outputs (lora_slots.py maps adapters through this)
FUSED_PARTS = {"to_qkv": ("to_q", "to_k", "to_v"), "w13": ("w1", "w3")}


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, seq, heads, head_dim] with interleaved (real, imaginary) pairs; cos/sin: [batch, seq, 1, head_dim/2,
    1]. Slices that keep the pair dimension, not selects (see FusedAttnProcessor)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    re, im = pairs[..., :1], pairs[..., 1:]
    return torch.cat((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(-2).type_as(x)


class FusedAttnProcessor:
    """diffusers' ZSingleStreamAttnProcessor over a fused ``to_qkv``, with real-valued RoPE."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        # q, k and v as strided views of the fused output, and RoPE's cos/sin sliced from a copy of the real-valued
        # freqs: no view of a non-contiguous tensor, on which Inductor's lowering guards batch == 1 (even with
        # backed_size_oblivious, accel.compile_setup), so one compiled graph serves batch 1 and larger batches
        qkv = attn.to_qkv(hidden_states).contiguous()  # (a no-op: a Linear's fresh output)
        if not torch.compiler.is_compiling():  # the offsets below count from the storage's start (traced: not checked)
            assert qkv.storage_offset() == 0, "to_qkv must return a tensor of its own"
        b, s, n = qkv.shape
        d = n // (3 * attn.heads)
        query, key, value = (qkv.as_strided((b, s, attn.heads, d), (s * n, n, d, 1), i * attn.heads * d)
                             for i in range(3))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:
            cos_sin = torch.view_as_real(freqs_cis).clone().unsqueeze(2)  # [batch, seq, 1, head_dim/2, 2]
            cos, sin = cos_sin[..., :1], cos_sin[..., 1:]
            query, key = _rope(query, cos, sin), _rope(key, cos, sin)
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None, None, :]
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = attn.to_out[0](out.flatten(2, 3).to(query.dtype))
        return attn.to_out[1](out) if len(attn.to_out) > 1 else out


class FusedFeedForward(nn.Module):
    """SwiGLU with the gate and up projections in one matmul: w2(silu(x W1) * (x W3))."""

    def __init__(self, w13: nn.Linear, w2: nn.Linear):
        super().__init__()
        self.w13, self.w2 = w13, w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def _concat(linears: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the given ones' outputs side by side; frees their weights."""
    first = linears[0]
    weight = torch.cat([lin.weight.data for lin in linears], dim=0)
    bias = torch.cat([lin.bias.data for lin in linears]) if first.bias is not None else None
    for lin in linears:
        lin.weight = None
        lin.bias = None
    fused = nn.Linear(first.in_features, weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def fuse_projections(transformer: nn.Module) -> int:
    """Fuse every Z-Image block of ``transformer`` (or of a ControlNet) in place; returns how many blocks were fused.

    Call on a resident model (weights on one device, no offload hooks), before compiling or quantizing."""
    count = 0
    processors, feed_forwards = _fusable_classes()
    for block in transformer.modules():
        attn, ff = getattr(block, "attention", None), getattr(block, "feed_forward", None)
        if attn is None or not isinstance(attn.processor, processors) or not isinstance(ff, feed_forwards):
            continue
        attn.to_qkv = _concat([attn.to_q, attn.to_k, attn.to_v])
        del attn.to_q, attn.to_k, attn.to_v
        processor = FusedAttnProcessor()
        processor._attention_backend = attn.processor._attention_backend
        processor._parallel_config = attn.processor._parallel_config
        attn.set_processor(processor)
        block.feed_forward = FusedFeedForward(_concat([ff.w1, ff.w3]), ff.w2)
        count += 1
    return count
