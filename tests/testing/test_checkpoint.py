import hashlib
import json

from zimage_serve.testing.checkpoint import is_random_weights, write_checkpoint


def _digest(root):
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_make_tiny_is_deterministic_and_in_the_hub_layout(tmp_path):
    a = write_checkpoint(tmp_path / "a", "tiny")
    b = write_checkpoint(tmp_path / "b", "tiny")
    assert _digest(a) == _digest(b)
    index = json.loads((a / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert index["transformer"] == ["diffusers", "ZImageTransformer2DModel"]
    assert index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert (a / "tokenizer" / "tokenizer.json").exists()
    assert is_random_weights(a)
    assert not list(a.rglob("*.bin"))


def test_tokenizer_has_a_qwen_like_chat_template(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path / "tokenizer")
    text = tok.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=True)
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
