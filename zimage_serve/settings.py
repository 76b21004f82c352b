"""The one config: defaults and bounds of the application (``AppConfig``, validated from ``build_app(args)`` /
serve_config.yaml's ``args``), and everything read from the environment (:func:`environment`), in one place.

Every field is described; unknown fields are refused, so a typo in a YAML file fails the deploy instead of
being ignored. Imports only ``core``.

| variable | meaning |
|---|---|
| ZIMAGE_CACHE_DIR | where ``--model tiny``, the compile cache and the weights cache live (default ~/.cache/zimage-serve) |
| MODELSCOPE_CACHE | where hub models are downloaded (ModelScope's own variable; default ~/.cache/modelscope) |
| ZIMAGE_DEVICE | force ``cpu`` or ``cuda`` (default: cuda when available) |
| ZIMAGE_API_KEYS | comma-separated API keys; when set (or the file is), every route but /healthz and /readyz needs one |
| ZIMAGE_API_KEYS_FILE | a file with one API key per line (blank lines and ``#`` comments are not keys) |
| MODELSCOPE_DOMAIN | the hub host to reach (ModelScope's own variable; default modelscope.cn) |
| ZIMAGE_WEIGHTS_CACHE | ``1``: keep the transformer converted to bf16 under ZIMAGE_CACHE_DIR/weights (model/weights_cache.py) |
| ZIMAGE_MODEL | the CLI's default ``--model`` |
| ZIMAGE_WEBHOOK_SECRET | the Standard Webhooks secret (``whsec_...``) that signs jobs' webhooks when a job gives none (over ``jobs.webhook_secret``: a secret kept out of the app's config) |
| PYTORCH_CUDA_ALLOC_CONF | PyTorch's own (or PYTORCH_ALLOC_CONF); unset, GPU processes use ``expandable_segments:True`` (model/machine.py); set without them, plans keep 0.5 GiB more free |
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .core.bounds import MAX_LORA_SCALE, Bounds, base64_length, parse_size
from .core.errors import ZImageError
from .core.webhook_checks import parse_allow

TINY_SERVED_NAME = "z-image-tiny-random"  # what /v1/models calls the embedded random-weight checkpoint
# Every deployment's graceful_shutdown_wait_loop_s: how often a stopping replica checks that its requests are done
# (Serve's default, 2 s, is also the least a stop takes, and an app stops its deployments in turn). A request routed
# to it after its last check is refused and the router retries it on another replica (Serve's quiesce).
DRAIN_POLL_S = 0.2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingOptions(_Strict):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 lets the deployment scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Most replicas; for generators, at most the cluster's GPUs.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time (default: min_replicas).")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Requests in flight per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(10.0, ge=0, description="Load must stay high this long before adding a replica.")
    downscale_delay_s: float = Field(120.0, ge=0, description="Load must stay low this long before removing a replica.")
    downscale_to_zero_delay_s: float | None = Field(None, ge=0, description="With min_replicas 0: how long the load must stay at zero before the last replica goes (default: downscale_delay_s). Scaling up from zero never waits: the first request starts a replica at once and waits for it.")
    metrics_interval_s: float = Field(2.0, gt=0, description="How often replicas report load to the autoscaler.")
    look_back_period_s: float = Field(10.0, gt=0, description="Window over which load is averaged.")

    def to_serve(self) -> dict:
        """Serve's autoscaling_config (initial_replicas defaults to min_replicas)."""
        return {"initial_replicas": self.min_replicas, **self.model_dump(exclude_none=True)}


