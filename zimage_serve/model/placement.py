"""Placing a transformer that was loaded on the CPU onto the GPU, as a ``partial`` plan (some of its main blocks
streamed, spread among the resident ones: optim/streamer.py) or an FP8 plan (its blocks' wide Linear weights in
FP8: optim/fp8.py) says, without the GPU ever holding more than the plan budgeted: weights are fused on the CPU,
each resident block is quantized on the GPU one at a time (its bf16 weights freed as its FP8 ones are made),
streamed blocks stay in host memory.
"""

from __future__ import annotations

import torch

from .optim.streamer import BlockStreamer, stream_blocks, streamed_positions

FP8_MIN_FEATURES = 1024  # Linear layers narrower than this on either side stay bf16 (the repeated blocks' are 3840+)


def place_transformer(transformer: torch.nn.Module, plan, device, fuse: bool = True,
                      before_quantize=None) -> tuple[dict, BlockStreamer | None]:
    """(what was applied, the streamer or None). ``before_quantize(transformer)`` runs after fusing (the engine
    makes its LoRA slots there)."""
    applied: dict = {}
    if fuse:
        from .optim.fusion import fuse_projections  # (the speed-up the resident plans apply too)

        applied["fused_blocks"] = fuse_projections(transformer)
    if before_quantize is not None:
        before_quantize(transformer)
    layers = list(transformer.layers)
    positions = streamed_positions(len(layers), plan.blocks_streamed)
    streamed = [layers[i] for i in positions]
    if plan.weights == "fp8":
        from .optim.fp8 import quantize_linears  # an FP8 plan only

        block_types = tuple(getattr(transformer, "_repeated_blocks", ()))
        count = 0
        for block in [m for m in transformer.modules() if type(m).__name__ in block_types]:
            if not any(block is s for s in streamed):
                block.to(device)  # one block's bf16 weights on the GPU at a time
            count += quantize_linears(block, FP8_MIN_FEATURES)
        applied["fp8_linear_layers"] = count
    streamer = stream_blocks(transformer, positions, device)
    transformer.to(device)  # the rest (the streamed blocks already point at their GPU buffers)
    if streamer is not None:
        applied["streamed_blocks"] = f"{len(streamed)} of {len(layers)} main blocks, 2 buffers of " \
                                     f"{streamer.nbytes / 2 / 2**20:.0f} MiB"
    return applied, streamer
