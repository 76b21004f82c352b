"""Prompt encoding as its own batched step: prompts in, variable-length embeddings out.

Gives what ``ZImagePipeline.encode_prompt`` gives (hidden_states[-2] of the Qwen3 encoder, masked
to the prompt's tokens) with less work: a batch is padded to its longest prompt, not to 512 tokens
(the encoder is causal and pads on the right, so the prompt's tokens see the same context), and the
last decoder layer, whose output is unused, is not run.
"""

from __future__ import annotations

import torch

from ..core.bounds import MAX_TEXT_TOKENS



def cpu_encoder_dtype(name: str) -> torch.dtype:
    """The CPU encoder's dtype: "auto" is bfloat16 where the CPU is fast at it (AMX), else float32 (which
    matches stock exactly); "float32"/"bfloat16" as named. The serving encoders and the batch job share
    this choice, so both encode in the same precision on one host."""
    if name != "auto":
        return getattr(torch, name)
    try:
        amx = "amx_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        amx = False
    return torch.bfloat16 if amx else torch.float32


class PromptEncoder:
    def __init__(self, model: torch.nn.Module, tokenizer, max_sequence_length: int = MAX_TEXT_TOKENS):
        self.model = model
        self.tokenizer = tokenizer
        self.max_sequence_length = max_sequence_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _chat(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=True)

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(self._chat(prompt)).input_ids)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """One [tokens, hidden] tensor per prompt, on the encoder's device, in its dtype."""
        if not prompts:
            return []
        batch = self.tokenizer([self._chat(p) for p in prompts], padding="longest", truncation=True,
                               max_length=self.max_sequence_length, return_tensors="pt")
        device = self.device
        mask = batch.attention_mask.to(device).bool()
        hidden = self.model(input_ids=batch.input_ids.to(device), attention_mask=mask).last_hidden_state
        mask = mask.to(hidden.device)  # an offloaded encoder runs elsewhere than its parameters rest
        return [hidden[i][mask[i]] for i in range(len(prompts))]
