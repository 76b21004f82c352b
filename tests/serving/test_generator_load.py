"""A model that passes validation but fails while loading with someone else's error (diffusers', transformers':
a CUDA OOM during load is the same case) leaves the generator and the encoder up, not ready, with the reason in
/readyz, instead of crash-looping: over real HTTP, on a real Ray cluster."""

import json
import shutil
import time

import httpx
import pytest

from conftest import deploy, tiny_app_config, undeploy

APP = "load-fails"


def _broken_checkpoint(tiny_path, root):
    """The tiny checkpoint whose configs no longer match their weights: the headers and files are whole (it
    validates), but diffusers refuses the transformer's weights (ValueError) and transformers the text encoder's."""
    broken = root / "broken"
    shutil.copytree(tiny_path, broken)
    for component, key, value in (("transformer", "in_channels", lambda v: v // 2), ("text_encoder", "vocab_size", lambda v: v - 24)):
        path = broken / component / "config.json"
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, key: value(config[key])}))
    return broken


def _replicas() -> dict[str, set]:
    """Deployment -> the names of its live replica actors (a restarted replica comes back under a new name)."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {d: {n for n in names if f"{APP}#{d}#" in n} for d in ("Generator", "PromptEncoder")}


@pytest.mark.ray
def test_a_load_that_fails_with_a_foreign_error_stays_up_not_ready_with_the_reason(serve_cluster, tiny_path, tmp_path):
    from ray import serve

    from zimage_serve.model.sources import resolve

    broken = _broken_checkpoint(tiny_path, tmp_path)
    resolve(str(broken))  # it passes validation: the failure comes while loading
    url = deploy(serve_cluster, APP, tiny_app_config(tiny_path, model=str(broken)))
    try:
        deadline, r = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{url}/readyz", timeout=30)
                if "ValueError" in r.json().get("reason", ""):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
        assert r is not None and r.status_code == 503, r and r.text
        info = r.json()
        assert info["ready"] is False
        assert "ValueError" in info["reason"] and "expected shape" in info["reason"], info["reason"]

        r = httpx.post(f"{url}/generate", json={"prompt": "x", "width": 64, "height": 64}, timeout=60)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "not_ready" and error["type"] == "server_error" and "not loaded" in error["message"]
        assert "Error" in error["message"]  # the reason: transformers' RuntimeError (the encoder) or diffusers' ValueError
        assert r.headers.get("Retry-After")
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200

        # the replicas stay the ones that failed to load: alive, never replaced, the application RUNNING
        first = _replicas()
        assert all(len(names) == 1 for names in first.values()), first
        time.sleep(4.5)  # two of Serve's health checks (every 2 s): a failing one would have replaced them
        assert _replicas() == first
        app = serve.status().applications[APP]
        assert app.status == "RUNNING", app.message
        for name in ("Generator", "PromptEncoder"):
            assert app.deployments[name].replica_states == {"RUNNING": 1}, app.deployments[name]
        assert httpx.get(f"{url}/readyz", timeout=30).json()["reason"] == info["reason"]
    finally:
        undeploy(APP)
