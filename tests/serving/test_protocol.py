"""The wire types built from a deployment's bounds (protocol.wire_types), without HTTP or Ray: their JSON
schema states every bound, and a body is valid against that schema exactly when validation accepts it."""

import asyncio
import sys

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from zimage_serve.core.bounds import SEED_MAX, Bounds, check_prompt
from zimage_serve.core.errors import InvalidInput
from zimage_serve.serving.http import create_api
from zimage_serve.serving.protocol import (NEGATIVE_PROMPT_PATTERN, PROMPT_PATTERN, GenerateRequest, ImagesRequest,
                                           ModelList, max_seed, sides, size_pattern, wire_types)
from zimage_serve.serving.service import ImageService
from zimage_serve.settings import AppConfig

BOUNDS = Bounds(min_side=64, max_side=256, max_steps=50, max_images=4, max_prompt_chars=10_000)
WIRE = wire_types(BOUNDS, "z-image-turbo")


def _props(model) -> dict:
    return model.model_json_schema()["properties"]


def _bounded(prop: dict) -> dict:
    """The non-null branch of an ``X | None`` property."""
    return next((s for s in prop.get("anyOf", []) if s.get("type") != "null"), prop)


def test_the_schema_states_every_bound():
    images, generate = _props(WIRE.images), _props(WIRE.generate)
    for props in (images, generate):
        assert props["prompt"]["maxLength"] == 10_000 and props["prompt"]["pattern"] == PROMPT_PATTERN
        negative = _bounded(props["negative_prompt"])
        assert negative["maxLength"] == 10_000 and negative["pattern"] == NEGATIVE_PROMPT_PATTERN
        steps = _bounded(props["num_inference_steps"])
        assert (steps["minimum"], steps["maximum"]) == (1, 50)
        assert props["guidance_scale"]["minimum"] == 0 and props["guidance_scale"]["maximum"] == 30
    for side in ("width", "height"):
        s = _bounded(generate[side])
        assert (s["type"], s["minimum"], s["maximum"], s["multipleOf"]) == ("integer", 64, 256, 16)
    assert (images["n"]["minimum"], images["n"]["maximum"]) == (1, 4)
    assert images["size"]["pattern"] == size_pattern(BOUNDS) and images["size"]["default"] == "auto"
    # image i uses seed + i: the first seed leaves room for n images under torch's signed 64-bit bound
    assert _bounded(images["seed"])["maximum"] == 2**63 - 4 == max_seed(BOUNDS, 4)
    assert _bounded(generate["seed"])["maximum"] == SEED_MAX == 2**63 - 1
    assert _bounded(images["model"])["const"] == "z-image-turbo"
    assert images["response_format"]["const"] == "b64_json"
    for model in (WIRE.images, WIRE.generate):
        assert model.model_json_schema()["additionalProperties"] is False


def test_the_types_are_per_deployment_and_cached():
    other = wire_types(Bounds(max_side=1024, max_images=2, max_prompt_chars=50))
    assert _props(other.images)["prompt"]["maxLength"] == 50 and _props(other.images)["n"]["maximum"] == 2
    assert _bounded(_props(other.generate)["width"])["maximum"] == 1024
    assert _props(other.images)["model"]["anyOf"][0] == {"maxLength": 256, "type": "string"}  # no name: any
    assert wire_types(BOUNDS, "z-image-turbo") is WIRE
    assert issubclass(WIRE.images, ImagesRequest) and issubclass(WIRE.generate, GenerateRequest)


def test_every_whitespace_character_is_in_the_patterns_class():
    assert not any(chr(c).isspace() for c in range(0x10000, sys.maxunicode + 1))  # _WHITESPACE: the BMP's


def test_sides_and_the_size_pattern():
    assert sides(BOUNDS) == list(range(64, 257, 16))
    assert sides(Bounds(min_side=50, max_side=100)) == [64, 80, 96]
    valid = jsonschema_rs.validator_for({"type": "string", "pattern": size_pattern(BOUNDS)})
    for size in ("auto", "64x64", "256x64", "112x240"):
        assert valid.is_valid(size) and WIRE.images.model_validate({"prompt": "x", "size": size}).size == size
    for size in ("65x64", "48x64", "272x64", "64x", "64X64", " 64x64", "064x64", "64x64\n", "auto ", ""):
        assert not valid.is_valid(size), size
        with pytest.raises(ValidationError):
            WIRE.images.model_validate({"prompt": "x", "size": size})


