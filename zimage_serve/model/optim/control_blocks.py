"""The ControlNet's own blocks compiled. A diffusers ``ZImageControlTransformerBlock`` takes the stack of the hints
made so far, unbinds it, runs one transformer block on the last entry and stacks the hints again: the stack is one
deeper after every block, so compiling the whole block would make one graph per depth (and a data-dependent
``unbind``). :func:`compile_control_blocks` compiles what a block computes (modulation, attention, feed-forward,
the output projection) once, as one function whose module argument is an input (Dynamo's inlined nn.Modules), so
every block of every depth runs the same compiled graph; the stacking around it stays eager. The arithmetic is the
block's own, in its order.
"""

from __future__ import annotations

import torch
from torch import nn


def _core(block: nn.Module, c: torch.Tensor, attn_mask, freqs_cis, adaln_input):
    """ZImageControlTransformerBlock.forward between its unbind and its stack: (the hint, the new control state)."""
    if block.modulation:
        scale_msa, gate_msa, scale_mlp, gate_mlp = block.adaLN_modulation(adaln_input).unsqueeze(1).chunk(4, dim=2)
        gate_msa, gate_mlp = gate_msa.tanh(), gate_mlp.tanh()
        scale_msa, scale_mlp = 1.0 + scale_msa, 1.0 + scale_mlp
        attn_out = block.attention(block.attention_norm1(c) * scale_msa, attention_mask=attn_mask, freqs_cis=freqs_cis)
        c = c + gate_msa * block.attention_norm2(attn_out)
        c = c + gate_mlp * block.ffn_norm2(block.feed_forward(block.ffn_norm1(c) * scale_mlp))
    else:
        attn_out = block.attention(block.attention_norm1(c), attention_mask=attn_mask, freqs_cis=freqs_cis)
        c = c + block.attention_norm2(attn_out)
        c = c + block.ffn_norm2(block.feed_forward(block.ffn_norm1(c)))
    return block.after_proj(c), c


def _forward(block: nn.Module, core):
    def forward(c: torch.Tensor, x: torch.Tensor, attn_mask: torch.Tensor, freqs_cis: torch.Tensor,
                adaln_input: torch.Tensor | None = None) -> torch.Tensor:
        if block.block_id == 0:
            c = block.before_proj(c) + x
            all_c = []
        else:
            all_c = list(torch.unbind(c))
            c = all_c.pop(-1)
        hint, c = core(block, c, attn_mask, freqs_cis, adaln_input)
        all_c += [hint, c]
        return torch.stack(all_c)
    return forward


def compile_control_blocks(controlnet: nn.Module, **compile_kwargs) -> int:
    """Compile the control blocks of ``controlnet`` (its control layers and control noise refiner) in place; the
    1.0 layout's noise refiner (plain Z-Image blocks) is compiled as the transformer's blocks are. Returns how many
    blocks."""
    core = torch.compile(_core, fullgraph=True, **compile_kwargs)
    count = 0
    for name in ("control_layers", "control_noise_refiner"):
        for block in getattr(controlnet, name, None) or ():
            if hasattr(block, "after_proj"):
                block.forward = _forward(block, core)
            else:
                block.compile(fullgraph=True, **compile_kwargs)
            count += 1
    return count
