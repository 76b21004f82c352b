"""The engine: a loaded Z-Image model that turns embeddings (or prompts) into images, in batches, in any of
the modes of ``model/modes`` (text to image, image to image, inpainting), which share its modules.

Seeds are the stock pipeline's: seed s is exactly the initial noise that ``ZImagePipeline`` draws
with ``generator=torch.Generator("cpu").manual_seed(s)``, so any image can be reproduced with plain
diffusers. Jobs of the same shape (size, steps, guidance) share one transformer batch; each keeps
its own seed. The VAE decodes one image at a time, which bounds its memory whatever the batch.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import torch
from PIL import Image

from ..core.errors import AdapterError, PlanError
from ..core.request import GenerationRequest
from .optim.accel import accelerate, accelerate_vae, compiled_shapes_only
from .optim.lora_slots import linear_shapes
from .encoding import PromptEncoder
from .loader import Loaded, load
from .modes import MODES
from .machine import gpu_free_bytes, plan_for_this_machine  # noqa: F401 (the engine's callers plan with them)
from .planner import Plan, graph_headroom_gib
from .sources import ModelSource
from .startup import StartClock
from .watch import Cancelled, StepWatch, step_hooks

log = logging.getLogger("zimage_serve")
OutOfMemory = torch.OutOfMemoryError  # what a generate call raises when the GPU runs out of memory


@dataclass(frozen=True)
class Job:
    """One image to make: the typed request (n = 1) and its prompt's embeddings."""

    request: GenerationRequest
    embeds: torch.Tensor  # [tokens, hidden]
    negative_embeds: torch.Tensor | None = None  # when the request is guided
    adapter: "HeldAdapter | None" = None  # request.adapter as held when it was admitted (None: by name, now)
    watch: StepWatch | None = None  # told of each step (progress, previews); None: nobody watches

    @classmethod
    def of(cls, request: GenerationRequest, embeds: list[torch.Tensor], adapter: "HeldAdapter | None" = None,
           watch: StepWatch | None = None) -> "Job":
        """A job from the encodings of ``request.texts``, in their order."""
        return cls(request, embeds[0], embeds[1] if request.guided else None, adapter, watch)


@dataclass(eq=False)
class HeldAdapter:
    """A LoRA adapter held on the engine's device, in its LoRA slots' layout (Engine.load_adapter)."""

    name: str
    path: str
    scale: float  # its default scale
    weights: object  # lora_slots.SlotWeights

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes


@dataclass
class Result:
    images: list  # PIL images, in the order of the jobs
    seconds: dict = field(default_factory=dict)  # denoise, decode
    batch_sizes: list = field(default_factory=list)


