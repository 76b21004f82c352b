"""Faults and hostile input on the real app: replica deaths under load, injected OOM, a model that
can't load, CORS, keys in logs, property tests of request validation (schemathesis against the OpenAPI
schema: tests/serving/test_http_contract.py)."""

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import serve

from conftest import GENERATOR_ENCODES, deploy, tiny_app_config, undeploy
from zimage_serve.settings import AppConfig
from zimage_serve.core.errors import InvalidInput
from zimage_serve.serving.service import ImageService

BODY = {"prompt": "fault tolerance", "width": 64, "height": 64}


@pytest.fixture(scope="module")
def fault_url(serve_cluster, tiny_path):
    from zimage_serve.testing.faults import build_app_with_ooms

    config = tiny_app_config(tiny_path, cors_origins=["https://app.example"], generator={"max_batch_size": 1, **GENERATOR_ENCODES})
    yield deploy(serve_cluster, "faults", config, app=build_app_with_ooms(config, ooms=3))
    undeploy("faults")


def test_injected_oom_is_retried_then_503_and_the_replica_stays_healthy(fault_url):
    # budget 3: request 1 fails its batch and its single retry (503); request 2 fails once, then succeeds
    r1 = httpx.post(f"{fault_url}/generate", json=BODY, timeout=60)
    assert r1.status_code == 503 and r1.headers["retry-after"].isdigit()
    assert "out of GPU memory" in r1.json()["error"]["message"]
    r2 = httpx.post(f"{fault_url}/generate", json=BODY, timeout=60)
    assert r2.status_code == 200
    assert httpx.get(f"{fault_url}/readyz", timeout=30).status_code == 200
    assert httpx.post(f"{fault_url}/generate", json=BODY, timeout=60).status_code == 200


