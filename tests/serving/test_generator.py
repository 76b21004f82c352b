"""The generator replica's class, in this process (no Ray): a start that fails leaves it up, not ready, with the
reason and the stages it got through (the same over HTTP, with a load that fails otherwise: test_generator_load.py)."""

import asyncio

import pytest

from conftest import tiny_app_config
from zimage_serve.core.errors import NotReady
from zimage_serve.core.request import GenerationRequest
from zimage_serve.serving.generator import Generator


def test_a_model_that_cannot_load_leaves_the_replica_up_not_ready_with_the_reason(tiny_path):
    generator = Generator(tiny_app_config(tiny_path, model="/no/such/checkpoint"))
    info = asyncio.run(generator.info())
    assert info["ready"] is False and "/no/such/checkpoint" in info["reason"]
    assert list(info["start"]["stages_s"]) == ["process", "imports", "resolve"]  # where the start stopped
    with pytest.raises(NotReady, match="not loaded.*/no/such/checkpoint"):
        asyncio.run(generator.generate(GenerationRequest("x", seed=1, width=64, height=64), None))
    generator.check_health()  # alive: Serve keeps the replica rather than restarting it in a loop
