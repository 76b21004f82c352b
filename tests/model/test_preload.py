"""model/preload.py: a Ray worker of our jobs imports the model layer in a thread as it starts (ZIMAGE_PRELOAD), with
no CUDA call; the worker's own start waits for it and reports it. Each case in a fresh interpreter: what it
imports is the point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# the functions that would initialise CUDA (and so fix the devices it sees) recorded when called, each with whether
# torch then asks NVML instead of CUDA (PYTORCH_NVML_BASED_CUDA_CHECK: is_available and device_count only)
_WATCH_CUDA = """
import os
import torch
called = []
watched = [(torch.cuda, name) for name in ("is_available", "device_count", "init", "_lazy_init", "current_device",
           "get_device_properties", "get_device_capability", "get_device_name", "mem_get_info", "set_device",
           "synchronize")] + [(torch.accelerator, name) for name in ("is_available", "device_count", "current_device_index")]
for module, name in watched:
    original = getattr(module, name)
    def spy(*a, _name=f"{module.__name__}.{name}", _original=original, **k):
        called.append([_name, os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1"])
        return _original(*a, **k)
    setattr(module, name, spy)
"""

_PRELOAD = _WATCH_CUDA + """
import json, sys
from zimage_serve.model import preload
from zimage_serve.model.startup import remember_installed_packages
started, again = preload.start(), preload.start()
details = remember_installed_packages()  # what a worker's start does first
print("RESULT " + json.dumps({"started": started, "again": again, "details": details, "cuda_calls": called,
                              "nvml_after": "PYTORCH_NVML_BASED_CUDA_CHECK" in os.environ,
                              "cuda_initialized": torch.cuda.is_initialized(),
                              "imported": [m in sys.modules for m in ("diffusers", "transformers", "peft",
                                  "diffusers.models.transformers.transformer_z_image", "zimage_serve.model.engine")]}))
"""


def _run(code: str, **env) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                       env={**os.environ, **env})
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, r.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_a_preload_imports_what_a_replica_imports_once_with_no_cuda_call_and_the_start_waits_for_it(tmp_path):
    out = _run(_PRELOAD, ZIMAGE_PRELOAD="1", ZIMAGE_CACHE_DIR=str(tmp_path))
    assert out["started"] is True and out["again"] is False  # once per process
    assert out["imported"] == [True] * 5
    # diffusers asks whether a GPU is there, which NVML answers during a preload; nothing else is asked
    assert out["cuda_calls"] and {name for name, _ in out["cuda_calls"]} <= {"torch.accelerator.is_available",
                                                                            "torch.cuda.is_available",
                                                                            "torch.cuda.device_count"}
    assert all(nvml for _, nvml in out["cuda_calls"]), out["cuda_calls"]
    assert out["cuda_initialized"] is False and out["nvml_after"] is False  # (the flag set for the imports only)
    # (on this CPU build of torch no call reaches CUDA whatever the flag: what fails here is a call made without it,
    # or one of the others; the GPU's own check is bench preload_check)
    details = out["details"]
    assert set(details) == {"preload_s", "preload_waited_s"}, details  # no preload_error
    assert details["preload_s"] > 0 and 0 <= details["preload_waited_s"] <= details["preload_s"] + 0.05
    assert list((tmp_path / "imports").glob("*.json"))  # the node's package map, written by the preload


def test_without_a_preload_nothing_is_imported_ahead_and_the_start_reports_none(tmp_path):
    out = _run(_PRELOAD, ZIMAGE_PRELOAD="0", ZIMAGE_CACHE_DIR=str(tmp_path))
    assert out["started"] is False and out["again"] is False and out["details"] == {}
    assert out["imported"] == [False] * 5


@pytest.mark.parametrize("value, expected", [("1", True), ("on", True), ("0", False), ("off", False)])
def test_the_setting_turns_it_on_or_off(value, expected, monkeypatch):
    from zimage_serve.settings import preload_wanted

    monkeypatch.setenv("ZIMAGE_PRELOAD", value)
    assert preload_wanted() is expected


@pytest.mark.parametrize("gpus, expected", [(0, False), (1, True), (2, False)])
def test_auto_preloads_where_the_nvidia_driver_shows_one_gpu(gpus, expected, tmp_path):
    from zimage_serve.settings import _preload

    for i in range(gpus):
        (tmp_path / f"nvidia{i}").touch()
    (tmp_path / "nvidiactl").touch()  # (the driver's control file: not a GPU)
    assert _preload("auto", tmp_path) is expected and _preload("1", tmp_path) is True


_RAY_WORKER = """
import json, os, sys
import ray
from zimage_serve.arguments import ray_init_options
ray.init(num_cpus=1, include_dashboard=False, **ray_init_options())  # a Ray of our commands: the workers' hook

@ray.remote(num_cpus=0)
class Replica:
    def start(self):
        from zimage_serve.model.startup import remember_installed_packages
        return remember_installed_packages(), "diffusers" in sys.modules

print("RESULT " + json.dumps(ray.get(Replica.remote().start.remote())))
ray.shutdown()
"""


@pytest.mark.ray  # its own Ray, in the process it starts
def test_a_ray_worker_of_our_commands_preloads_and_a_replica_in_it_waits_for_that(tmp_path):
    details, imported = _run(_RAY_WORKER, ZIMAGE_PRELOAD="1", ZIMAGE_CACHE_DIR=str(tmp_path), RAY_ADDRESS="")
    assert imported and details["preload_s"] > 0 and "preload_error" not in details, details
