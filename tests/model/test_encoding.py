import pytest
import torch

from zimage_serve.model.loader import load_text_encoder
from zimage_serve.model.encoding import PromptEncoder

PROMPTS = ["a cat", "a much longer prompt about a dog riding a red bicycle in the rain, watercolor",
           "ünïcødé ✓ 日本語のプロンプト", "x"]


@pytest.fixture(scope="module")
def encoder(tiny_source):
    model, tok = load_text_encoder(tiny_source, torch.device("cpu"), torch.float32)
    return PromptEncoder(model, tok)


def test_last_layer_is_not_loaded_or_run(encoder, tiny_source):
    from zimage_serve.model.sources import config_of

    assert len(encoder.model.layers) == config_of(tiny_source, "text_encoder")["num_hidden_layers"] - 1
    assert isinstance(encoder.model.norm, torch.nn.Identity)


def test_equal_to_the_pipelines_encode_prompt(encoder, stock_pipe):
    ours = encoder.encode(list(PROMPTS))
    ref, _ = stock_pipe.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _input_shapes(model, run):
    """The input_ids shapes ``model`` is called with while ``run()`` runs, and what it returns."""
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        return shapes, run()
    finally:
        hook.remove()


def test_batch_pads_to_longest_not_512(encoder, stock_pipe):
    prompts = PROMPTS[:2]
    tokens = [encoder.count_tokens(p) for p in prompts]
    shapes, ours = _input_shapes(encoder.model, lambda: encoder.encode(list(prompts)))
    assert shapes == [(2, max(tokens))] and max(tokens) < 512  # one forward pass, as long as the longest prompt
    stock_shapes, (ref, _) = _input_shapes(stock_pipe.text_encoder, lambda: stock_pipe.encode_prompt(
        list(prompts), device="cpu", do_classifier_free_guidance=False))
    assert stock_shapes == [(2, 512)]  # stock pads every prompt to max_sequence_length
    assert [a.shape[0] for a in ours] == [b.shape[0] for b in ref] == tokens
    for a, b in zip(ours, ref):  # the same embeddings all the same
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_alone_equals_in_batch(encoder):
    together = encoder.encode(PROMPTS)
    for p, t in zip(PROMPTS, together):
        torch.testing.assert_close(encoder.encode([p])[0], t, rtol=1e-5, atol=1e-5)
    assert encoder.encode([]) == []