# ---- schema-valid exactly when accepted ---------------------------------------------------------------

SCHEMAS = {name: jsonschema_rs.validator_for(model.model_json_schema())
           for name, model in (("images", WIRE.images), ("generate", WIRE.generate))}
TEXT = st.text(st.sampled_from(["a", "é", "🎨", " ", "\t", "\n", "\x00", "\x1c", "\x85", "\u3000", "\u2029",
                                "\ufeff", "\u200b", "\u180e"]), max_size=6)
VALUE = (st.none() | st.booleans() | st.integers(-5, 300) | st.integers(2**63 - 8, 2**63 + 8)
         | st.floats(allow_nan=False, allow_infinity=False, min_value=-5, max_value=300)
         | st.sampled_from([64.0, 4.0, 8.0, 64.5]) | TEXT
         | st.sampled_from(["auto", "64x64", "65x64", "256x256", "png", "gif", "b64_json", "url", "z-image-turbo"]))
# per field: values it may take, most of them valid, and any VALUE
FIELDS = {
    "prompt": st.just("a cat") | TEXT, "negative_prompt": st.just("blur") | TEXT,
    "seed": st.integers(0, 2**63 - 1) | st.integers(2**63 - 6, 2**63 + 1),
    "num_inference_steps": st.sampled_from([1, 8, 50, 8.0, 0, 51]), "guidance_scale": st.floats(0, 31),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif"]), "n": st.integers(0, 5),
    "size": st.sampled_from(["auto", "64x64", "256x80", "65x64", "48x48", "272x64"]),
    "model": st.sampled_from(["z-image-turbo", "dall-e-3"]), "response_format": st.sampled_from(["b64_json", "url"]),
    "stream": st.booleans(), "width": st.sampled_from([64, 80, 256, 65, 272]),
    "height": st.sampled_from([64, 64.0, 72, 256]), "output_compression": st.integers(-1, 101),
    "user": st.text(max_size=3) | st.just("u" * 257), "colour": VALUE,
}


@st.composite
def bodies(draw):
    """A valid prompt and up to three fields, each a value of its own kind or any VALUE."""
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True))
    body = {"prompt": "a cat"}
    for name in names:
        body[name] = draw(st.one_of(FIELDS[name], FIELDS[name], FIELDS[name], VALUE))
    return body


def _accepts(model, body) -> bool:
    try:
        model.model_validate(body)
        return True
    except ValidationError:
        return False


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies() | st.lists(VALUE, max_size=2) | VALUE)
def test_a_body_is_schema_valid_exactly_when_it_is_accepted(body):
    for name, model in (("images", WIRE.images), ("generate", WIRE.generate)):
        assert SCHEMAS[name].is_valid(body) == _accepts(model, body), (name, body)


@settings(max_examples=1000, deadline=None)
@given(text=TEXT)
def test_the_prompt_patterns_say_what_check_prompt_checks(text):
    try:
        check_prompt(text, BOUNDS)
        ok = True
    except InvalidInput:
        ok = False
    assert _accepts(WIRE.generate, {"prompt": text}) == ok
    assert _accepts(WIRE.generate, {"prompt": "x", "negative_prompt": text}) == (ok or text == "")


def test_types_are_the_schemas_not_pythons():
    m = WIRE.images
    assert m.model_validate({"prompt": "x", "n": 4.0}).n == 4  # 4.0 is a JSON Schema integer
    for bad in ({"n": "4"}, {"n": True}, {"n": 4.5}, {"stream": 0}, {"guidance_scale": "1"}, {"seed": 2**63 - 3},
                {"prompt": 5}, {"colour": "red"}, {"model": "dall-e-3"}, {"response_format": "url"}):
        assert not _accepts(m, {"prompt": "x", **bad}), bad
    assert WIRE.generate.model_validate({"prompt": "x", "seed": 2**63 - 1}).seed == 2**63 - 1
    assert not _accepts(WIRE.generate, {"prompt": "x", "seed": 2**63})


