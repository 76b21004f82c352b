"""The test session's Ray cluster, kept by a process of its own: ``python ray_keeper.py STATE_FILE PORT OWNER_PID``.

It starts a local cluster (the machine's real CPUs, 4 logical GPUs to exercise ``num_gpus`` placement) with Serve's
HTTP proxy on PORT, writes ``{"address", "url", "pid"}`` to STATE_FILE, and keeps the cluster until it is sent
SIGTERM or SIGINT, or OWNER_PID (the pytest process that outlives every worker) is gone. Every pytest-xdist worker
connects to it (tests/conftest.py's ``serve_cluster``), so the Ray tests spread over the workers with one cluster's
processes, not one cluster a worker.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(state_file: str, port: int, owner_pid: int) -> None:
    import ray
    from ray import serve

    ray.init(num_cpus=os.cpu_count(), num_gpus=4, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"ZIMAGE_CACHE_DIR": os.environ["ZIMAGE_CACHE_DIR"], "ZIMAGE_DEVICE": "cpu"}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    state = Path(state_file)
    tmp = state.with_name(f".{state.name}.tmp")
    tmp.write_text(json.dumps({"address": ray.get_runtime_context().gcs_address, "url": f"http://127.0.0.1:{port}",
                               "pid": os.getpid()}))
    os.replace(tmp, state)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own (a mask would be inherited
        signal.signal(sig, lambda *_: stop.set())  # by the cluster's processes, which then ignore SIGTERM)
    try:
        while not stop.wait(1.0) and _alive(owner_pid):
            pass
    finally:
        ray.shutdown()  # the cluster's processes, which this process started, go with it
        state.unlink(missing_ok=True)  # done: what pytest_unconfigure waits for
    os._exit(0)  # now: the interpreter's own teardown, with Ray loaded, took seconds more


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
