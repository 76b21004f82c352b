"""Attention alone at the denoiser's shapes: each SDPA backend on each layout a block can hand it, and
FlexAttention compiled."""

from __future__ import annotations

from ..common import save

HEADS, DIM = 30, 128
SHAPES = ((1, 4192), (1, 4128), (1, 4224), (4, 4192))  # (batch, 4096 image tokens + a caption padded to 32)


def _bench(fn, reps=20) -> float:
    """Milliseconds a call, by CUDA events over ``reps`` calls after 3 untimed ones."""
    import torch

    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _inputs(batch, seq, layout):
    import torch

    if layout == "qkv":  # views of one fused projection's output [B, S, 3, H, D]
        qkv = torch.randn(batch, seq, 3, HEADS, DIM, device="cuda", dtype=torch.bfloat16)
        return [t.transpose(1, 2) for t in qkv.unbind(2)]
    if layout == "bshd":  # each [B, S, H, D] contiguous, transposed (what diffusers' native dispatch passes)
        return [torch.randn(batch, seq, HEADS, DIM, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
    return [torch.randn(batch, HEADS, seq, DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3)]


def attn():
    """Attention alone at the denoiser's shapes (30 heads of 128): SDPA backends by layout; FlexAttention.

    TFLOP/s counts 4*B*H*S^2*D."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {"cudnn_version": torch.backends.cudnn.version(), "torch": torch.__version__, "rows": []}
    backends = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}

    def row(batch, seq, layout, backend, fn, flops, **extra):
        try:
            ms = _bench(fn)
            out["rows"].append({"batch": batch, "seq": seq, "layout": layout, "backend": backend,
                                "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1), **extra})
        except Exception as e:  # noqa: BLE001 - a backend that can't run is reported
            out["rows"].append({"batch": batch, "seq": seq, "layout": layout, "backend": backend, "error": repr(e)[:200]})

    for batch, seq in SHAPES:
        flops = 4 * batch * HEADS * seq * seq * DIM
        for layout in ("qkv", "bshd", "bhsd"):
            q, k, v = _inputs(batch, seq, layout)
            for name, backend in backends.items():
                def run(backend=backend):
                    if backend is None:
                        return F.scaled_dot_product_attention(q, k, v)
                    with sdpa_kernel([backend]):
                        return F.scaled_dot_product_attention(q, k, v)
                row(batch, seq, layout, name, run, flops)
            del q, k, v
        try:
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
            q, k, v = _inputs(batch, seq, "bhsd")
            diff = (flex(q, k, v).float() - F.scaled_dot_product_attention(q, k, v).float()).abs().max().item()
            row(batch, seq, "bhsd", "flex (compiled)", lambda: flex(q, k, v), flops, max_diff_vs_sdpa=diff)
        except Exception as e:  # noqa: BLE001
            out["rows"].append({"batch": batch, "seq": seq, "backend": "flex (compiled)", "error": repr(e)[:200]})
    for r in out["rows"]:
        print(r, flush=True)
    save("attn", **out)
