"""Shared fixtures: the real tiny checkpoint (random weights, real classes), written once per session.

Two tiers: every test that starts Ray carries the ``ray`` marker, so ``python -m pytest -m "not ray"`` needs no
Ray cluster. Tests that use the ``serve_cluster`` or ``app_url`` fixture (or one built on them) get the marker
here, automatically (``pytest_itemcollected``); a test that starts Ray in a subprocess of its own (``zimage-serve
serve``, the batch job) says ``@pytest.mark.ray`` itself. A test without the marker that calls ``ray.init`` in this
process fails, saying so (``_no_ray_unless_marked``).

One Ray cluster a session, whichever pytest-xdist workers run its tests: the first to need it starts it in a
process of its own (tests/ray_session.py), the others connect to it, and the session's shared apps (main, lora,
secure) are deployed once, by the first worker to ask (``shared_app``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ray_session import (deploy, free_port, only_one, pytest_configure, pytest_sessionfinish,  # noqa: F401
                         pytest_terminal_summary, pytest_unconfigure, serve_cluster, shared_app, shared_dir, undeploy)

_CACHE = Path(os.environ.get("ZIMAGE_TEST_CACHE", "/tmp/zimage-serve-tests"))
os.environ["ZIMAGE_CACHE_DIR"] = str(_CACHE)  # before anything reads the environment
os.environ.setdefault("ZIMAGE_DEVICE", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Inductor's CPU compiles (tests of the compile cache and the compiled VAE decoder) trust the ISA that the CPU's
# flags name instead of first building and loading a probe library per ISA, in every new cache directory and
# process (about 6 s each, on 2 cores); the kernels themselves are compiled and run as ever
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")
# pytest-xdist's workers share the cores: torch's threads split them (2 workers of 2 threads on 2 cores spun against
# each other); set before any test module imports torch
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


RAY_FIXTURES = {"serve_cluster", "app_url"}


SHARED_APPS = {"app_url", "lora_url", "keyed_app"}  # the session's apps (shared_app)


def pytest_itemcollected(item):
    """Marks as each test is collected: before -m selects, and before xdist reads the groups (pytest-xdist's
    own pytest_collection_modifyitems turns them into node ids). The tests of the session's shared apps are one
    group, on one worker, as their counters (cache hits, batches) count only their own requests; every other
    test is grouped by module (its file: doctests have no module object), so that a module's fixtures run once.
    The Ray tests of every worker share one cluster (serve_cluster)."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if RAY_FIXTURES & fixtures:
        item.add_marker(pytest.mark.ray)
    item.add_marker(pytest.mark.xdist_group("shared_apps" if SHARED_APPS & fixtures else item.nodeid.split("::")[0]))


@pytest.fixture(autouse=True)
def _no_ray_unless_marked(request, monkeypatch):
    """The fast tier's guarantee, checked: a test not marked ``ray`` can't start (or join) a Ray cluster."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return
    import ray

    def refused(*args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts Ray but is not marked ray: use the serve_cluster "
                           "fixture, or @pytest.mark.ray for a subprocess that starts Ray")

    monkeypatch.setattr(ray, "init", refused)
    yield


@pytest.fixture(scope="session")
def tiny_source():
    from zimage_serve.model.sources import resolve

    return resolve("tiny")


@pytest.fixture(scope="session")
def tiny_path(tiny_source) -> Path:
    return tiny_source.path


@pytest.fixture(scope="session")
def tiny_controlnets(tiny_path) -> dict:
    """Random ControlNets for the tiny model, written once per machine: {"1.0": the single file as published,
    "2.1": a diffusers directory, "2.0": a single file (its control noise-refiner input zero)}."""
    from zimage_serve.testing.controlnet import write_controlnet

    root = _CACHE / "controlnets-v1"
    wanted = {"1.0": (root / "union-1.0.safetensors", "single-file"), "2.1": (root / "union-2.1", "diffusers"),
              "2.0": (root / "union-2.0.safetensors", "single-file")}
    for version, (path, layout) in wanted.items():
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            write_controlnet(tmp, tiny_path, version, layout, seed=3)
            try:
                os.replace(tmp, path)
            except OSError:  # another worker wrote it first
                if not path.exists():
                    raise
    return {version: path for version, (path, _) in wanted.items()}


@pytest.fixture(scope="session")
def stock_pipe(tiny_path):
    """Stock diffusers ZImagePipeline on the same checkpoint: the reference every image is compared with."""
    import torch
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(tiny_path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_image(pipe, prompt: str, seed: int, width: int, height: int, steps: int = 8, guidance_scale: float = 0.0,
                negative_prompt: str | None = None):
    import torch

    return pipe(prompt=prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
                negative_prompt=negative_prompt,
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def picture(width=64, height=64, seed=0):
    """A smooth picture with some texture: what an edit starts from."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    rgb += np.random.RandomState(seed).normal(0, 12, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def square_mask(width=64, height=64):
    """White (repaint) in the middle half of each side, black around."""
    import numpy as np
    from PIL import Image

    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    return Image.fromarray(mask)


