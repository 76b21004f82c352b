"""Loads a checkpoint following a Plan, component by component.

Each component goes straight from the safetensors files to where the plan puts it (``device_map``),
converted to the serving dtype tensor by tensor on the way, so the peak never holds a second full
copy in host memory and the GPU never holds more than the plan budgeted. Safetensors only, never
remote code. With ZIMAGE_WEIGHTS_CACHE=1 the transformer is read from its bf16 copy (weights_cache.py).

The transformer's weights are read by prefetch.WeightReader, in threads: :func:`start_reading` starts them before
diffusers and transformers are imported (a replica's start imports them meanwhile), :func:`load` takes them.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..core.errors import ModelSourceError, ZImageError
from . import weights_cache
from .optim.lean_vae import lean_decoder, lean_encoder
from .planner import Plan
from .prefetch import Unsupported, WeightReader, assemble
from .sources import ModelSource, weight_files

log = logging.getLogger("zimage_serve")


@dataclass
class Loaded:
    """The pipeline (without text encoder: prompts arrive as embeddings) and, if asked, the encoder."""

    pipe: object  # diffusers.ZImagePipeline
    text_model: torch.nn.Module | None
    tokenizer: object | None
    device: torch.device
    dtype: torch.dtype
    hooks: list = field(default_factory=list)  # model-level offload hooks, offloaded after each batch
    controlnet: object | None = None  # diffusers.ZImageControlNetModel, when one is served
    seconds: dict = field(default_factory=dict)


def _target(placement: str, device: torch.device) -> str | torch.device:
    """Where a component's weights are first loaded."""
    return device if placement == "gpu" else "cpu"


