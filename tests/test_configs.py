"""serve_config.yaml as Ray Serve reads it, and the application config's rules."""

from pathlib import Path

import pytest
import yaml

from zimage_serve.app import build_app
from zimage_serve.serving.builder import resolved_config
from zimage_serve.settings import AppConfig

ROOT = Path(__file__).resolve().parents[1]


def serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_serve_config_is_a_valid_serve_deploy_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config()) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(serve_config())
    (app,) = schema.applications
    assert app.import_path == "zimage_serve.app:build_app"


def test_serve_config_args_build_the_app_with_one_gpu_per_generator():
    args = serve_config()["applications"][0]["args"]
    config = AppConfig.model_validate(args)
    assert config.generator.num_gpus == 1 and config.model == "Tongyi-MAI/Z-Image-Turbo"
    assert config.generator.autoscaling.max_replicas > config.generator.autoscaling.min_replicas
    assert build_app(args) is not None


def test_unknown_fields_are_refused_and_every_field_is_described():
    with pytest.raises(ValueError, match="invalid zimage-serve config"):
        resolved_config({"modle": "tiny"})
    with pytest.raises(ValueError):
        resolved_config({"generator": {"max_batch_size": 8, "max_ongoing_requests": 4}})

    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(AppConfig)


def test_auto_model_without_gpus_is_tiny():
    config = resolved_config({}, cluster_gpus=0)
    assert config.model == "tiny" and config.generator.num_gpus == 0
    assert resolved_config({"model": "tiny"}, cluster_gpus=2).generator.num_gpus == 1
