"""cluster/ manifests against the real schemas: KubeRay's CRDs and Ray's cluster-launcher schema."""

import functools
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The KubeRay CRDs are not in the repository: CI has them in ../shared/schemas/kuberay beside the clone
CRDS = ROOT.parent / "shared" / "schemas" / "kuberay"
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def strict(schema):
    """The CRD's openAPIV3Schema with unknown fields refused, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def crd_schema(kind: str):
    """A validator of the CRD's strict v1 schema. Without the CRD file: a failure in CI, a skip elsewhere."""
    path = CRDS / f"ray.io_{kind}.yaml"
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is missing: CI must have the KubeRay CRDs in ../shared/schemas/kuberay beside the clone")
        pytest.skip(f"{path} is not present: the KubeRay CRDs are read from ../shared/schemas/kuberay beside the "
                    "repository, which CI provides (with CI=1 a missing file fails)")
    return _validator(path)


@functools.cache
def _validator(path: Path):
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB: 5x faster in C
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    # the validator alone: jsonschema.validate would also check KubeRay's schema against the metaschema, on
    # every call (1.3 s a CRD), which tests KubeRay's file, not our manifests
    return jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.parametrize("manifest, kind", [("rayservice.yaml", "rayservices"), ("rayjob.yaml", "rayjobs")])
def test_kuberay_manifests_validate_against_the_crds(manifest, kind):
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / manifest).read_text())
    crd_schema(kind).validate(doc)


def test_strict_validation_catches_a_typo():
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["maxReplica"] = 8
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        crd_schema("rayservices").validate(doc)


def test_rayservice_serves_serve_config_yaml_verbatim():
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    assert yaml.safe_load(doc["spec"]["serveConfigV2"]) == yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_generators_get_one_gpu_per_pod_and_autoscale():
    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    spec = doc["spec"]["rayClusterConfig"]
    assert spec["enableInTreeAutoscaling"] is True
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu-generators"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and gpu["minReplicas"] < gpu["maxReplicas"]
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"]["generator"]["num_gpus"] == 1
    env = gpu["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MODELSCOPE_CACHE", "value": "/models/modelscope"} in env


def test_rayjob_runs_a_valid_batch_command_whose_encoder_fits_its_pod():
    import shlex

    from zimage_serve.cli import _parser

    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "zimage_serve.batch"]
    args = _parser().parse_args(["batch", *argv[3:]])
    groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    (cpu,) = [g for g in groups if g["groupName"] == "cpu-encoders"]
    pod_cpus = int(cpu["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert args.encoder_cpus is not None and 1 <= args.encoder_cpus < pod_cpus


def test_launcher_yaml_validates_against_rays_schema():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    doc = yaml.safe_load((ROOT / "cluster" / "launcher" / "zimage-cluster.yaml").read_text())
    jsonschema.validate(doc, schema)
    gpu = doc["available_node_types"]["gpu_generator"]
    assert gpu["min_workers"] < gpu["max_workers"]


def test_the_image_names_our_setup_hook_to_every_ray_worker():
    """RayService deploys the app through Serve's REST API, with no runtime_env hook: the image names the hook in the
    variable Ray's workers read it from (as `zimage-serve serve` does for a Ray it starts), so every worker of a
    KubeRay pod or launcher VM runs it (the preload of idle workers among what it does)."""
    import ray._private.ray_constants as ray_constants

    from zimage_serve.arguments import _SETUP_HOOK_VARIABLE, RAY_RUNTIME_ENV

    assert _SETUP_HOOK_VARIABLE == ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    env = [line.split(None, 1)[1] for line in (ROOT / "cluster/Dockerfile").read_text().splitlines()
           if line.startswith("ENV ")]
    assert f"{_SETUP_HOOK_VARIABLE}={RAY_RUNTIME_ENV['worker_process_setup_hook']}" in env
