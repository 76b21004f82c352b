"""The test session's Ray cluster, one for every pytest-xdist worker, and the apps the workers share on it.

Run as a script (``python ray_session.py STATE_FILE PORT OWNER_PID``), this module is the keeper: it starts a local
cluster (the machine's real CPUs, 4 logical GPUs to exercise ``num_gpus`` placement) with Serve's HTTP proxy on
PORT, writes ``{"address", "url", "pid"}`` to STATE_FILE, and keeps the cluster until it is sent SIGTERM or SIGINT,
or OWNER_PID (the pytest process that outlives every worker) is gone. Imported (tests/conftest.py re-exports its
hooks and fixture), it is the other side: the first worker to need the cluster starts the keeper, every worker
connects to it as a driver, and the session's shared apps (main, lora, secure) are deployed once, by the first
worker to ask (``shared_app``). Serve's replicas then belong to the keeper's job: their output is in the shared
directory's ray.log, which a failed session keeps and names.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from filelock import FileLock

_FAILED = pytest.StashKey[bool]()


def runtime_env() -> dict:
    """The session's Ray jobs' runtime env (the keeper's and each worker's): the test cache, the CPU."""
    return {"env_vars": {"ZIMAGE_CACHE_DIR": os.environ["ZIMAGE_CACHE_DIR"], "ZIMAGE_DEVICE": "cpu"}}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_dir() -> Path:
    """The directory the session's processes share (pytest_configure)."""
    return Path(os.environ["ZIMAGE_TEST_SESSION_DIR"])


@contextmanager
def only_one(name: str):
    """Held by one worker at a time: what the first does, the others find done."""
    with FileLock(str(shared_dir() / f"{name}.lock")):
        yield


def pytest_configure(config):
    """In the process that outlives the workers (pytest-xdist's controller, or the only one): a directory for what
    the workers share (the session's Ray cluster, its apps), which its workers find in the environment."""
    if not hasattr(config, "workerinput"):
        os.environ["ZIMAGE_TEST_SESSION_DIR"] = tempfile.mkdtemp(prefix="zimage-tests-")
        os.environ["ZIMAGE_TEST_OWNER_PID"] = str(os.getpid())


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_FAILED] = exitstatus not in (0, 5)  # 5: no tests collected


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not hasattr(config, "workerinput") and config.stash.get(_FAILED, False) and (shared_dir() / "ray.log").exists():
        terminalreporter.write_line(f"the session's Ray cluster (its replicas' output): {shared_dir() / 'ray.log'}")


def pytest_unconfigure(config):
    """The session's Ray cluster, if a test started it, is stopped when every worker is done; the shared directory
    is removed unless a test failed (its ray.log has the cluster's output, which the failing test did not get)."""
    if hasattr(config, "workerinput") or "ZIMAGE_TEST_SESSION_DIR" not in os.environ:
        return
    shared = shared_dir()
    state = shared / "ray.json"
    if state.exists():
        pid = json.loads(state.read_text())["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while state.exists() and time.monotonic() < deadline:  # it removes it once its cluster is down
                time.sleep(0.1)
            if state.exists():
                os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not config.stash.get(_FAILED, False):
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_cluster():
    """A real local Ray cluster with Serve's HTTP proxy, one a session, shared by every worker: the first to need it
    starts the keeper (this module as a script), which keeps it until pytest_unconfigure; each worker connects to it
    as a driver. The machine's real CPUs (the test apps' replicas reserve a tenth of one each, so several apps fit on
    2 cores), and 4 logical GPUs to exercise num_gpus placement."""
    import ray

    state = shared_dir() / "ray.json"
    with only_one("ray"):
        if not state.exists():
            log_path = shared_dir() / "ray.log"  # the cluster's workers' output: Serve's replicas' logs
            with open(log_path, "w") as log:
                # without token authentication, which the workers' drivers would need the token for: a cluster of
                # this machine's tests, for the session
                keeper = subprocess.Popen([sys.executable, __file__, str(state),
                                           str(free_port()), os.environ["ZIMAGE_TEST_OWNER_PID"]],
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                          env=dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ADDRESS=""))
            deadline = time.monotonic() + 180
            while not state.exists():
                assert keeper.poll() is None and time.monotonic() < deadline, \
                    f"the test cluster did not start: {log_path.read_text()[-3000:]}"
                time.sleep(0.1)
    cluster = json.loads(state.read_text())
    # log_to_driver off: the shared apps' replicas log to the cluster's files, not to this worker's stderr, where
    # whichever test runs then would capture them (a CI run saw an Ingress access line in a CLI test's stderr)
    ray.init(address=cluster["address"], logging_level="WARNING", log_to_driver=False,
             runtime_env=runtime_env())
    yield cluster["url"]
    from ray.serve import context

    if context._cached_client_from_current_session():  # (a worker that made no handle has none: nothing to look up)
        # this worker's Serve handles: their routers' threads push metrics until shut down, and a push after
        # ray.shutdown() started a Ray of its own in the exiting worker
        context._global_client.shutdown_cached_handles()
    ray.shutdown()  # this worker's connection: the cluster stays for the others


def deploy(serve_cluster: str, name: str, config: dict, app=None) -> str:
    """Deploy the real application (or ``app``, built from ``config`` otherwise) under /name; its base URL."""
    from ray import serve

    from zimage_serve.app import build_app

    serve.run(app if app is not None else build_app(config), name=name, route_prefix=f"/{name}", blocking=False)
    return f"{serve_cluster}/{name}"


def undeploy(name: str) -> None:
    """Delete a test app without waiting for its replicas to stop (each delete waited 2-3 s for Serve's
    graceful-shutdown loop): their CPUs and logical GPUs come back while the next test runs."""
    from ray import serve

    serve.delete(name, _blocking=False)


def shared_app(serve_cluster: str, name: str, config) -> str:
    """The session's app ``name``, deployed by the first worker to ask (``config()``: its config); its base URL."""
    from ray import serve

    with only_one(f"app-{name}"):
        if name not in serve.status().applications:
            return deploy(serve_cluster, name, config())
    return f"{serve_cluster}/{name}"


# ---- the keeper -----------------------------------------------------------------------------------------

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
             runtime_env=runtime_env())
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
