"""``zimage-serve serve --config FILE`` honours the whole file as ``serve run FILE`` does: http_options'
request_timeout_s and keep_alive_timeout_s and the logging_config reach Serve, and 'auto' is settled on the
cluster, so no "serving tiny" warning comes from the command before Ray starts. One real process, its own Ray
cluster (in its own temp dir, to read its logs), real HTTP."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import free_port

REQUEST_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 2
TINY_WARNING = "serving the embedded tiny checkpoint"


def _config(path: Path) -> None:
    path.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": 1, "request_timeout_s": REQUEST_TIMEOUT_S,
                         "keep_alive_timeout_s": KEEP_ALIVE_S},  # port: the command line's --port wins
        "logging_config": {"encoding": "JSON", "log_level": "DEBUG", "enable_access_log": True},
        "applications": [{
            "name": "zimage", "route_prefix": "/", "import_path": "zimage_serve.app:build_app",
            # the generator encodes the prompts and no jobs are served: Ingress and Generator only, two processes
            # fewer to start on the 2 cores (test_serve_cli.py serves the whole app)
            "args": {"model": "auto", "default_size": "64x64", "max_side": 1024, "jobs": {"enabled": False},
                     "generator": {"plan_size": "256x256", "graceful_shutdown_timeout_s": 5, "encode_on": "gpu"}},
        }],
    }))


def _closed_after_idle(port: int, limit: float = 20.0) -> float:
    """Seconds an idle keep-alive connection stays open after a response (the server closes it), at most limit."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("connection", "keep-alive").lower() != "close"
    response.read()
    t0 = time.monotonic()
    conn.sock.settimeout(limit)
    try:
        assert conn.sock.recv(1) == b""  # the server closed it
    except socket.timeout:
        return limit
    finally:
        conn.close()
    return time.monotonic() - t0


@pytest.mark.ray
def test_serve_config_file_options_reach_serve(tmp_path):
    config = tmp_path / "serve.yaml"
    _config(config)
    port = free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="zr", dir="/tmp"))  # short: Ray's socket paths live under it
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w+")
    env = dict(os.environ, RAY_ADDRESS="", RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "zimage_serve.cli", "serve", "--config", str(config), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        assert httpx.get(f"{url}/readyz", timeout=10).json()["random_weights"] is True  # 'auto' without GPUs: tiny

        # keep_alive_timeout_s: the proxy closes an idle connection after it (Serve's default is 90 s)
        idle = _closed_after_idle(port)
        assert KEEP_ALIVE_S - 0.5 <= idle < KEEP_ALIVE_S + 6, idle

        # logging_config: the replicas' log files are JSON records, DEBUG ones among them
        logs = list(ray_tmp.glob("ray/session_*/logs/serve/replica_zimage_*.log"))
        assert logs, sorted(p.name for p in ray_tmp.glob("ray/session_*/logs/serve/*"))
        records = [json.loads(line) for p in logs for line in p.read_text().splitlines() if line.strip()]
        assert records and all("levelname" in r and "message" in r for r in records)
        assert "DEBUG" in {r["levelname"] for r in records}

        # request_timeout_s: a request that takes longer gets Serve's 408 after it
        t0 = time.monotonic()
        r = httpx.post(f"{url}/generate", json={"prompt": "slow", "width": 1024, "height": 1024, "num_inference_steps": 50},
                       timeout=120)
        took = time.monotonic() - t0
        assert r.status_code == 408 and f"timed out after {REQUEST_TIMEOUT_S}s" in r.text, (r.status_code, r.text[:300])
        assert took < REQUEST_TIMEOUT_S + 10, took

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        output = log_path.read_text()
        # the command itself never warned: 'auto' was settled on the cluster (a worker may say it, after Ray started)
        own = [line for line in output.splitlines() if TINY_WARNING in line and "pid=" not in line]
        assert not own, own
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_workers_get_the_logging_hook_through_the_environment_of_a_ray_started_here(monkeypatch):
    """A Ray that `zimage-serve serve` (or the batch job) starts inherits the hook from its environment (no
    runtime_env, whose agent each worker's start waits on; test_serve_cli.py shows the workers run it); a cluster
    joined gets the runtime_env. In this process, not marked ray: nothing starts Ray."""
    from zimage_serve.arguments import RAY_RUNTIME_ENV, ray_init_options

    for name in ("__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR", *RAY_RUNTIME_ENV["env_vars"]):
        monkeypatch.setenv(name, "")  # (so that the test's end restores them as they were)
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_init_options() == {"runtime_env": RAY_RUNTIME_ENV}
    assert "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR" not in os.environ
    monkeypatch.setenv("RAY_ADDRESS", "local")  # (Ray's word for a Ray of its own, whatever else runs here)
    assert ray_init_options() == {}
    assert os.environ["__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"] == "zimage_serve.arguments.setup_worker_logging"
    # the bars: off in each worker by the hook, on in the command itself where it has a terminal
    assert not any(name in os.environ for name in RAY_RUNTIME_ENV["env_vars"])
