"""serve_config.yaml as Ray Serve reads it, and the application config's rules."""

from pathlib import Path

import pytest
import yaml

from zimage_serve.app import build_app
from zimage_serve.serving.builder import resolved_config
from zimage_serve.settings import DRAIN_POLL_S, AppConfig

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
    # the bound application (Ray's Application keeps its deployment in _bound_deployment): the ingress bound
    # to the encoder, the generator and the job store, each with the Serve options the file gives, all with the config
    ingress = build_app(args)._bound_deployment
    encoder_app, generator_app, raw, jobs_app = ingress.init_args
    encoder, generator, jobs = (a._bound_deployment for a in (encoder_app, generator_app, jobs_app))
    assert (ingress.name, encoder.name, generator.name, jobs.name) == ("Ingress", "PromptEncoder", "Generator", "Jobs")
    assert jobs.init_args == (encoder_app, generator_app, raw) and jobs.num_replicas == 1
    assert ingress.ray_actor_options == {"num_cpus": 0}
    assert raw == config.model_dump() and encoder.init_args == (raw,) and generator.init_args == (raw,)
    gen, enc = args["generator"], args["encoder"]
    assert generator.ray_actor_options == {"num_cpus": gen["num_cpus"], "num_gpus": 1}
    assert encoder.ray_actor_options == {"num_cpus": enc["num_cpus"]}
    for deployment, options in ((generator, gen), (encoder, enc)):
        scaling = deployment._deployment_config.autoscaling_config
        assert (scaling.min_replicas, scaling.max_replicas) == (options["autoscaling"]["min_replicas"],
                                                                options["autoscaling"]["max_replicas"])
        assert scaling.target_ongoing_requests == options["autoscaling"]["target_ongoing_requests"]
    assert generator.max_ongoing_requests == gen["max_ongoing_requests"]
    assert generator._deployment_config.max_queued_requests == gen["max_queued_requests"]
    # a stopping replica checks for its last requests every DRAIN_POLL_S, not Serve's 2 s (the least a stop takes)
    assert {d.name: d._deployment_config.graceful_shutdown_wait_loop_s for d in (ingress, encoder, generator, jobs)} \
        == dict.fromkeys(("Ingress", "PromptEncoder", "Generator", "Jobs"), DRAIN_POLL_S)
    assert generator._deployment_config.graceful_shutdown_timeout_s == gen["graceful_shutdown_timeout_s"]


def test_encode_on_gpu_deploys_no_prompt_encoder():
    """The generators encode every prompt: no CPU encoders holding a copy of the text encoder for nothing."""
    args = {**serve_config()["applications"][0]["args"]}
    args["generator"] = {**args["generator"], "encode_on": "gpu"}
    ingress = build_app(args)._bound_deployment
    encoder_app, generator_app, raw, jobs_app = ingress.init_args
    assert encoder_app is None and generator_app._bound_deployment.name == "Generator"
    assert jobs_app._bound_deployment.init_args == (None, generator_app, raw)


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
