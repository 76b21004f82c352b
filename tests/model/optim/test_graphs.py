"""graphs.GraphedBlocks on the tiny model's real classes: diffusers' forward runs through it unchanged.

Capturing needs a GPU (bench/run.py's ``graphs`` step checks the images there); on the CPU the stacks run
eagerly, which is what is tested here: same output, same parameters, same state dict."""

import copy

import pytest
import torch

from zimage_serve.model.optim.fusion import fuse_projections
from zimage_serve.model.optim.graphs import STACKS, GraphedBlocks, use_cuda_graphs

from test_fusion import _forward, transformer  # noqa: F401  (the fixture)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("caption_tokens", [(7,), (5, 40)])
def test_graphed_stacks_give_the_same_output(transformer, fuse, caption_tokens):  # noqa: F811
    reference = copy.deepcopy(transformer)
    graphed = copy.deepcopy(transformer)
    if fuse:
        fuse_projections(reference)
        fuse_projections(graphed)
    blocks = sum(len(getattr(transformer, name)) for name in STACKS)
    assert use_cuda_graphs(graphed) == blocks
    assert all(isinstance(getattr(graphed, name), GraphedBlocks) for name in STACKS)
    assert not isinstance(graphed.context_refiner, GraphedBlocks)
    torch.testing.assert_close(_forward(graphed, caption_tokens=caption_tokens),
                               _forward(reference, caption_tokens=caption_tokens), rtol=0, atol=0)


def test_the_model_keeps_its_modules_and_state_dict(transformer):  # noqa: F811
    graphed = copy.deepcopy(transformer)
    use_cuda_graphs(graphed)
    assert list(graphed.state_dict()) == list(transformer.state_dict())
    assert len(graphed.layers) == len(transformer.layers)
    assert [type(m) for m in graphed.layers._modules.values()] == [type(m) for m in transformer.layers]
    assert len(list(graphed.layers)) == 1  # iterating yields the one callable that runs them all
    assert graphed.layers[0] is graphed.layers._modules["0"]
    assert list(graphed.layers[:2]) == list(graphed.layers._modules.values())[:2]
    assert use_cuda_graphs(graphed) == 0  # already graphed