# ---- the service: friendly errors, and every schema-valid seed served -----------------------------------

async def _never(*a, **k):
    raise AssertionError("validation must not reach the backends")


SERVICE = ImageService(AppConfig(max_side=256, default_size="64x64", max_images=4), encode=_never, generate=_never,
                       generator_info=_never, is_retryable=lambda e: False)


@pytest.mark.parametrize("body, param, code, words", [
    ({"prompt": "   "}, "prompt", "invalid_value", "must not be empty"),
    ({"prompt": "a\x00"}, "prompt", "invalid_value", "NUL"),
    ({"prompt": "a" * 10_001}, "prompt", "invalid_value", "the limit is 10000"),
    ({"prompt": "a", "negative_prompt": "\t"}, "negative_prompt", "invalid_value", "must not be empty"),
    ({"prompt": "a", "size": "1000x1000"}, "size", "invalid_value", "between 64 and 256"),
    ({"prompt": "a", "model": "dall-e-3"}, "model", "model_not_found", "'z-image-turbo'"),
    ({"prompt": "a", "response_format": "url"}, "response_format", "unsupported_value", "b64_json"),
    ({"prompt": "a", "n": 5}, "n", "invalid_value", "4"),
    ({"prompt": "a", "extra": 1}, "extra", "unknown_field", "unknown field"),
    ([1], None, "invalid_body", "JSON object"),
])
def test_refusals_name_the_field_in_words(body, param, code, words):
    with pytest.raises(InvalidInput) as e:
        SERVICE.request_from_images(body)
    assert (e.value.param, e.value.code) == (param, code) and words in str(e.value), str(e.value)
    assert "\\x" not in str(e.value)  # no regex in the message


def test_the_largest_schema_valid_seed_is_served_for_every_image():
    request, _ = SERVICE.request_from_images({"prompt": "a", "n": 4, "seed": 2**63 - 4})
    assert [image.seed for image in request.images()] == [2**63 - 4, 2**63 - 3, 2**63 - 2, 2**63 - 1]
    assert SERVICE.request_from_generate({"prompt": "a", "seed": 2**63 - 1})[0].seed == 2**63 - 1


def test_openapi_states_the_bounds_as_exact_integers():
    """FastAPI's OpenAPI model reads bounds as floats: 2**63 - 4 would be published as 2**63."""
    schema = create_api(SERVICE).openapi()
    generate = schema["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    images = schema["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert generate == SERVICE.wire.generate.model_json_schema()
    assert images == SERVICE.wire.images.model_json_schema()
    seed = _bounded(images["properties"]["seed"])["maximum"]
    assert seed == 2**63 - 4 and type(seed) is int
    assert type(_bounded(generate["properties"]["width"])["multipleOf"]) is int
    models = schema["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert models == {"$ref": "#/components/schemas/ModelList"}
    for path in ("/generate", "/v1/images/generations"):
        assert {"400", "413", "415", "503", "504"} <= set(schema["paths"][path]["post"]["responses"])
        assert "401" not in schema["paths"][path]["post"]["responses"]  # no API keys configured
    assert "401" in create_api(SERVICE, api_keys=("k",)).openapi()["paths"]["/generate"]["post"]["responses"]


def test_models_is_a_model_list():
    async def info():
        return {"ready": True, "model": "/ckpt/tiny", "random_weights": True}

    svc = ImageService(AppConfig(model="tiny"), encode=_never, generate=_never, generator_info=info,
                       is_retryable=lambda e: False)
    body = asyncio.run(svc.models())
    assert ModelList.model_validate(body).data[0].id == "z-image-tiny-random"
    assert body["data"][0] == {"id": "z-image-tiny-random", "object": "model", "created": 0,
                               "owned_by": "zimage-serve", "root": "/ckpt/tiny", "random_weights": True}
    assert "random_weights" not in asyncio.run(SERVICE.models())["data"][0]  # no generator has reported