def edges(width=64, height=64):
    """A control map: white lines on black."""
    import numpy as np
    from PIL import Image

    a = np.zeros((height, width, 3), np.uint8)
    a[height // 3, :] = 255
    a[:, width // 2] = 255
    return Image.fromarray(a)


def max_pixel_diff(a, b) -> int:
    import numpy as np

    assert a.size == b.size, (a.size, b.size)
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture
def cli():
    """Run the installed CLI as a user would; returns CompletedProcess."""
    import subprocess

    def run(*args, timeout=300):
        return subprocess.run([sys.executable, "-m", "zimage_serve.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ))

    return run


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``zimage-serve ARGV`` in this process (no new interpreter to import torch again): its exit status (as
    ``sys.exit(main())`` gives it), stdout and stderr."""
    from zimage_serve.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's errors exit from inside the parser
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# an app whose tests are not about the CPU encoders: its generator encodes the prompts, and no PromptEncoder replica
# is started (serving/builder.py), one process less to import torch for on the 2 cores
GENERATOR_ENCODES = {"encode_on": "gpu"}


def tiny_app_config(tiny_path, **overrides) -> dict:
    """A test config: the tiny checkpoint, small sizes, the generator's batch wait long enough to observe batching
    (concurrent requests arrive within milliseconds of each other) but short, as every lone request waits it out
    (the schemathesis run sends some 150 image requests one by one); the encoder's, the default 10 ms; each replica
    reserves 0.1 CPU (one torch thread), so several test apps fit on the machine's real CPUs."""
    config = {
        "model": str(tiny_path), "default_size": "64x64", "max_side": 256, "max_images": 4,
        "encoder": {"max_batch_size": 8, "num_cpus": 0.1, "dtype": "float32"},
        "generator": {"num_gpus": 0, "num_cpus": 0.1, "max_batch_size": 4, "batch_wait_timeout_s": 0.05,
                      "plan_size": "256x256"},
        "jobs": {"enabled": False},  # a replica less for the apps that don't test jobs (tests/serving/test_jobs.py does)
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    return config


@pytest.fixture(scope="session")
def app_url(serve_cluster, tiny_path):
    """The main test application (one logical GPU for its generator), deployed once under /main."""
    return shared_app(serve_cluster, "main", lambda: tiny_app_config(tiny_path, generator={"num_gpus": 1}))


@pytest.fixture(scope="session")
def loras(tiny_path, tmp_path_factory) -> dict:
    """Random LoRA adapters for the tiny model ({name: directory}), and a file that is no adapter ("broken")."""
    from zimage_serve.testing.lora import write_lora

    root = tmp_path_factory.mktemp("served-loras")
    made = {name: str(write_lora(root / name, tiny_path, rank=4, seed=seed).parent) for name, seed in (("ink", 11), ("oil", 12))}
    (root / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    made["broken"] = str(root / "broken.safetensors")
    return made


@pytest.fixture(scope="session")
def lora_url(serve_cluster, tiny_path, loras, tiny_controlnets):
    """The application with what a request may add to the base model: LoRA adapters (one held per replica, so
    every switch evicts) and a 2.1 Union ControlNet, deployed once under /lora; its generator encodes the prompts
    (encode_on: gpu), as tests/serving/test_app.py checks."""
    return shared_app(serve_cluster, "lora", lambda: tiny_app_config(
        tiny_path, adapters={"ink": {"source": loras["ink"], "scale": 0.7}, "oil": loras["oil"], "broken": loras["broken"]},
        controlnet=str(tiny_controlnets["2.1"]), generator={"max_adapters_per_replica": 1, "encode_on": "gpu"}))


@pytest.fixture(scope="session")
def keyed_app(serve_cluster, tiny_path):
    """An app that needs API keys (two, in a keys file, new each session): its base URL and the keys."""
    import secrets

    path = shared_dir() / "keys.txt"
    with only_one("keys"):
        if not path.exists():
            keys = (f"secret-{secrets.token_hex(8)}", f"secret-{secrets.token_hex(8)}")
            path.write_text(f"# ops\n{keys[0]}\n  # a comment, not a key\n\n{keys[1]}\n")
    keys = tuple(line for line in path.read_text().splitlines() if line.startswith("secret-"))
    url = shared_app(serve_cluster, "secure",
                     lambda: tiny_app_config(tiny_path, api_keys_file=str(path), generator=GENERATOR_ENCODES))
    return url, keys


def job(embeds, seed: int, width: int = 1024, height: int = 1024, steps: int = 8, guidance_scale: float = 0.0,
        negative_embeds=None, prompt: str = "a test prompt"):
    """An engine Job: the typed request of one image and its embeddings."""
    from zimage_serve.core.request import GenerationRequest
    from zimage_serve.model.engine import Job

    request = GenerationRequest(prompt=prompt, seed=seed, width=width, height=height, steps=steps,
                                guidance_scale=guidance_scale)
    return Job(request, embeds, negative_embeds)


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 (in a thread) that records each webhook it receives: (headers, body)."""

    def __init__(self):
        import http.server
        import threading

        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_job(self, job_id: str) -> list[tuple[dict, bytes]]:
        return [(h, b) for h, b in self.received if h.get("webhook-id") == job_id]

    def close(self):
        self.server.shutdown()
