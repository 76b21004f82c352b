"""Idle Ray workers on a GPU node import the model layer before any replica needs it (issue 23).

A generator replica spends most of its start importing: torch, then diffusers with transformers and peft (bench
``scaleout``: 5.8 of the 10.2 s from its constructor to ready on a warm node). Ray starts its workers ahead of the
work (a pool of idle ones per node, as many as the node's CPUs), and Serve starts a replica, a new one or one that
replaces a dead one, in an idle worker. :func:`start`, called by every worker of our jobs as it starts (the setup
hook, arguments.setup_worker_logging), imports what a replica imports in a thread of its own, so a replica that
lands on a worker that has been idle a few seconds finds it imported.

- **Where:** on a machine with one NVIDIA GPU (the driver's device files; ``ZIMAGE_PRELOAD``: ``auto``, the default,
  or ``1`` / ``0``). It costs each idle worker there the imported modules' memory (bench run64: 13 workers, 11 with
  torch loaded, 17.2 GB resident against 11.7 GB without the preload) and a few seconds of one core at its start.
- **No CUDA:** Ray sets a replica's CUDA_VISIBLE_DEVICES when it places it, and CUDA reads it once, when it is
  initialised. diffusers' import asks whether a GPU is there; during the preload NVML answers (``NVML_CHECK``; where
  NVML can't, no preload), and nothing else may call CUDA (tests/model/test_preload.py; on the GPU, bench ``preload_check`` sets
  CUDA_VISIBLE_DEVICES to none after a preload and counts the devices CUDA sees). Where more than one GPU shares the
  node, a CUDA call slipped into an import would put every replica there on the first GPU: ``auto`` preloads only
  where there is one; ``1`` asks for it anywhere.
- **No race:** the worker's own heavy imports wait for the thread first (:func:`wait`, called by
  startup.remember_installed_packages: the GPU worker's start, the CPU prompt encoders' loads, the CLI), so two
  threads never import the same modules at once. Those of Serve's own actors (the controller, the proxy, the
  ingress) share none with it but the standard library's and pydantic's, which neither imports the other's.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("zimage_serve")
_state: dict = {"thread": None, "seconds": None, "error": None}
_lock = threading.Lock()


# diffusers asks at import whether a GPU is there (torch.accelerator.is_available, in diffusers.utils.torch_utils): by
# default that initialises CUDA (cudaGetDeviceCount), which then keeps the devices it saw whatever Ray sets later
# (bench run64's preload_check). NVML's count answers it without CUDA, reading CUDA_VISIBLE_DEVICES as it is at the
# call: torch's PYTORCH_NVML_BASED_CUDA_CHECK, set by start (where the user had not) and unset by wait, both on the
# worker's own thread, not the preload's.
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def _import() -> None:
    t = time.perf_counter()
    try:
        from .startup import remember_installed_packages  # (the node's memo first: it saves diffusers' own scan)

        remember_installed_packages(wait=False)
        import torch  # (the preload's: NVML checked before diffusers asks)

        # (a CPU build of torch asks no CUDA at all) where NVML can't answer, torch would ask CUDA instead, and
        # CUDA would keep what it saw
        if torch.version.cuda is not None and getattr(torch.cuda, "_device_count_nvml", lambda: -1)() < 0:
            raise RuntimeError("NVML can't count the GPUs here; diffusers' import would initialise CUDA")
        from . import engine  # noqa: F401 (what a replica imports: torch, diffusers, transformers, peft)
    except BaseException as e:  # noqa: BLE001 (a head start, nothing more: the replica imports it itself)
        _state["error"] = f"{type(e).__name__}: {e}"
        log.warning("the preload of the model layer stopped (%s); a replica here imports it itself", _state["error"])
    _state["seconds"] = time.perf_counter() - t


def start() -> bool:
    """Import the model layer in a thread of this process, where the environment says so (see the module's
    docstring); whether it started (once per process)."""
    from ..settings import preload_wanted  # (this module imports no torch: the thread does)

    try:
        wanted = preload_wanted()
    except Exception as e:  # noqa: BLE001 (a worker's setup hook must not fail: Serve's own workers run it too)
        log.warning("no preload: %s", e)
        return False
    with _lock:
        if _state["thread"] is not None or not wanted:
            return False
        if NVML_CHECK not in os.environ:
            os.environ[NVML_CHECK] = "1"
            _state["nvml_set"] = True
        _state["thread"] = threading.Thread(target=_import, name="zimage-preload", daemon=True)
        _state["thread"].start()
    return True


def wait() -> dict:
    """Wait for this process's preload, if one started; what it did, for a start's details: ``{}`` when none
    started, else ``preload_s`` (its import seconds), ``preload_waited_s`` (how long this call waited for it: 0 on
    a worker that was idle long enough) and ``preload_error``, if it failed."""
    thread = _state["thread"]
    if thread is None:
        return {}
    t = time.perf_counter()
    thread.join()
    if _state.pop("nvml_set", False):  # (the caller is about to use the GPU: torch's own check again)
        os.environ.pop(NVML_CHECK, None)
    out = {"preload_s": round(_state["seconds"], 2), "preload_waited_s": round(time.perf_counter() - t, 2)}
    if _state["error"]:
        out["preload_error"] = _state["error"][:300]
    return out