def test_cors_only_when_configured(fault_url, serve_cluster, tiny_path):
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(f"{fault_url}/generate", headers=headers)
    assert r.headers.get("access-control-allow-origin") == "https://app.example"
    r = httpx.options(f"{fault_url}/generate", headers={**headers, "Origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") is None


def _load(url, stop, codes, errors):
    with httpx.Client(timeout=120) as c:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                codes.append(c.post(f"{url}/generate", json={**BODY, "seed": i}).status_code)
            except httpx.HTTPError as e:  # a connection error would be a lost request
                errors.append(repr(e))


@pytest.fixture(scope="module")
def kill_url(serve_cluster, tiny_path):
    """One app for both kills: each case waits until Serve has replaced the replica it killed."""
    yield deploy(serve_cluster, "kill", tiny_app_config(tiny_path))
    undeploy("kill")


@pytest.mark.parametrize("deployment", ["Generator", "PromptEncoder"])
def test_killing_a_replica_under_load_loses_nothing(kill_url, deployment):
    app, url = "kill", kill_url
    handle = serve.get_deployment_handle(deployment, app_name=app)
    pid = handle.info.remote().result()["pid"]
    stop, codes, errors = threading.Event(), [], []
    threads = [threading.Thread(target=_load, args=(url, stop, codes, errors)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    before = len(codes)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    recovered = None
    while time.monotonic() - killed_at < 120:
        try:
            if handle.info.remote().result(timeout_s=5)["pid"] != pid:
                recovered = time.monotonic() - killed_at
                break
        except Exception:
            pass
        time.sleep(0.2)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    assert recovered is not None, "Serve did not replace the killed replica"
    assert not errors, errors[:3]
    assert set(codes) <= {200, 503}, set(codes)  # retried once, or a clean 503; never a 500
    assert codes[before:].count(200) > 0


def _every_log(logs: Path) -> dict[Path, bytes]:
    """Every file under the session's log directory, read whole. Ray moves a dead worker's files to old/ (other
    tests' apps end meanwhile): a file gone between the listing and its read is listed again where it went."""
    while True:
        try:
            return {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()}
        except FileNotFoundError:
            continue


def test_api_keys_never_reach_the_logs(keyed_app):
    """Its own app with keys (the keyed_app fixture): a good key (header and OpenAI client), a wrong one and
    a refused request, then every file of the Ray session's logs, serve/ included, is searched for them."""
    import openai
    import ray

    url, keys = keyed_app
    wrong = keys[0][::-1]  # a near miss, as a user's mistyped key: logged no more than the real ones
    good = {"Authorization": f"Bearer {keys[0]}"}
    assert httpx.post(f"{url}/generate", json=BODY, headers=good, timeout=60).status_code == 200
    assert httpx.post(f"{url}/generate", json={"prompt": ""}, headers=good, timeout=60).status_code == 400
    r = httpx.post(f"{url}/generate", json=BODY, headers={"Authorization": f"Bearer {wrong}"}, timeout=60)
    assert r.status_code == 401
    assert openai.OpenAI(base_url=f"{url}/v1", api_key=keys[1]).images.generate(prompt="x", size="64x64").data[0].b64_json
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    route = f"POST /{url.rsplit('/', 1)[1]}/generate"
    deadline = time.monotonic() + 30
    while True:  # the requests' own access-log lines have reached the files: the logs they could leak to
        contents = _every_log(logs)
        access = b"".join(data for p, data in contents.items() if p.parent.name == "serve" and "_Ingress_" in p.name)
        if all(f"{route} {code}".encode() in access for code in (200, 400, 401)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(f"{route} {code}".encode() in access for code in (200, 400, 401)), "the requests were not logged"
    leaked = {key: [str(p.relative_to(logs)) for p, data in contents.items() if key.encode() in data]
              for key in (*keys, wrong)}
    assert leaked == {key: [] for key in (*keys, wrong)}


# ---- property tests of request validation (no HTTP: the plain service class) ----------------

async def _never(*a, **k):
    raise AssertionError("validation must not reach the backends")

SERVICE = ImageService(AppConfig(max_side=256, default_size="128x128"), encode=_never, generate=_never, generator_info=_never,
                       is_retryable=lambda e: False)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                    max_leaves=8)
FIELDS = st.fixed_dictionaries({}, optional={
    "prompt": st.text(max_size=200) | JSON, "size": st.from_regex(r"\d{1,5}x\d{1,5}", fullmatch=True) | JSON,
    "width": st.integers(-10, 5000) | JSON, "height": st.integers(-10, 5000), "n": st.integers(-2, 200),
    "seed": st.integers(-(2**64), 2**64), "num_inference_steps": st.integers(-5, 2000),
    "guidance_scale": st.floats(allow_nan=True) | JSON, "output_format": st.sampled_from(["png", "jpeg", "gif", 3]),
    "negative_prompt": st.text(max_size=50)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=FIELDS | JSON)
def test_validation_gives_params_within_bounds_or_a_400(body):
    for parse in (SERVICE.request_from_images, SERVICE.request_from_generate):
        try:
            request, _ = parse(body)
        except InvalidInput as e:
            assert str(e)
            continue
        assert 64 <= request.width <= 256 and request.width % 16 == 0
        assert 64 <= request.height <= 256 and request.height % 16 == 0
        assert 1 <= request.steps <= 50 and 0 <= request.seed and request.seed + request.n - 1 < 2**63
        assert request.prompt.strip() and "\x00" not in request.prompt


@pytest.mark.parametrize("prompt, refused", [
    ("\x00bad", "prompt contains a NUL character"),
    ("a" * 100_000, "prompt is 100000 characters; the limit is 10000"),  # over max_prompt_chars
    ("\u202e\u200b" * 10, None),  # RTL override and zero-width space: text, kept as sent
    ("emoji 🎨" * 100, None),
])
def test_hostile_prompts(prompt, refused):
    for parse in (SERVICE.request_from_images, SERVICE.request_from_generate):
        if refused is None:
            assert parse({"prompt": prompt})[0].prompt == prompt
        else:
            with pytest.raises(InvalidInput) as e:
                parse({"prompt": prompt})
            assert e.value.param == "prompt" and str(e.value) == refused
