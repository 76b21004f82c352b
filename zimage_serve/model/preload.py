"""Idle Ray workers on a GPU node import the model layer before any replica needs it (issue 23).

A generator replica spends most of its start importing: torch, then diffusers with transformers and peft (bench
``scaleout``: 5.8 of the 10.2 s from its constructor to ready on a warm node). Ray starts its workers ahead of the
work (a pool of idle ones per node, as many as the node's CPUs), and Serve starts a replica, a new one or one that
replaces a dead one, in an idle worker. :func:`start`, called by every worker of our jobs as it starts (the setup
hook, arguments.setup_worker_logging), imports what a replica imports in a thread of its own, so a replica that
lands on a worker that has been idle a few seconds finds it imported.

- **Where:** only where a GPU is (the NVIDIA driver's device files; ``ZIMAGE_PRELOAD``: ``auto``, the default, or
  ``1`` / ``0``). It costs each idle worker there the imported modules' memory (about 1 GiB) and a few seconds of
  one core at its start.
- **No CUDA:** the imports initialise no CUDA (tests/model/test_preload.py checks that no ``torch.cuda`` function is
  called): Ray sets a replica's CUDA_VISIBLE_DEVICES when it is placed, and CUDA reads it once.
- **No race:** the worker's own heavy imports wait for the thread first (:func:`wait`, called by
  startup.remember_installed_packages: the GPU worker's start, the CPU prompt encoder's load, the CLI), so two
  threads never import the same modules at once. Those of Serve's own actors (the controller, the proxy, the
  ingress) share none with it but the standard library's and pydantic's, which neither imports the other's.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("zimage_serve")
_state: dict = {"thread": None, "seconds": None, "error": None}
_lock = threading.Lock()


def _import() -> None:
    t = time.perf_counter()
    try:
        from .startup import remember_installed_packages  # (the node's memo first: it saves diffusers' own scan)

        remember_installed_packages(wait=False)
        from . import engine  # noqa: F401 (what a replica imports: torch, diffusers, transformers, peft)
    except BaseException as e:  # noqa: BLE001 (a head start, nothing more: the replica imports it itself)
        _state["error"] = f"{type(e).__name__}: {e}"
    _state["seconds"] = time.perf_counter() - t


def start() -> bool:
    """Import the model layer in a thread of this process, where the environment says so (see the module's
    docstring); whether it started (once per process)."""
    from ..settings import environment  # (this module imports no torch: the thread does)

    with _lock:
        if _state["thread"] is not None or not environment().preload:
            return False
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
    out = {"preload_s": round(_state["seconds"], 2), "preload_waited_s": round(time.perf_counter() - t, 2)}
    if _state["error"]:
        out["preload_error"] = _state["error"][:300]
    return out