class EncoderOptions(_Strict):
    max_batch_size: int = Field(8, ge=1, le=256, description="Prompts encoded in one forward pass.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=5, description="How long a batch waits to fill.")
    cache_size: int = Field(4096, ge=0, description="Prompt embeddings kept (LRU, keyed by prompt and model revision).")
    cache_gib: float = Field(2.0, ge=0, description="Memory the kept embeddings may take per encoder replica, in GiB "
                                                    "(10 KiB a prompt token in float32: 5 MiB for a 512-token prompt).")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per encoder replica.")
    threads: int | None = Field(None, ge=1, description="torch threads per encoder replica (default: num_cpus, at least 1).")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: bfloat16 where the CPU has AMX (several times faster), else float32.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one encoder replica accepts at once.")
    health_check_period_s: float = Field(2, gt=0, description="How often Serve checks the replica: a replica that died is found, and replaced, within this.")
    autoscaling: AutoscalingOptions = Field(default_factory=AutoscalingOptions, description="Encoder replica scaling.")


class GeneratorOptions(_Strict):
    num_gpus: float | None = Field(None, ge=0, description="GPUs per replica; default 1 when the Ray cluster has GPUs, else 0.")
    num_cpus: float = Field(1, ge=0, description="CPUs reserved per generator replica.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the replica sees a GPU.")
    policy: Literal["auto", "resident", "partial", "offload", "sequential"] = Field("auto", description="Staging policy (see `zimage-serve plan`): auto picks the fastest that fits; partial keeps as many transformer blocks resident as fit and streams the rest.")
    encode_on: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Where prompts are encoded: cpu (the CPU encoders), gpu (the generator, always: no PromptEncoder "
                            "deployment is made, its encoder section unused), or auto: the generator "
                            "holds a text encoder where its plan fits one, and encodes a prompt when its ingress has nothing else "
                            "in flight (lowest latency); the CPU encoders take the rest (the GPU's time goes to denoising).")
    plan_size: str = Field("1024x1024", description="Largest WIDTHxHEIGHT the staging plan budgets activations for.")
    compile: bool = Field(True, description="On GPU: regional torch.compile of the transformer, and of the VAE decoder's GroupNorm+SiLU pairs at plan_size (cached on disk).")
    compile_artifacts: bool = Field(True, description="With compile: the first replica on a node compiles the transformer blocks' code ahead of time at the start of its warm-up (from an eager pass that records one call of each block kind) and saves it beside the compile cache; it and later replicas (and the batch job's GPU workers) run that code instead of tracing the blocks with torch.compile (a faster start; model/optim/aot.py). Keyed by Python, torch, diffusers, GPU, dtype, the blocks' modules and the compiler's settings (on a GPU the code runs at one fixed CPU thread count, so replicas of any num_cpus and the batch job's GPU workers share it; on the CPU, keyed by the thread count too); a call the saved code doesn't fit compiles as without it.")
    fuse_projections: bool = Field(True, description="On a resident GPU plan: q/k/v and SwiGLU gate/up as single matmuls, real-valued RoPE.")
    cuda_graphs: bool = Field(True, description="On a resident GPU plan with memory to spare: each block stack replays as a CUDA graph per shape.")
    attention_backend: str | None = Field(None, description="diffusers attention backend (default: PyTorch SDPA).")
    fp8: bool | Literal["auto"] = Field(False, description="FP8 (e4m3, rowwise scales) weights and matmuls in the transformer's wide Linear layers (Ada/Hopper: compute capability 8.9+): half their memory, faster, images differ from stock. false: bf16 (images equal stock diffusers'); auto: FP8 only where bf16 doesn't fit resident on this GPU (the plan says so), bf16 on older GPUs; true: always (a config error on older GPUs).")
    vae_tiling: bool = Field(False, description="Decode in overlapping tiles: less VRAM at large sizes, tiny seams.")
    warmup: bool = Field(True, description="Run the model once before reporting ready (compiles at plan_size).")
    max_batch_size: int = Field(4, ge=1, le=64, description="Images of one shape in one transformer batch.")
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=5, description="How long a batch waits to fill. 0: a free GPU starts at once with what is queued (under load the queue fills each batch while the previous one runs).")
    max_ongoing_requests: int = Field(8, ge=1, description="Images one replica accepts at once (>= max_batch_size).")
    max_queued_requests: int = Field(64, ge=-1, description="Images waiting for a replica before 503 (-1: unbounded).")
    graceful_shutdown_timeout_s: float = Field(120, ge=0, description="In-flight work allowed to finish on shutdown.")
    health_check_period_s: float = Field(2, gt=0, description="How often Serve checks the replica (its GPU too): a replica that died is found, and replaced, within this (the check is a one-element GPU op).")
    max_adapters_per_replica: int = Field(8, ge=1, le=64, description="LoRA adapters one replica holds on its GPU at once (Serve's multiplexing evicts the least recently used); the staging plan reserves their memory.")
    autoscaling: AutoscalingOptions = Field(default_factory=AutoscalingOptions, description="Generator replica scaling.")

    @model_validator(mode="after")
    def _check(self):
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError("generator.max_ongoing_requests must be >= generator.max_batch_size")
        parse_size(self.plan_size, Bounds(max_side=8192), param="plan_size")
        return self


