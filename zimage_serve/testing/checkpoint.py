"""Writes Z-Image checkpoints with random weights from the real diffusers/transformers classes.

Two shapes share one generator: ``tiny`` (a few MB; the embedded default and the test fixture)
and ``full`` (the real Z-Image-Turbo dimensions, 32.8 GB, for GPU benchmarks). Both are written in
the hub's layout (model_index.json, transformer/, text_encoder/, vae/, tokenizer/, scheduler/)
with safetensors, so they load through exactly the code that loads the real model. Their images
are noise: the weights are random, and a marker file says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..core.checkpoints import RANDOM_WEIGHTS_MARKER

_CORPUS = [
    "A cute cyberpunk cat with mechanical implants sitting on a neon-lit rooftop at night",
    "photo of a serene lake at sunrise, mist floating, photorealistic, 8k",
    "portrait of an old fisherman, wrinkles, soft window light, 85mm lens",
    "a red bicycle leaning on a brick wall, watercolor painting",
    "isometric pixel art of a tiny castle on a floating island, clouds, vibrant colors",
    "the quick brown fox jumps over the lazy dog 0123456789 !?.,;:'\"()[]{}<>@#$%^&*-_=+/\\|~`",
]

# Qwen3-style chat template; the pipeline calls it with add_generation_prompt and enable_thinking.
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

SHAPES = {
    "tiny": dict(
        transformer=dict(dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                         cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[1536, 512, 512]),
        text_encoder=dict(vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16),
        vae=dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8),
        tokenizer_vocab=1024,
    ),
    "full": dict(
        transformer=dict(axes_lens=[1536, 512, 512]),  # diffusers' defaults are the real model's
        text_encoder=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128),
        vae=dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32),
        tokenizer_vocab=4000,
    ),
}


def _tokenizer(vocab_size: int):
    # here, not at import: model/sources.py imports this module where a tiny checkpoint may never be written
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", padding_side="right", model_max_length=131072)
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def write_checkpoint(out_dir: str | os.PathLike, shape: str = "tiny", device: str = "cpu",
                     seed: int = 0, max_shard_size: str = "10GB", overwrite: bool = True) -> Path:
    """Write a complete random-weight Z-Image checkpoint to ``out_dir`` (atomically) and return it.

    The transformer is saved in float32 (as the hub ships it), the text encoder and VAE in bf16
    for ``full``; everything is float32 for ``tiny`` so CPU tests compare exactly.
    """
    # torch and diffusers here, not at import (see _tokenizer)
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    if shape not in SHAPES:
        raise ValueError(f"unknown checkpoint shape {shape!r}; choose one of {sorted(SHAPES)}")
    spec = SHAPES[shape]
    out = Path(out_dir)
    small_dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = ZImageTransformer2DModel(**spec["transformer"])
        text_encoder = Qwen3Model(Qwen3Config(
            max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
            **spec["text_encoder"])).to(small_dtype)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=16, scaling_factor=0.3611,
            shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, sample_size=1024,
            **spec["vae"]).to(small_dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                          tokenizer=_tokenizer(spec["tokenizer_vocab"]), transformer=transformer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        (tmp / RANDOM_WEIGHTS_MARKER).write_text(
            json.dumps({"shape": shape, "seed": seed, "note": "random weights: images are noise"}) + "\n")
        if out.exists():
            if not overwrite and (out / "model_index.json").exists():
                return out  # another process wrote it first
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # another process renamed its copy there since (a directory is never replaced)
            if overwrite or not (out / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def is_random_weights(model_dir: str | os.PathLike) -> bool:
    return (Path(model_dir) / RANDOM_WEIGHTS_MARKER).exists()


def meta_tensors(shape: str = "full") -> dict:
    """{component: {tensor name: (dtype, numel)}} of a checkpoint shape, counted on the meta device."""
    # torch and diffusers here, not at import (see _tokenizer)
    import torch
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    spec = SHAPES[shape]
    with torch.device("meta"):
        models = {
            "transformer": ZImageTransformer2DModel(**spec["transformer"]),
            "text_encoder": Qwen3Model(Qwen3Config(tie_word_embeddings=True, **spec["text_encoder"])),
            "vae": AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                                 up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=16,
                                 use_quant_conv=False, use_post_quant_conv=False, **spec["vae"]),
        }
    return {name: {k: (str(v.dtype), v.numel()) for k, v in m.state_dict().items()} for name, m in models.items()}
