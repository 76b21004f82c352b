"""model/preload.py: a Ray worker of our jobs imports the model layer in a thread as it starts (ZIMAGE_PRELOAD), with
no CUDA call; the worker's own start waits for it and reports it. Each case in a fresh interpreter: what it
imports is the point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# torch.cuda's functions that would initialise CUDA or read CUDA_VISIBLE_DEVICES, recorded when called
_WATCH_CUDA = """
import torch
called = []
for name in ("is_available", "device_count", "init", "_lazy_init", "current_device", "get_device_properties",
             "get_device_capability", "get_device_name", "mem_get_info", "set_device", "synchronize"):
    original = getattr(torch.cuda, name)
    setattr(torch.cuda, name, lambda *a, _name=name, _original=original, **k: (called.append(_name), _original(*a, **k))[1])
"""

_PRELOAD = _WATCH_CUDA + """
import json, sys
from zimage_serve.model import preload
from zimage_serve.model.startup import remember_installed_packages
started, again = preload.start(), preload.start()
details = remember_installed_packages()  # what a worker's start does first
print("RESULT " + json.dumps({"started": started, "again": again, "details": details, "cuda_calls": called,
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
    assert out["cuda_calls"] == [] and out["cuda_initialized"] is False
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
    from zimage_serve.settings import environment

    monkeypatch.setenv("ZIMAGE_PRELOAD", value)
    assert environment().preload is expected


def test_auto_preloads_where_the_nvidia_driver_shows_a_gpu(monkeypatch):
    from pathlib import Path

    from zimage_serve.settings import environment

    monkeypatch.delenv("ZIMAGE_PRELOAD", raising=False)
    assert environment().preload is any(Path("/dev").glob("nvidia[0-9]*"))  # (this machine: none, so off)


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