class JobsOptions(_Strict):
    enabled: bool = Field(True, description="Serve the async jobs API (POST /v1/jobs ...) through a job store deployment.")
    dir: str | None = Field(None, min_length=1, description="Where jobs' records and images are kept: a directory, or an s3:// or gs:// URI (pyarrow's filesystems). Default ZIMAGE_CACHE_DIR/jobs; a local directory is the node's own, so on a cluster give a shared volume or a bucket for jobs to outlive their store replica's node.")
    ttl_s: float = Field(86400, gt=0, description="How long a finished job (and its images) is kept.")
    max_jobs: int = Field(10_000, ge=1, description="Most jobs kept at once (queued, running and finished within ttl_s); over it, POST /v1/jobs answers 503 with Retry-After.")
    concurrency: int = Field(16, ge=1, description="Jobs run at once (each sends its n images to the generators, as a synchronous request does); the others wait their turn, queued.")
    webhook_secret: str | None = Field(None, description="The Standard Webhooks secret (whsec_...) that signs a job's webhook when its request gives none (the environment's ZIMAGE_WEBHOOK_SECRET wins: it keeps the secret out of the app's config, which Serve shows).")
    webhook_allow: list[str] = Field(default_factory=list, description="Networks (CIDRs) webhooks may reach although private, loopback or link-local (refused otherwise: an SSRF guard).")
    webhook_attempts: int = Field(5, ge=1, le=20, description="Attempts to deliver a webhook (retried on a non-2xx answer or a network error).")
    webhook_backoff_s: float = Field(1.0, gt=0, description="Wait before the first retry; doubled each retry (at most 60 s).")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Longest one delivery attempt may take.")

    @field_validator("webhook_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_allow(value, "jobs.webhook_allow")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("whsec_"):
            raise ValueError("jobs.webhook_secret must be a Standard Webhooks secret: whsec_ and base64")
        return value

    def store_location(self) -> str:
        """Where the job store keeps its jobs (``dir``, or the default under ZIMAGE_CACHE_DIR)."""
        return self.dir or str(environment().cache_dir / "jobs")


ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class AdapterSpec(_Strict):
    source: str = Field(min_length=1, description="A .safetensors file, a directory holding one (diffusers' LoRA format, kohya / ComfyUI layouts too), or a ModelScope id.")
    scale: float = Field(1.0, ge=0, le=MAX_LORA_SCALE, description="The scale requests get unless they give lora_scale.")


class AppConfig(_Strict):
    model: str = Field("auto", description="'tiny', a local diffusers directory, or a hub id; 'auto': the hub model on a GPU, else tiny.")
    served_model_name: str | None = Field(None, description="The name /v1/models reports and requests may give (default: z-image-turbo, or z-image-tiny-random for the embedded random-weight checkpoint).")
    default_size: str = Field("1024x1024", description="Size when a request says 'auto' or gives none.")
    default_steps: int = Field(8, ge=1, description="Steps when a request gives none (Turbo: 8).")
    min_side: int = Field(64, ge=16, description="Smallest width or height accepted.")
    max_side: int = Field(2048, ge=16, description="Largest width or height accepted.")
    max_steps: int = Field(50, ge=1, description="Most steps a request may ask for.")
    max_images: int = Field(8, ge=1, le=128, description="Most images (n) in one request.")
    max_prompt_chars: int = Field(10_000, ge=1, description="Longest prompt accepted, in characters.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; larger gets 413.")
    max_upload_bytes: int = Field(20_000_000, ge=1024, description="Largest uploaded image (edits: image, mask), encoded; larger gets 413.")
    max_upload_pixels: int = Field(4096 * 4096, ge=4096, description="Most pixels an uploaded image may have (checked from its header, before decoding: no decompression bombs).")
    request_timeout_s: float = Field(600, gt=0, description="Longest a request may wait for its images before 504.")
    api_keys_file: str | None = Field(None, description="File with API keys, one per line (also: ZIMAGE_API_KEYS, ZIMAGE_API_KEYS_FILE).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty: CORS off.")
    png_compress_level: int = Field(1, ge=0, le=9, description="PNG zlib level: 1 is fast, 9 is small.")
    retry_after_s: int = Field(2, ge=1, description="Retry-After seconds sent with 503.")
    ingress_replicas: int = Field(1, ge=1, description="Ingress replicas (CPU, light).")
    encoder: EncoderOptions = Field(default_factory=EncoderOptions, description="The CPU prompt encoders.")
    generator: GeneratorOptions = Field(default_factory=GeneratorOptions, description="The GPU generators.")
    controlnet: str | None = Field(None, min_length=1, description="A Z-Image Union ControlNet to serve (requests then take control_image): a diffusers ZImageControlNetModel directory, the single .safetensors file as published (1.0 or 2.x), or a ModelScope id. The staging plan places it beside the transformer.")
    adapters: dict[str, AdapterSpec] = Field(default_factory=dict, description="LoRA adapters served, by the name requests give as `model`: NAME: SOURCE or NAME: {source, scale}.")
    jobs: JobsOptions = Field(default_factory=JobsOptions, description="Async jobs (POST /v1/jobs): where they are kept, for how long, and their webhooks.")

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapter_sources(cls, value):
        if isinstance(value, dict):  # NAME: SOURCE is short for NAME: {source: SOURCE}
            return {k: {"source": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self):
        for name in self.adapters:
            if not re.match(ADAPTER_NAME_PATTERN, name):
                raise ValueError(f"adapter name {name!r}: letters, digits and . _ : - only (at most 64), not "
                                 "starting with a symbol")
            if name == self.model_name:
                raise ValueError(f"adapter name {name!r} is the served model's name")
        if self.min_side > self.max_side:
            raise ValueError("min_side must be <= max_side")
        if self.default_steps > self.max_steps:  # a request without steps would be refused
            raise ValueError("default_steps must be <= max_steps")
        # a prompt and a negative prompt of max_prompt_chars, JSON-escaped (up to 12 bytes a character as a
        # \\u escaped surrogate pair), must fit under the body cap, or a request the schema allows gets 413
        needed = 2 * 12 * self.max_prompt_chars + 4096
        if self.max_body_bytes < needed:
            raise ValueError(f"max_body_bytes must be at least {needed} for max_prompt_chars {self.max_prompt_chars}")
        parse_size(self.default_size, self.bounds, param="default_size")
        return self

    @property
    def model_name(self) -> str:
        """The name /v1/models reports: ``served_model_name``, else what is served (the embedded checkpoint's
        random weights say so in its name)."""
        return self.served_model_name or (TINY_SERVED_NAME if self.model == "tiny" else "z-image-turbo")

    @property
    def bounds(self) -> Bounds:
        return Bounds(min_side=self.min_side, max_side=self.max_side, max_steps=self.max_steps,
                      max_images=self.max_images, max_prompt_chars=self.max_prompt_chars,
                      max_upload_bytes=self.max_upload_bytes, max_upload_pixels=self.max_upload_pixels)

    @property
    def max_edit_body_bytes(self) -> int:
        """The body cap of ``POST /v1/images/edits``: an image and a mask (and with a ControlNet a control image) of
        ``max_upload_bytes`` each, as base64 in JSON (the larger encoding), and the other fields under
        ``max_body_bytes``."""
        return (3 if self.controlnet else 2) * base64_length(self.max_upload_bytes) + self.max_body_bytes

    @property
    def max_job_body_bytes(self) -> int:
        """The body cap of ``POST /v1/jobs``: an edit's, and its webhook's URL and secret."""
        return self.max_edit_body_bytes + 4096

    @property
    def max_generation_body_bytes(self) -> int:
        """The body cap of ``POST /v1/images/generations`` and ``/generate``: ``max_body_bytes``, and with a
        ControlNet room for a control image of ``max_upload_bytes`` as base64."""
        return (base64_length(self.max_upload_bytes) if self.controlnet else 0) + self.max_body_bytes


# ---- the environment ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    cache_dir: Path
    modelscope_cache: Path
    device: str | None
    api_keys: tuple[str, ...]
    hub_domain: str
    weights_cache: bool
    model: str | None
    cuda_alloc_conf: str | None  # PyTorch's PYTORCH_CUDA_ALLOC_CONF (or its newer name PYTORCH_ALLOC_CONF), as set
    webhook_secret: str | None


def parse_api_keys(text: str) -> tuple[str, ...]:
    """API keys from a keys file's text: one a line; blank lines and comment lines (``#``, indented or not)
    are not keys. The one parser of keys, for the environment's file and ``api_keys_file`` alike."""
    keys = (line.strip() for line in text.splitlines())
    return tuple(k for k in keys if k and not k.startswith("#"))


def read_api_keys_file(path: str | os.PathLike) -> tuple[str, ...]:
    try:
        return parse_api_keys(Path(path).read_text())
    except OSError as e:
        raise ZImageError(f"can't read the API keys file {path}: {e.strerror}") from None


_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # a switch's spellings


def _api_keys() -> tuple[str, ...]:
    keys = tuple(k.strip() for k in os.environ.get("ZIMAGE_API_KEYS", "").split(",") if k.strip())
    path = os.environ.get("ZIMAGE_API_KEYS_FILE")
    return keys + (read_api_keys_file(path) if path else ())


def environment() -> Environment:
    """Read the environment now (cheap; called where needed rather than cached at import, so a test or a
    replica's runtime_env sees its own values). The only place the package reads ``os.environ``."""
    home = Path.home() / ".cache"
    return Environment(
        cache_dir=Path(os.environ.get("ZIMAGE_CACHE_DIR", home / "zimage-serve")),
        modelscope_cache=Path(os.environ.get("MODELSCOPE_CACHE", home / "modelscope")),
        device=os.environ.get("ZIMAGE_DEVICE") or None,
        api_keys=_api_keys(),
        hub_domain=os.environ.get("MODELSCOPE_DOMAIN", "modelscope.cn"),
        weights_cache=os.environ.get("ZIMAGE_WEIGHTS_CACHE", "0").strip().lower() in _YES,
        model=os.environ.get("ZIMAGE_MODEL") or None,
        cuda_alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF") or None,
        webhook_secret=os.environ.get("ZIMAGE_WEBHOOK_SECRET") or None,
    )


def preload_wanted() -> bool:
    """ZIMAGE_PRELOAD: whether Ray workers import the model layer as they start (model/preload.py). Apart from
    :func:`environment`: a worker's setup hook asks, where the rest of the environment may not read, and only it."""
    return _preload(os.environ.get("ZIMAGE_PRELOAD", "auto"))


def _preload(value: str, devices: Path = Path("/dev")) -> bool:
    """ZIMAGE_PRELOAD: ``1`` / ``0``, or ``auto`` (or unset): where the NVIDIA driver shows one GPU (its device files;
    nothing initialised; model/preload.py says why one)."""
    value = value.strip().lower()
    if value in _YES:
        return True
    if value in _NO:
        return False
    return len(list(devices.glob("nvidia[0-9]*"))) == 1


def api_keys(config: "AppConfig") -> tuple[str, ...]:
    """Every API key the ingress accepts: the environment's and the config's ``api_keys_file``."""
    return environment().api_keys + (read_api_keys_file(config.api_keys_file) if config.api_keys_file else ())


def webhook_secret(config: "AppConfig") -> str | None:
    """The secret that signs a job's webhook when the job gives none: the environment's, else the config's."""
    return environment().webhook_secret or config.jobs.webhook_secret
