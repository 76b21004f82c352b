"""The HTTP contract of the real application (Ray Serve, real HTTP, the tiny checkpoint): /openapi.json
states the deployment's real bounds, a body that is not JSON is a 415, a 405 says what is allowed, and
schemathesis finds nothing with every one of its default checks."""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from conftest import tiny_app_config
from zimage_serve.serving.protocol import PROMPT_PATTERN, size_pattern
from zimage_serve.settings import AppConfig

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def config(tiny_path) -> AppConfig:
    """The main test application's config (as the app_url fixture deploys it)."""
    return AppConfig.model_validate(tiny_app_config(tiny_path, generator={"num_gpus": 1}))


@pytest.fixture(scope="module")
def openapi(app_url) -> dict:
    r = httpx.get(f"{app_url}/openapi.json", timeout=30)
    assert r.status_code == 200
    return r.json()


def _body(openapi: dict, path: str) -> dict:
    return openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]


def _bounded(prop: dict) -> dict:
    return next((s for s in prop.get("anyOf", []) if s.get("type") != "null"), prop)


def test_openapi_states_the_deployments_bounds(openapi, config):
    assert (config.max_prompt_chars, config.min_side, config.max_side, config.max_images, config.max_steps) == \
        (10_000, 64, 256, 4, 50)  # the test config, as the numbers below say it
    images, generate = _body(openapi, "/v1/images/generations"), _body(openapi, "/generate")
    for props in (images, generate):
        assert props["prompt"]["maxLength"] == 10_000 and props["prompt"]["pattern"] == PROMPT_PATTERN
        assert _bounded(props["negative_prompt"])["maxLength"] == 10_000
        steps = _bounded(props["num_inference_steps"])
        assert (steps["minimum"], steps["maximum"]) == (1, 50)
    for side in ("width", "height"):
        s = _bounded(generate[side])
        assert (s["minimum"], s["maximum"], s["multipleOf"]) == (64, 256, 16)
    assert (images["n"]["minimum"], images["n"]["maximum"]) == (1, 4)
    assert images["size"]["pattern"] == size_pattern(config.bounds)
    assert _bounded(images["seed"])["maximum"] == 2**63 - 4 and _bounded(generate["seed"])["maximum"] == 2**63 - 1
    assert _bounded(images["model"])["const"] == config.model_name
    for path in ("/generate", "/v1/images/generations"):
        assert {"200", "400", "413", "415", "503", "504"} <= set(openapi["paths"][path]["post"]["responses"])


def test_the_bounds_are_enforced_exactly(app_url):
    ok = {"prompt": "bounds", "num_inference_steps": 1}
    r = httpx.post(f"{app_url}/generate", json={**ok, "width": 256, "height": 64, "seed": 2**63 - 1}, timeout=60)
    assert r.status_code == 200 and r.headers["x-seed"] == str(2**63 - 1)
    r = httpx.post(f"{app_url}/v1/images/generations", json={**ok, "n": 4, "seed": 2**63 - 4}, timeout=120)
    assert r.status_code == 200 and [d["seed"] for d in r.json()["data"]] == [2**63 - 4 + i for i in range(4)]
    for path, body, param in [("/generate", {**ok, "width": 272}, "width"),
                              ("/generate", {**ok, "width": "64"}, "width"),
                              ("/v1/images/generations", {**ok, "seed": 2**63 - 3}, "seed"),
                              ("/v1/images/generations", {**ok, "prompt": "x" * 10_001}, "prompt"),
                              ("/v1/images/generations", {**ok, "num_inference_steps": 51}, "num_inference_steps")]:
        r = httpx.post(f"{app_url}{path}", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)


@pytest.mark.parametrize("path", ["/generate", "/v1/images/generations"])
def test_a_body_that_is_not_json_is_415_in_the_error_shape(app_url, path):
    body = b'{"prompt": "x"}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = httpx.post(f"{app_url}{path}", content=body, headers={"Content-Type": content_type}, timeout=30)
        assert r.status_code == 415, (content_type, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "unsupported_media_type"
        assert "application/json" in error["message"]
    r = httpx.post(f"{app_url}{path}", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "-H 'Content-Type: application/json'" in r.json()["error"]["message"]  # what curl -d sends


def test_json_with_a_charset_or_without_a_content_type_is_read(app_url):
    body = b'{"prompt": "no content type", "num_inference_steps": 1}'
    r = httpx.post(f"{app_url}/generate", content=body, headers={"Content-Type": "application/json; charset=utf-8"},
                   timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.post(f"{app_url}/generate", content=body, timeout=60)  # bytes: httpx sends no Content-Type
    assert "content-type" not in r.request.headers and r.status_code == 200, r.text


def test_a_405_says_which_methods_are_allowed(app_url):
    r = httpx.get(f"{app_url}/generate")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.delete(f"{app_url}/v1/models")
    assert r.status_code == 405 and {m.strip() for m in r.headers["allow"].split(",")} >= {"GET"}


# ---- schemathesis, every default check ---------------------------------------------------------------
# The checks (schemathesis 4): not_a_server_error, status_code_conformance, content_type_conformance,
# response_headers_conformance, response_schema_conformance, positive_data_acceptance,
# negative_data_rejection, missing_required_header, unsupported_method (and the stateful ones, which need
# links this API has none of). Its phases here: examples, coverage (boundaries, undeclared methods and media
# types) and fuzzing, positive and negative (max_examples bounds fuzzing only: 5 a operation, both modes;
# tests/serving/test_reliability.py fuzzes the bodies further with hypothesis).
# Some 350 requests, most of the image-generating ones the coverage phase's boundaries.

@pytest.fixture(scope="module")
def api_schema(app_url):
    schema = schemathesis.openapi.from_url(f"{app_url}/openapi.json")
    schema.config.base_url = app_url
    return schema


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis 4.32's from_fixture reads ``request.node._nodeid``, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


contract = schemathesis.pytest.from_fixture("api_schema")


@contract.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_passes_every_default_check(case):
    """Every check on every operation, but one: on the edits route, a body that is valid against the schema is
    not always an edit to accept, because no schema can say "the bytes of a decodable image" (schemathesis sends
    random bytes as the file, random base64 as the JSON image): those are 400s naming ``image``, which
    tests/serving/test_edits.py checks, with the images that are accepted."""
    from schemathesis.checks import positive_data_acceptance

    excluded = [positive_data_acceptance] if case.path == "/v1/images/edits" else []
    case.call_and_validate(timeout=120, excluded_checks=excluded)
