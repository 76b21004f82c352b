"""settings: the one API-keys parser (blank, ``#`` and indented ``#`` lines are never keys, for the environment's
file and the config's ``api_keys_file`` alike) and a production config with no fault-injection knobs."""

import re
import time
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from zimage_serve.core.errors import ZImageError
from zimage_serve.settings import AppConfig, api_keys, environment, parse_api_keys, read_api_keys_file

ROOT = Path(__file__).resolve().parents[1]
KEYS_FILE = "# ops team\nsecret-one\n\n   # an indented comment\n\t# a tabbed one\n  secret-two  \n   \n#secret-off\n"


def test_the_parser_skips_blank_and_comment_lines_indented_or_not():
    assert parse_api_keys(KEYS_FILE) == ("secret-one", "secret-two")
    assert parse_api_keys("") == () and parse_api_keys("\n  \n# only comments\n   # here\n") == ()
    assert parse_api_keys("a\r\nb\r\n") == ("a", "b")


def test_the_environments_keys_file_and_variable(tmp_path, monkeypatch):
    path = tmp_path / "keys.txt"
    path.write_text(KEYS_FILE)
    monkeypatch.setenv("ZIMAGE_API_KEYS", " env-key , ,other ")
    monkeypatch.setenv("ZIMAGE_API_KEYS_FILE", str(path))
    assert environment().api_keys == ("env-key", "other", "secret-one", "secret-two")


def test_the_configs_keys_file_is_read_the_same_way(tmp_path, monkeypatch):
    monkeypatch.delenv("ZIMAGE_API_KEYS", raising=False)
    monkeypatch.delenv("ZIMAGE_API_KEYS_FILE", raising=False)
    path = tmp_path / "keys.txt"
    path.write_text(KEYS_FILE)
    assert read_api_keys_file(path) == ("secret-one", "secret-two")
    assert api_keys(AppConfig(api_keys_file=str(path))) == ("secret-one", "secret-two")
    assert api_keys(AppConfig()) == ()
    monkeypatch.setenv("ZIMAGE_API_KEYS", "from-env")
    assert api_keys(AppConfig(api_keys_file=str(path))) == ("from-env", "secret-one", "secret-two")


def test_an_unreadable_keys_file_is_one_clear_error(tmp_path):
    with pytest.raises(ZImageError, match="can't read the API keys file .*missing.txt"):
        api_keys(AppConfig(api_keys_file=str(tmp_path / "missing.txt")))


def test_a_deployed_app_refuses_an_indented_comment_line_as_a_key(keyed_app):
    """Over real HTTP: the ingress reads the config's api_keys_file with the same parser, so the text of an
    indented comment line is no key (401) while the file's real keys are (200). The session's keyed app
    (tests/conftest.py): its file has ``# ops``, a key, ``  # a comment, not a key``, a blank line and a key."""
    import httpx

    url, keys = keyed_app
    deadline = time.monotonic() + 180
    while True:  # the ingress is up once it answers with its own statuses
        try:
            r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {keys[0]}"}, timeout=30)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the app never answered"
        time.sleep(0.5)
    assert httpx.get(f"{url}/v1/models", headers={"X-API-Key": keys[1]}, timeout=30).status_code == 200
    for token in ("# a comment, not a key", "  # a comment, not a key", "# ops", "#"):
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", token
        assert httpx.get(f"{url}/v1/models", headers={"X-API-Key": token.strip()}, timeout=30).status_code == 401


# ---- no fault injection in the production config ---------------------------------------------------------

def _serve_config_args() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]


def test_the_serve_config_schema_refuses_inject_oom():
    args = _serve_config_args()
    AppConfig.model_validate(args)  # the file as it is
    with pytest.raises(ValidationError) as e:
        AppConfig.model_validate({**args, "generator": {**args["generator"], "inject_oom": 1}})
    assert e.value.errors()[0]["type"] == "extra_forbidden" and e.value.errors()[0]["loc"] == ("generator", "inject_oom")
    with pytest.raises(ValidationError):
        AppConfig.model_validate({**args, "inject_oom": 1})


def test_no_field_of_the_config_is_about_faults():
    def fields(model: type[BaseModel], prefix: str = ""):
        for name, field in model.model_fields.items():
            yield prefix + name, field.description or ""
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from fields(field.annotation, f"{prefix}{name}.")

    found = list(fields(AppConfig))
    assert "generator.num_cpus" in dict(found)  # the walk reaches the nested options
    about_faults = re.compile(r"(^|[^a-z])(inject|fault)", re.I)  # not "default"
    suspicious = [n for n, d in found if about_faults.search(n) or about_faults.search(d)]
    assert not suspicious, suspicious


def test_defaults_the_bounds_would_refuse_are_config_errors():
    """A config whose default steps exceed max_steps, or whose body cap can't hold the longest prompts the schema
    allows, would refuse schema-valid requests: it is refused when deployed instead."""
    with pytest.raises(ValueError, match="default_steps must be <= max_steps"):
        AppConfig(default_steps=60, max_steps=50)
    with pytest.raises(ValueError, match="max_body_bytes must be at least"):
        AppConfig(max_prompt_chars=100_000, max_body_bytes=1_000_000)
    assert AppConfig().max_body_bytes >= 24 * AppConfig().max_prompt_chars
