"""`zimage-serve serve` as a new user runs it: a real process, real Ray, real HTTP, then SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conftest import free_port, run_cli
from test_startup_output import lines_of, message, repeated


@pytest.mark.ray  # its own Ray, in the process it starts
def test_serve_command_serves_then_shuts_down_cleanly(tiny_path, tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    env = dict(os.environ, RAY_ADDRESS="")  # its own local cluster
    proc = subprocess.Popen([sys.executable, "-m", "zimage_serve.cli", "serve", "--port", str(port), "--jobs-dir",
                             str(tmp_path / "jobs"), "--webhook-allow", "127.0.0.0/8"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                # what a user waits for: the examples printed (/readyz can turn 200 a moment before)
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200 and \
                        "curl" in open(tmp_path / "serve.log").read():
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, open(tmp_path / "serve.log").read()[-3000:]
            time.sleep(1)
        r = httpx.post(f"{url}/generate", json={"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "seed": 1},
                       timeout=120)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert httpx.get(f"{url}/readyz", timeout=10).json()["random_weights"] is True
        models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        assert [(m["id"], m["random_weights"]) for m in models] == [("z-image-tiny-random", True)]  # says what is served
        assert httpx.get(f"{url}/nope", timeout=10).status_code == 404
        # the jobs API, kept where --jobs-dir says; the playground page
        job = httpx.post(f"{url}/v1/jobs", json={"prompt": "a lighthouse", "size": "64x64", "seed": 2}, timeout=60).json()
        assert (tmp_path / "jobs" / job["id"] / "request.json").exists()
        assert "<html" in httpx.get(f"{url}/", timeout=10).text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        output = open(tmp_path / "serve.log").read()
        assert "curl" in output and "shutting down" in output
        assert "random test weights" in output
        # a clean start and stop: what a user needs, nothing twice, none of Ray's noise
        assert "http_options" not in output and "will not be applied" not in output
        assert "graceful_shutdown failed" not in output and "(raylet)" not in output
        assert "Cannot deregister autoscaling state" not in output
        assert "should be kept in float32" not in output and "Loading weights" not in output
        assert "GET /nope 404" in output and " GET / 404" not in output  # the access log names the path asked
        assert sum(message(line).startswith("plan: ") for line in lines_of(output)) == 1
        assert output.count("serving the embedded tiny checkpoint") == 1
        assert not {m for m in repeated(output) if "Failed to get queue length" not in m}, repeated(output)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_with_a_bad_config_fails_in_one_line_before_ray_starts(tmp_path, capsys):
    """In this process (not marked ray: starting Ray here would fail the test, see conftest.py)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - import_path: zimage_serve.app:build_app\n    args: {modle: tiny}\n")
    code, out, err = run_cli(capsys, "serve", "--config", str(bad))
    assert code == 2 and err == "zimage-serve: error: invalid zimage-serve config: modle: Extra inputs are not permitted\n"
    code, out, err = run_cli(capsys, "serve", "--webhook-allow", "10.0.0.0/33")
    assert code == 2 and "jobs.webhook_allow" in err and "'10.0.0.0/33'" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "serve", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and err == f"zimage-serve: error: can't read --config {tmp_path / 'missing.yaml'}: No such file or directory\n"
