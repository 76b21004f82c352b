"""accel's compile cache, in fresh processes as replicas start: where it lands, and what a second process skips."""

import json
import os
import subprocess
import sys

import pytest

# Imports torch._dynamo first, as diffusers does before Engine.load compiles (it points TORCHINDUCTOR_CACHE_DIR at
# /tmp), then compiles a small block for three input shapes, as a replica's warm-up does.
_REPLICA = """
import json, sys
import torch, torch._dynamo.utils
from zimage_serve.model.optim.accel import compile_setup

compile_setup(sys.argv[1])

class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.nn.functional.silu(self.proj(x)) * x.mean(-1, keepdim=True)

block = Block()
block.compile(fullgraph=True)
with torch.inference_mode():
    for batch, tokens in ((1, 5), (1, 7), (2, 7)):
        block(torch.randn(batch, tokens, 8))
print(json.dumps({"graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
                  "cache_dir": __import__("os").environ["TORCHINDUCTOR_CACHE_DIR"]}))
"""


def _replica(cache_dir, **env) -> dict:
    # one compile thread: Inductor's pool of compile processes (each importing torch) costs more than it saves here
    env = {**{k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"},
           "TORCHINDUCTOR_COMPILE_THREADS": "1", **env}
    r = subprocess.run([sys.executable, "-c", _REPLICA, str(cache_dir)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def first_replica(tmp_path_factory):
    """The first replica to start, with a fresh cache directory: (its directory, what it reported)."""
    cache = tmp_path_factory.mktemp("accel") / "compile"
    return cache, _replica(cache)


def test_the_compile_cache_lands_where_asked(first_replica):
    cache, first = first_replica
    assert first["cache_dir"] == str(cache)
    assert (cache / "fxgraph").is_dir() and any((cache / "dynamo").glob("code_state_zimage-serve*.pkl"))
    assert first["graphs"] == 3  # static, then dynamic tokens, then dynamic batch


def test_a_cache_dir_the_user_named_is_kept_and_a_second_replica_compiles_once(first_replica, tmp_path):
    """The second replica: its user named the first one's directory (TORCHINDUCTOR_CACHE_DIR), and
    compile_setup is given another. It keeps the user's, and reads what the first replica left there."""
    cache, _ = first_replica
    ours = tmp_path / "ours"
    second = _replica(ours, TORCHINDUCTOR_CACHE_DIR=str(cache))
    assert second["cache_dir"] == str(cache)
    assert not (ours / "fxgraph").exists() and not (ours / "dynamo").exists()
    # The recorded profile makes the token and batch dimensions dynamic from the start, and a batch of 1 is not
    # specialized (backed_size_oblivious): one graph for the three shapes
    assert second["graphs"] == 1
