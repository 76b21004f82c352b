"""Opt-in FP8 matmuls for the DiT's wide Linear layers (Hopper and Ada GPUs).

Each weight is stored once in float8 e4m3 with one scale per output row; each activation row is
scaled and cast on the fly; ``torch._scaled_mm`` multiplies with both scales applied and writes
bf16 (with Hopper's fast accumulation, as torchao's float8 inference does by default). Everything is plain tensors, so regional torch.compile traces one block and reuses it for
all of them (and fuses the activation cast into the preceding RMSNorm/modulation kernel). torchao's
float8 tensor subclass gives the same arithmetic but took 207 s to compile here (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448
_TINY = 1e-12  # an all-zero row gets this amax instead of dividing 0 by 0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / scale) in e4m3 and the float32 scale per row ([rows, 1]), scale = amax(|row|) / 448."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=_TINY) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


class Float8Linear(nn.Module):
    """A Linear layer whose matmul runs in FP8 with rowwise scales (weights quantized once)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.data)
        self.register_buffer("weight", weight)  # [out, in] e4m3; .t() is the column-major operand _scaled_mm wants
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        x8, x_scale = quantize_rows(rows)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        out = torch._scaled_mm(x8, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale, bias=bias,
                               out_dtype=x.dtype, use_fast_accum=True)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3 rowwise"


def supported() -> str | None:
    """None when this machine can run FP8 matmuls on its GPU, else why not."""
    if not torch.cuda.is_available():
        return "fp8 needs a CUDA GPU"
    if torch.cuda.get_device_capability() < (8, 9):
        return "fp8 needs an Ada or Hopper GPU (compute capability 8.9+)"
    return None


def quantize_linears(model: nn.Module, min_features: int = 1024) -> int:
    """Replace, in place, every Linear at least ``min_features`` wide on both sides; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Linear) and min(child.in_features, child.out_features) >= min_features
                    and child.in_features % 16 == 0 and child.out_features % 16 == 0):
                setattr(parent, name, Float8Linear(child))
                count += 1
    return count