class Engine:
    def __init__(self, source: ModelSource, plan: Plan, loaded: Loaded):
        self.source, self.plan, self.loaded = source, plan, loaded
        self.pipe = loaded.pipe
        self.max_batch = plan.workload.batch  # the batch the plan budgeted memory for
        self.encoder = PromptEncoder(loaded.text_model, loaded.tokenizer) if loaded.text_model is not None else None
        self.speedups: dict = {}
        self.artefacts_dir = None  # where the blocks' compiled code is saved and loaded (compile_artifacts)
        self.compile_mode: str | None = None
        self.compiled_decoder = False
        self._pipelines: dict = {}  # the other modes' pipelines (see pipeline)
        self.adapters: dict[str, HeldAdapter] = {}  # LoRA adapters held (load_adapter), by name
        self.slots = None  # the transformer's LoRA slots (optim/lora_slots.py), when adapters are used
        self.streamer = None  # a partial plan's streamed blocks (optim/streamer.py)
        self.placement: dict = {}  # what a partial or FP8 plan's placement applied (placement.py)
        # the Linear layers' shapes by their names before fusing, which adapters are checked against
        self.base_shapes = linear_shapes(self.pipe.transformer)

    @classmethod
    def load(cls, source: ModelSource, plan: Plan, with_text_encoder: bool = True, speedups: dict | None = None,
             lora=None, controlnet=None, clock: StartClock | None = None, **overrides) -> "Engine":
        """Load as ``plan`` says; ``speedups`` (GPU only): accel.accelerate's keyword arguments (with
        ``compile``, the VAE decoder is compiled too where the plan has room). ``lora``: the LoRA slots to make
        (a ``lora_slots.SlotSpec``, adapters.slot_spec of the adapters to serve), after fusing and before FP8,
        compiling and CUDA graphs, so that any adapter that fits them runs without recompiling. ``controlnet``: the
        ControlNet to serve (a controlnet.ControlNetSource; ``plan`` must have been made with it). ``clock``: told of
        the "load" and "speedups" stages (model/startup.py); ``overrides``: loader.load's other arguments."""
        log.info("model %s\n%s", source.label, plan.describe())
        clock = clock or StartClock()
        with clock.stage("load"):
            engine = cls(source, plan, load(source, plan, with_text_encoder=with_text_encoder, controlnet=controlnet,
                                            **overrides))
        clock.details.update({f"load_{k}_s": v for k, v in engine.loaded.seconds.items()})
        with clock.stage("speedups"):
            if plan.vae_tiling:
                engine.enable_vae_tiling()
            requested, speedups = bool(speedups), dict(speedups or {})
            if plan.transformer == "partial" or plan.weights == "fp8":  # placed here, from the CPU, on any device
                engine._place(speedups, lora, fuse=requested and speedups.get("fuse", True))
                lora = None  # (made by the placement)
            if requested and engine.device.type == "cuda":
                seconds = {}  # each speed-up's (optim/accel.accelerate)
                engine._accelerate(speedups, lora, seconds)
                clock.details.update({f"speedups_{k}_s": v for k, v in seconds.items()})
            elif lora is not None:
                engine._install_slots(lora)
        return engine

    def _place(self, speedups: dict, lora, fuse: bool):
        """A partial or FP8 plan's placement (placement.py), with the fusing and LoRA slots that must come before
        it (the LoRA slots among them); what is left of ``speedups`` then applies as to any plan."""
        from .placement import place_transformer  # partial and FP8 plans only

        if lora is not None and self.plan.blocks_streamed:
            raise PlanError(f"LoRA adapters need the transformer's blocks resident, and this {self.plan.budget_gib} GiB "
                            f"plan streams {self.plan.blocks_streamed} of them: serve adapters on a larger card (or "
                            "with fp8: auto)")
        install = (lambda transformer: self._install_slots(lora)) if lora is not None else None
        applied, self.streamer = place_transformer(self.pipe.transformer, self.plan, self.device,
                                                   fuse=fuse, before_quantize=install)
        self.placement = applied
        speedups.update(fuse=False, fp8=False, controlnet_fuse=fuse)
        if self.streamer is not None:
            speedups["cuda_graphs"] = False  # the streamed blocks' weights change under them

    def _accelerate(self, speedups: dict, lora=None, seconds: dict | None = None) -> None:
        """The speed-ups this plan allows: fusing, FP8 and CUDA graphs need a resident transformer; graphs need
        headroom over the plan's peak. With ``compile``, the VAE decoder's GroupNorm+SiLU pairs are compiled too
        (the same activation peak as eager, bench run36), unless it decodes in tiles."""
        plan = self.plan
        controlnet_fuse = speedups.pop("controlnet_fuse", speedups.get("fuse", True))  # (a placed plan fused already)
        if plan.transformer not in ("gpu", "partial"):  # fusing and FP8 rewrite weights, which offload hooks hold copies of
            if speedups.get("fp8"):
                log.warning("fp8 needs the transformer resident on the GPU; this %s plan runs in bf16", plan.kind)
            speedups.update(fuse=False, fp8=False, cuda_graphs=False)
        if plan.transformer not in ("gpu", "partial", "cpu"):  # the blocks' saved compiled code replaces their
            speedups["compile_artifacts"] = False  # forward, as the offload plans' hooks do
        compile_vae = speedups.get("compile")
        if plan.transformer == "stream":  # torch.compile can't trace group offloading's onloading (bench run60: a
            speedups["compile"] = False  # 4 GiB card's warm-up failed): the streamed transformer runs eagerly
        headroom = (plan.budget_gib or 0) - plan.peak_gib
        if speedups.get("cuda_graphs") and headroom < graph_headroom_gib(plan) + plan.activations_gib:
            log.info("no CUDA graphs: %.1f GiB of headroom over the plan's peak is too little", headroom)
            speedups["cuda_graphs"] = False
        # LoRA folded into the base matmuls where nothing moves or quantizes the layers afterwards (lora_slots.py)
        fold = plan.transformer == "gpu" and not speedups.get("fp8")
        install = (lambda transformer: self._install_slots(lora, fold=fold)) if lora is not None else None
        batched = self.max_batch > 1  # (the blocks' saved compiled code is dynamic in the batch, or not)
        self.speedups = {**self.placement, **accelerate(self.pipe.transformer, before_quantize=install, batched=batched,
                                                        seconds=seconds, **speedups)}
        if "compile_artifacts" in self.speedups:  # the blocks' compiled code saved per node (optim/aot.py)
            self.compile_mode = speedups.get("compile_mode")
            self.artefacts_dir = Path(self.speedups["compile_artifacts"])
        if self.controlnet is not None and plan.controlnet == "gpu":
            from .optim.accel import accelerate_controlnet  # a ControlNet served

            self.speedups.update(accelerate_controlnet(self.controlnet, **{**speedups, "fuse": controlnet_fuse}))
        if self.slots is not None:
            self.speedups["lora_slots"] = (f"{len(self.slots.layers)} layers, rank {self.slots.rank}"
                                           + (", folded" if self.slots.folded else ""))
        if compile_vae and not plan.vae_tiling:
            self.speedups.update(accelerate_vae(self.pipe.vae, cache_dir=speedups.get("cache_dir")))
            self.compiled_decoder = True

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def controlnet(self):
        """The ControlNet served (diffusers' ZImageControlNetModel), or None."""
        return self.loaded.controlnet

    @property
    def _vae_scale(self) -> int:
        """Image pixels per latent pixel along a side."""
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def enable_vae_tiling(self, tile: int = 512) -> None:
        """Decode in overlapping tiles of ``tile`` pixels (diffusers' tiled decode; its default tile is the
        VAE's sample_size, 1024, which never tiles a 1024² image)."""
        vae = self.pipe.vae
        vae.enable_tiling()
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = tile // self._vae_scale

    def set_progress(self, enabled: bool) -> None:
        for pipe in (self.pipe, *self._pipelines.values()):
            pipe.set_progress_bar_config(disable=not enabled, leave=False)

    def check_device(self) -> None:
        """Raises when the GPU is unusable (a health check)."""
        torch.ones(1, device=self.device).add_(1).item()

    def gpu_info(self) -> dict | None:
        """The GPU's name and memory, and this process's peak allocation; None on the CPU."""
        if self.device.type != "cuda":
            return None
        return {"name": torch.cuda.get_device_name(self.device),
                "memory_gib": round(torch.cuda.get_device_properties(self.device).total_memory / 2**30, 1),
                "peak_allocated_gib": round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)}

    def peak_memory_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    def free_memory(self) -> None:
        """Return cached GPU blocks after an out-of-memory error."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        if self.encoder is None:
            raise RuntimeError("this engine was loaded without a text encoder: pass embeddings")
        return self.encoder.encode(prompts)

    def pipeline(self, cls):
        """A diffusers pipeline of class ``cls`` (another mode's) over this engine's loaded modules, with a
        scheduler of its own: built once, kept."""
        if isinstance(self.pipe, cls):
            return self.pipe
        if cls not in self._pipelines:
            p = self.pipe
            extra = {}
            if "controlnet" in inspect.signature(cls.__init__).parameters:  # it shares the transformer's modules
                if self.controlnet is None:
                    raise ValueError("this engine was loaded without a ControlNet")
                extra["controlnet"] = self.controlnet
            pipe = cls(scheduler=type(p.scheduler).from_config(p.scheduler.config), vae=p.vae,
                       text_encoder=p.text_encoder, tokenizer=p.tokenizer, transformer=p.transformer, **extra)
            pipe.set_progress_bar_config(**getattr(p, "_progress_bar_config", {}))
            self._pipelines[cls] = pipe
        return self._pipelines[cls]

    def read_adapter(self, name: str, source: str):
        """The LoRA adapter at ``source``, read and checked against this transformer (model/adapters.py), on the
        CPU: what :meth:`load_adapter` takes. Raises AdapterError naming what is wrong."""
        from .adapters import read_adapter  # safetensors and diffusers' LoRA readers: only when adapters are used

        return read_adapter(name, source, self.base_shapes)

    def load_adapter(self, name: str, source, scale: float = 1.0) -> "HeldAdapter":
        """Hold the LoRA adapter ``source`` (a path, or what :meth:`read_adapter` returned) on the model's device as
        ``name``, for the requests that name it (``GenerationRequest.adapter``) at their ``adapter_scale``, by
        default ``scale``. The adapter must fit the LoRA slots made at load (``Engine.load(lora=...)``); an engine
        loaded without them makes them for its first adapter, unless compiled code or CUDA graphs already run."""
        from .adapters import slot_spec  # (see read_adapter)

        weights = self.read_adapter(name, source) if isinstance(source, (str, Path)) else source
        if self.slots is None:
            if self.speedups.get("compile") or self.speedups.get("cuda_graph_blocks"):
                raise AdapterError(f"adapter {name!r}: this engine was compiled without LoRA slots; name its adapters "
                                   "when it loads", param=name)
            self._install_slots(slot_spec([weights]))
        missing = sorted(set(weights.modules) - self.slots.modules)
        if missing or weights.rank > self.slots.rank:
            what = f"layer {missing[0]}" if missing else f"rank {weights.rank}"
            raise AdapterError(f"adapter {name!r} needs {what}, beyond the LoRA slots this replica made at start "
                               f"(rank {self.slots.rank}, {len(self.slots.modules)} layers): configure it before "
                               "the replica starts", param=name)
        modules = {m: (a, b, factor) for m, (a, b, factor) in weights.modules.items()}
        held = HeldAdapter(name, str(weights.path), scale, self.slots.layout(modules))
        self.adapters[name] = held
        return held

    def unload_adapter(self, name: str) -> None:
        """Stop holding ``name`` (a batch already given it still runs with it)."""
        held = self.adapters.pop(name, None)
        if held is not None and self.slots is not None:
            self.slots.forget(held)

    def _install_slots(self, spec, fold: bool = False) -> None:
        from .optim.lora_slots import install_slots  # only when adapters are used

        # the model's dtype: float32 on the CPU (peft's arithmetic, so images equal stock's exactly), bf16 on the
        # GPU, where float32 LoRA cost 1.43x the base denoise (casts and matmuls without tensor cores; bench lora)
        self.slots = install_slots(self.pipe.transformer, spec, device=self.device, dtype=self.loaded.dtype, fold=fold)
        if fold and self.device.type == "cuda":  # the base weights replaced: their blocks back to the GPU, not cached
            torch.cuda.empty_cache()

    def _use_adapter(self, request: GenerationRequest, held: "HeldAdapter | None" = None) -> None:
        """The transformer as ``request`` asks: with its adapter (``held``, else the one held by that name) at its
        scale, what stock diffusers' ``set_adapters([name], [scale])`` makes, or the base model (every slot's scale
        zero: exactly the base, whose weights adapters never change)."""
        if request.adapter is None:
            if self.slots is not None:
                self.slots.use(None, None)
            return
        held = held if held is not None and held.name == request.adapter else self.adapters.get(request.adapter)
        if held is None:
            raise ValueError(f"adapter {request.adapter!r} is not loaded; loaded: {sorted(self.adapters) or 'none'}")
        scale = request.adapter_scale if request.adapter_scale is not None else held.scale
        self.slots.use(held, held.weights, scale)

    def _embeds(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.to(self.device, self.loaded.dtype, non_blocking=True) for t in tensors]

    @torch.inference_mode()
    def generate(self, jobs: list[Job], decode: bool = True) -> Result:
        """Images for ``jobs``, in transformer batches of requests that may share one (``GenerationRequest.batch_key``),
        at most max_batch each; one whose jobs were all cancelled stops early, its images None (model/watch.py).
        ``decode`` False: the images None, not decoded (the warm-up's calls after its first: see startup.warm_up)."""
        result = Result(images=[None] * len(jobs), seconds={"denoise": 0.0, "decode": 0.0})
        key = lambda i: jobs[i].request.batch_key
        order = sorted(range(len(jobs)), key=lambda i: repr(key(i)))
        for _, group in groupby(order, key=key):
            group = list(group)
            for start in range(0, len(group), self.max_batch):
                idx = group[start:start + self.max_batch]
                try:
                    images = self._run([jobs[i] for i in idx], result, decode)
                except Cancelled:  # every job of this transformer batch was cancelled: no image is wanted
                    continue
                for i, image in zip(idx, images):
                    result.images[i] = image
                result.batch_sizes.append(len(idx))
        return result

    def blocks_one_by_one(self):
        """A context in which the transformer's block stacks run block by block, not as one CUDA graph each: a
        ControlNet adds its hints between blocks (optim/graphs.py)."""
        from .optim.graphs import blocks_one_by_one  # CUDA graphs: only where a ControlNet runs

        return blocks_one_by_one(self.pipe.transformer)

    def _run(self, jobs: list[Job], result: Result, decode: bool = True) -> list:
        j0 = jobs[0].request
        if j0.control_image is not None and self.controlnet is None:
            raise ValueError("this engine was loaded without a ControlNet")
        negative = None
        if j0.guided:
            if any(j.negative_embeds is None for j in jobs):
                raise ValueError("guidance_scale > 0 needs negative_embeds (the encoding of the negative prompt, '' by default)")
            negative = self._embeds([j.negative_embeds for j in jobs])
        self._use_adapter(j0, jobs[0].adapter)  # a batch holds one adapter and scale (GenerationRequest.batch_key)
        t0 = time.perf_counter()
        try:
            latents = MODES[j0.mode](self, jobs, self._embeds([j.embeds for j in jobs]), negative)
            self._sync()
            t1 = time.perf_counter()
            images = [self._decode(latents[i:i + 1]) if decode else None for i in range(len(jobs))]
        finally:
            for hook in self.loaded.hooks:
                hook.offload()
        self._sync()
        result.seconds["denoise"] += t1 - t0
        result.seconds["decode"] += time.perf_counter() - t1
        return images

    def step_hooks(self, jobs: list[Job]) -> dict:
        """The pipeline arguments that tell the jobs' watches of each step (model/watch.py); {} when none watches."""
        return step_hooks([j.watch for j in jobs])

    def _decode(self, latents: torch.Tensor):
        vae = self.pipe.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image_size = tuple(n * self._vae_scale for n in latents.shape[-2:])
        # A compiled decoder compiles for the plan's size only (at warmup); another size, or tiles, run eagerly
        eager_only = self.compiled_decoder and (vae.use_tiling or image_size != (self.plan.workload.height,
                                                                                 self.plan.workload.width))
        with compiled_shapes_only() if eager_only else contextlib.nullcontext():
            image = vae.decode(latents, return_dict=False)[0]
        return _to_pil(image, self.pipe.image_processor.config.do_normalize)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _to_pil(image: torch.Tensor, denormalize: bool = True):
    """diffusers' ``postprocess(output_type="pil")`` for one [1, C, H, W] image, the same arithmetic in the
    same order (bf16 denormalize, then float32 x 255, round half to even, uint8) but on the image's device,
    so 3 bytes a pixel cross to the CPU instead of 4-byte floats converted there."""
    if denormalize:
        image = (image * 0.5 + 0.5).clamp(0, 1)
    pixels = (image[0].float() * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    return Image.fromarray(pixels.squeeze(-1), mode="L") if pixels.shape[-1] == 1 else Image.fromarray(pixels)


# The public name of the image -> PIL conversion (bench/steps/decode.py times it against diffusers' postprocess).
to_pil = _to_pil