def load_text_encoder(source: ModelSource, device: torch.device, dtype: torch.dtype, beside=None):
    """Qwen3 text encoder without its last decoder layer and final norm: only hidden_states[-2] is used.

    The last layer's weights are never read. Returns (model, tokenizer). ``beside``: a lock that keeps the GPU's
    batches out, for a load that runs while they do (a replica adds its text encoder once it serves):
    ``from_pretrained`` sets process-wide state while it builds the model (torch's default dtype, a patched
    ``torch.linspace``), which a batch beside it would see (a recompile, another sigma schedule). Then only the
    model's skeleton is built under the lock, on the meta device (milliseconds), and its weights are read outside it
    (model/prefetch.py's threads, nothing process-wide).
    """
    # transformers and diffusers only where a model is loaded: importing this module (the planner's CLI) stays light
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = source.path / "text_encoder"
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    config.num_hidden_layers -= 1
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    tokenizer = AutoTokenizer.from_pretrained(source.path / "tokenizer", trust_remote_code=False)
    if beside is not None:
        return _text_encoder_beside(path, config, torch.device(device), dtype, beside), tokenizer
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the skipped last layer's weights are "unexpected" by design
    try:
        model = AutoModel.from_pretrained(path, config=config, dtype=dtype, device_map={"": str(device)},
                                          use_safetensors=True, trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(level)
    model.norm = torch.nn.Identity()
    model.eval().requires_grad_(False)
    return model, tokenizer


def _text_encoder_beside(path, config, device: torch.device, dtype: torch.dtype, lock):
    """:func:`load_text_encoder`'s model with its skeleton built under ``lock`` and its weights read outside it: the
    same parameters ``from_pretrained`` gives (a checkpoint saved from the causal LM drops its "model." prefix and
    its head), the rotary embedding's buffers made on ``device`` as its constructor makes them."""
    from transformers import AutoModel  # (see load_text_encoder)

    with lock, torch.device("meta"):
        model = AutoModel.from_config(config, dtype=dtype)
    wanted = set(model.state_dict())
    strip = lambda name: name[len("model."):] if name.startswith("model.") and name not in wanted else name
    read = WeightReader(weight_files(path), device, dtype, keep=lambda name: strip(name) in wanted).result()
    tensors = {strip(k): v for k, v in read.items()}  # (the last layer's weights never read)
    missing = sorted(wanted - set(tensors) - {k for k in wanted if k.startswith("norm.")})
    if missing:
        raise ModelSourceError(f"the text encoder's weights in {path} lack {missing[:3]}")
    model.load_state_dict(tensors, strict=False, assign=True)
    model.rotary_emb = type(model.rotary_emb)(model.config).to(device)  # (its buffers computed in float32)
    model.norm = torch.nn.Identity()
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # (a model whose constructor makes other buffers than the rotary embedding's)
        raise ModelSourceError(f"the text encoder of {path} has tensors this loader doesn't make: {left[:3]}")
    return model.eval().requires_grad_(False)


@contextmanager
def parallel_loading(enabled: bool | None):
    """diffusers reads a component's safetensors shards in threads (its module-global
    ``HF_ENABLE_PARALLEL_LOADING``, set from the environment variable of that name) inside this context, or not
    (``None``: as it is). The previous value is restored on leaving, also on an error, so a load never changes
    it for the rest of the process. (Loads in one process run one at a time: an engine loads once per replica.)"""
    import diffusers.models.modeling_utils as modeling_utils  # where a load happens, as the other diffusers imports

    before = modeling_utils.HF_ENABLE_PARALLEL_LOADING
    if enabled is not None:
        modeling_utils.HF_ENABLE_PARALLEL_LOADING = bool(enabled)
    try:
        yield
    finally:
        modeling_utils.HF_ENABLE_PARALLEL_LOADING = before


@dataclass
class TransformerRead:
    """The transformer's weights being read (:func:`start_reading`): from where, to where, as what."""

    directory: object  # Path: the checkpoint's transformer, or its bf16 copy in the weights cache
    from_cache: bool
    cache: object  # Path | None: where the weights cache keeps it (written after the load when not from_cache)
    device: torch.device
    dtype: torch.dtype
    reader: WeightReader | None  # None: diffusers reads them (a file the reader doesn't read)


def start_reading(source: ModelSource, plan: Plan, device: str | None = None, dtype: str | None = None) -> TransformerRead:
    """Start reading the transformer's weights to where ``plan`` first puts them, in background threads; returns at
    once. Call it before importing diffusers and transformers (:func:`load` imports them): the reads run meanwhile."""
    dev = torch.device(device or plan.device)
    dt = getattr(torch, dtype or plan.dtype)
    cached = weights_cache.cache_path(source, str(dt).removeprefix("torch."))
    from_cache = weights_cache.usable(cached)
    # a partial or FP8 plan places the transformer itself, from the CPU (placement.py, called by the engine)
    first = "cpu" if plan.transformer == "partial" or plan.weights == "fp8" else _target(plan.transformer, dev)
    directory = cached if from_cache else source.path / "transformer"
    files = weight_files(directory)
    try:
        reader = WeightReader(files, first, dt)
    except Unsupported as e:  # a dtype this reader doesn't know: diffusers reads the files (_transformer)
        log.info("the transformer's weights are read by diffusers: %s", e)
        reader = None
    return TransformerRead(directory, from_cache, cached, torch.device(first), dt, reader)


def load(source: ModelSource, plan: Plan, device: str | None = None, dtype: str | None = None,
         with_text_encoder: bool = True, parallel: bool | None = None, controlnet=None,
         transformer: TransformerRead | None = None) -> Loaded:
    """Load ``source`` as ``plan`` says. ``device``/``dtype`` override the plan's (tests run GPU plans on CPU).
    ``controlnet``: a controlnet.ControlNetSource, placed where ``plan.controlnet`` says. ``transformer``: its
    weights as :func:`start_reading` began to read them (with the same plan, device and dtype); default: read now.

    ``parallel``: whether diffusers reads the other components' shards in threads, for this load only
    (:func:`parallel_loading`); default: on CUDA yes, elsewhere as diffusers' own setting says."""
    dev = torch.device(device or plan.device)
    transformer = transformer or start_reading(source, plan, device, dtype)
    with parallel_loading(parallel if parallel is not None else (True if dev.type == "cuda" else None)):
        return _load(source, plan, dev, getattr(torch, dtype or plan.dtype), with_text_encoder, controlnet, transformer)


def _transformer(read: TransformerRead):
    """The transformer from the weights read, as ``from_pretrained`` makes it from the same files. Should reading
    fail for any reason but a bad file (ours to report), diffusers reads them again, its own way."""
    from diffusers import ZImageTransformer2DModel  # (see _load)

    if read.reader is not None:
        try:
            model = assemble(ZImageTransformer2DModel, ZImageTransformer2DModel.load_config(read.directory),
                             read.reader.result())
            model.register_to_config(_name_or_path=read.directory)
            if read.device.type == "cuda":  # the float32 copies converted on the GPU (up to one a thread): let go
                torch.cuda.empty_cache()
            return model
        except ZImageError:
            raise
        except Exception as e:  # noqa: BLE001 (a bug or an unforeseen device: slower, not broken)
            log.warning("reading the transformer's weights in threads failed (%s: %s); diffusers reads them instead",
                        type(e).__name__, e)
            read.reader.drop()  # what was read so far, freed before it is read again
            if read.device.type == "cuda":
                torch.cuda.empty_cache()
    return ZImageTransformer2DModel.from_pretrained(read.directory, dtype=read.dtype,
                                                    device_map={"": str(read.device)}, use_safetensors=True)


def _load(source: ModelSource, plan: Plan, dev: torch.device, dt: torch.dtype, with_text_encoder: bool,
          controlnet_source, read: TransformerRead) -> Loaded:
    # diffusers only where a model is loaded, as above
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline

    seconds = {}
    t0 = time.perf_counter()
    transformer = _transformer(read)
    seconds["transformer"] = time.perf_counter() - t0  # what was left to wait for, once diffusers was imported
    if read.reader is not None:
        seconds["transformer_read"] = read.reader.seconds or 0.0  # the reads, from start_reading to the last byte
    cached, from_cache = read.cache, read.from_cache
    if cached is not None and not from_cache:
        t0 = time.perf_counter()
        weights_cache.save(transformer, cached)
        seconds["weights_cache_write"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(source.path, subfolder="vae", dtype=dt,
                                        device_map={"": str(_target(plan.vae, dev))}, use_safetensors=True)
    vae_changes = {**lean_decoder(vae), **lean_encoder(vae)}
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(source.path, subfolder="scheduler")
    seconds["vae"] = time.perf_counter() - t0
    text_model = tokenizer = None
    if with_text_encoder:  # not in a thread beside the others: from_pretrained's meta-device patching is global
        t0 = time.perf_counter()
        te_device = dev if plan.text_encoder == "gpu" else torch.device("cpu")
        text_model, tokenizer = load_text_encoder(source, te_device, dt)
        seconds["text_encoder"] = time.perf_counter() - t0
    for m in (transformer, vae):
        m.eval().requires_grad_(False)
    controlnet = None
    if controlnet_source is not None:
        from .controlnet import load_controlnet  # a ControlNet served

        t0 = time.perf_counter()
        controlnet = load_controlnet(controlnet_source, dict(transformer.config), _target(plan.controlnet, dev), dt)
        seconds["controlnet"] = time.perf_counter() - t0
        if plan.controlnet == "stream":  # its own blocks, before it shares the transformer's (ZImageControlNetPipeline)
            controlnet.enable_group_offload(onload_device=dev, offload_device=torch.device("cpu"),
                                            offload_type="block_level", num_blocks_per_group=1,
                                            use_stream=dev.type == "cuda", record_stream=dev.type == "cuda",
                                            non_blocking=dev.type == "cuda")
    hooks = []
    if plan.transformer == "stream":
        transformer.enable_group_offload(onload_device=dev, offload_device=torch.device("cpu"), offload_type="block_level",
                                         num_blocks_per_group=1, use_stream=dev.type == "cuda", record_stream=dev.type == "cuda",
                                         non_blocking=dev.type == "cuda")
    if plan.transformer == "offload":
        from accelerate import cpu_offload_with_hook  # an offload plan only

        # the text encoder's turn, then the transformer's with the ControlNet: each of those two sends the text
        # encoder back, neither the other (the plan counts them on the GPU together)
        te_hook = None
        if text_model is not None and plan.text_encoder == "offload":
            _, te_hook = cpu_offload_with_hook(text_model, dev)
            hooks.append(te_hook)
        for m in ([controlnet] if controlnet is not None else []) + [transformer]:
            hooks.append(cpu_offload_with_hook(m, dev, prev_module_hook=te_hook)[1])
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    # debug: each caller says it has loaded (the CLI, the replicas' "ready"); the breakdown is for profiling
    log.debug("loaded %s: %s; VAE %s", source.label, ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()), vae_changes)
    return Loaded(pipe=pipe, text_model=text_model, tokenizer=tokenizer, device=dev, dtype=dt, hooks=hooks, seconds=seconds,
                  controlnet=controlnet)
