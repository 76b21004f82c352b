"""VRAM-aware staging: decide where each component lives before a byte of weights is loaded.

Pure arithmetic on component sizes (from safetensors headers, or the official configs when no
weights are at hand), the serving dtype, the GPU's free memory and a workload envelope. The
result is a small immutable :class:`Plan`; ``loader.load`` follows it component by component.

Placements: ``gpu`` (resident), ``cpu``, ``partial`` (as many of the transformer's main blocks resident as
the budget holds, the others streamed through two GPU buffers while the resident ones compute:
optim/streamer.py), ``offload`` (model-level: lives in host memory, moved whole to the GPU for its forward and
back), ``stream`` (block-level group offloading with CUDA streams: one block group on the GPU while the next is
prefetched).

Weights are bf16, or with ``fp8="auto"`` on a GPU that has FP8 matmuls (compute capability 8.9+) the wide
Linear weights of the transformer's blocks in FP8 (e4m3, a scale per row: optim/fp8.py) when that is what makes
the transformer resident or streams fewer of its blocks: half the bytes of nearly all of its weights.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..core.bounds import MAX_TEXT_TOKENS
from ..core.errors import PlanError

GiB = 2**30
POLICIES = ("auto", "resident", "partial", "offload", "sequential")
# host-to-device copy rate the time estimate of a streamed plan assumes (pinned memory, PCIe 4 x16 measured
# about 25 GB/s; PCIe 5 about twice that), and one 1024² step of the resident transformer (H100, compiled)
H2D_BYTES_PER_S = 25e9
_WIDE_LINEAR = re.compile(r"\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.(w1|w2|w3))\.weight$")
_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.")
ENCODE_CHOICES = ("auto", "cpu", "gpu")
# What a plan's process holds on the GPU beyond its peak of allocated tensors: the allocator's fragmentation and the
# libraries' own memory (cuBLAS and cuDNN workspaces, loaded kernels), with PyTorch's expandable segments (what GPU
# processes use: machine.prepare_allocator). Measured as nvidia-smi's peak, less the CUDA context, less torch's peak
# allocated, on 8 GiB cards at batch 4 (bench run68, H100): 0.36 GiB on the partial bf16 plan, 0.61 on the partial
# FP8 one; each reserve keeps about 0.4 GiB over that. The eager streamed plan held 1.65 GiB at its envelope with the
# default allocator (run67) and 1.67 with expandable segments (run69, 44 MiB under its 5 GiB card: torch's reserved
# memory stays 1.44 GiB over its allocated, group offloading's copies on their own stream keeping blocks of their own);
# its reserve keeps 0.33 GiB over that.
RESERVE_BYTES = int(0.75 * GiB)
FP8_RESERVE_BYTES = int(1.0 * GiB)
STREAM_RESERVE_BYTES = int(2.0 * GiB)
# more with an allocator of fixed segments (PyTorch's default, or a PYTORCH_CUDA_ALLOC_CONF without expandable
# segments): the same 8 GiB plans held 0.36-0.39 GiB more beyond their tensors with it (run66, an H200, against run68,
# an H100); the 12 GiB card held 0.79 GiB with it
FIXED_SEGMENTS_EXTRA_BYTES = int(0.5 * GiB)
EXPANDABLE_SEGMENTS = "expandable_segments:True"  # the allocator setting GPU processes use (machine.prepare_allocator)
# CUDA graphs keep their captured inputs and outputs and a pool for the blocks' activations apart: a resident plan uses
# them where its budget holds this much over its tensors, plus its activations (measured as a 0.75 GiB reserve and
# 1.0 GiB of headroom, then 1.0 and 0.75: the same cards)
GRAPH_SLACK_BYTES = int(1.75 * GiB)
# VAE decode's peak activations per output pixel, one image at a time, measured on an H100 at 1024²
# (BENCHMARKS.md): the lean decoder (lean_vae.py) 1.76 GiB -> 1900 B/px with 5% margin; tiled decode
# 0.6 GiB (one 512² tile plus the whole image's blending) -> 2600 B per pixel of a tile.
VAE_BYTES_PER_PIXEL_BF16 = 1900
VAE_TILE_BYTES_PER_PIXEL_BF16 = 2600
VAE_TILE = 512  # tiled decoding works on 512x512 tiles: its activations are those of one tile
TRANSFORMER_ACT_FACTOR = 14  # live hidden-sized tensors per token in one DiT block at inference (compiled)
# eager (the streamed plan, and any plan when compile is off): the streamed plan's batch of 4 at 1024² peaked at
# 2.79 GiB allocated against 2.70 estimated with 14 (weights 0.84 + activations 1.86; bench run65, envelopes); 16 holds
# it with 0.17 GiB to spare
EAGER_ACT_FACTOR = 16
_BLOCK = re.compile(r"^(?:model\.)?((?:layers|noise_refiner|context_refiner)\.\d+)\.")
_CONTROL_BLOCK = re.compile(r"^((?:control_layers|control_noise_refiner)\.\d+)\.")
_TE_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.")


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts the planner needs; ``origin`` says where they came from."""

    transformer_params: int
    transformer_block_params: int  # the largest repeated block (unit of streamed offload)
    transformer_blocks: int
    transformer_dim: int
    text_encoder_params: int  # what is run: every layer but the last (its output is unused)
    text_hidden: int
    vae_params: int
    origin: str
    transformer_layers: int = 0  # the main blocks (``layers.N``): what a partial plan streams
    block_linear_params: int = 0  # a block's wide Linear weights (q, k, v, out, w1, w2, w3): what FP8 halves

    @property
    def layers(self) -> int:
        return self.transformer_layers or self.transformer_blocks

    def transformer_bytes(self, fp8: bool = False) -> int:
        """The transformer's weights in bf16, or with the wide Linear weights of every block in FP8."""
        return 2 * self.transformer_params - (self.transformer_blocks * self.block_linear_params if fp8 else 0)

    def block_bytes(self, fp8: bool = False) -> int:
        return 2 * self.transformer_block_params - (self.block_linear_params if fp8 else 0)

    @classmethod
    def from_tensors(cls, tensors: dict, transformer_dim: int, text_hidden: int, origin: str) -> "ModelSizes":
        """Sizes from {component: {tensor name: (dtype, numel)}} (safetensors headers or a meta model)."""
        blocks: dict[str, int] = {}
        for name, (_, n) in tensors["transformer"].items():
            m = _BLOCK.match(name)
            if m:
                blocks[m.group(1)] = blocks.get(m.group(1), 0) + n
        main = {m.group(1) for m in map(_LAYER.match, tensors["transformer"]) if m}
        first = min(main, key=int, default=None)
        linear = sum(n for name, (_, n) in tensors["transformer"].items()
                     if first is not None and name.startswith(f"layers.{first}.") and _WIDE_LINEAR.search(name))
        te = tensors["text_encoder"]
        layers = [int(m.group(1)) for m in map(_TE_LAYER.match, te) if m]
        last = max(layers) if layers else -1
        te_run = sum(n for name, (_, n) in te.items() if not (_TE_LAYER.match(name) and int(_TE_LAYER.match(name).group(1)) == last))
        return cls(
            transformer_params=sum(n for _, n in tensors["transformer"].values()),
            transformer_block_params=max(blocks.values(), default=0),
            transformer_blocks=len(blocks),
            transformer_dim=transformer_dim,
            text_encoder_params=te_run,
            text_hidden=text_hidden,
            vae_params=sum(n for _, n in tensors["vae"].values()),
            origin=origin, transformer_layers=len(main), block_linear_params=linear,
        )


# Z-Image-Turbo's official configs, counted on the meta device (tests/test_planner.py checks them).
Z_IMAGE_TURBO = ModelSizes(
    transformer_params=6_154_908_736, transformer_block_params=180_910_336, transformer_blocks=34,
    transformer_dim=3840, text_encoder_params=3_921_537_280, text_hidden=2560, vae_params=83_819_683,
    origin="official Z-Image-Turbo config", transformer_layers=30, block_linear_params=176_947_200,
)


@dataclass(frozen=True)
class ControlNetSizes:
    """What a ControlNet adds (model/controlnet.py counts it from its headers): its parameters, and its largest
    block's (the unit it streams in)."""

    params: int
    block_params: int
    blocks: int

    @property
    def not_in_blocks(self) -> int:
        return self.params - self.blocks * self.block_params

    @classmethod
    def of(cls, shapes: dict) -> "ControlNetSizes":
        """From {tensor name: shape} of the ControlNet's files."""
        blocks: dict[str, int] = {}
        total = 0
        for name, shape in shapes.items():
            n = 1
            for d in shape:
                n *= d
            total += n
            m = _CONTROL_BLOCK.match(name)
            if m:
                blocks[m.group(1)] = blocks.get(m.group(1), 0) + n
        return cls(total, max(blocks.values(), default=0), len(blocks))


@dataclass(frozen=True)
class Workload:
    """The largest request a replica must serve: it bounds activation memory."""

    width: int = 1024
    height: int = 1024
    batch: int = 1


@dataclass(frozen=True)
class Plan:
    """Where each component lives and where prompts are encoded; sizes in GiB."""

    device: str  # "cuda" or "cpu"
    dtype: str  # "bfloat16" or "float32"
    policy: str  # what was asked for
    kind: str  # "resident", "offload", "sequential", or "cpu"
    transformer: str
    vae: str
    text_encoder: str
    encode_on: str  # "cpu" or "gpu"
    vae_tiling: bool  # decode in tiles (less memory) because the budget needs it
    budget_gib: float | None
    peak_gib: float
    weights_on_gpu_gib: float
    activations_gib: float
    workload: Workload
    origin: str
    controlnet: str = "none"  # where the ControlNet lives (as the transformer: gpu, offload, stream), or none
    controlnet_gib: float = 0.0  # its weights
    weights: str = "bf16"  # the transformer's block weights: bf16, or fp8 (the wide Linear weights)
    blocks_resident: int | None = None  # a partial plan: the main blocks kept on the GPU ...
    blocks_streamed: int = 0  # ... and those streamed
    streamed_gib_per_step: float = 0.0  # what a partial plan copies to the GPU per transformer call

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def text_encoder_stays(self) -> bool:
        """Whether the text encoder stays where it is loaded (the GPU or the CPU), not moved in and out with the
        transformer (an offload plan's)."""
        return self.text_encoder in ("gpu", "cpu")

    def describe(self) -> str:
        w = self.workload
        memory = (f"  memory        est. peak {self.peak_gib:.2f} GiB = weights {self.weights_on_gpu_gib:.2f} + activations "
                  f"{self.activations_gib:.2f} + reserve {reserve_bytes(self.kind, self.weights) / GiB:.2f}; budget {self.budget_gib:.2f} GiB free"
                  if self.budget_gib is not None else "  memory        no GPU: everything runs on the CPU in float32")
        transformer = self.transformer + (" (wide Linear weights in FP8)" if self.weights == "fp8" else "")
        if self.kind == "partial":
            seconds = self.streamed_gib_per_step * GiB / H2D_BYTES_PER_S
            transformer += (f": {self.blocks_resident} main blocks resident, {self.blocks_streamed} streamed "
                            f"(up to {self.streamed_gib_per_step:.2f} GiB a step, ~{seconds:.2f} s at "
                            f"{H2D_BYTES_PER_S / 1e9:.0f} GB/s, overlapped with the resident blocks' compute)")
        return "\n".join([
            f"plan: {self.kind} on {self.device} ({self.dtype}), policy {self.policy}; sizes from {self.origin}",
            f"  transformer   {transformer}",
            f"  vae           {self.vae}{' (tiled decode)' if self.vae_tiling else ''}",
            f"  text encoder  {self.text_encoder} (prompts encoded on {self.encode_on})",
            *([f"  controlnet    {self.controlnet} ({self.controlnet_gib:.2f} GiB)"] if self.controlnet != "none" else []),
            f"  envelope      {w.width}x{w.height}, batch {w.batch}",
            memory,
        ])


def _candidates(s: ModelSizes, w: Workload, bpe: int, cn: ControlNetSizes | None = None, fp8: bool = False,
                partial_ok: bool = True, compiled: bool = True):
    """(kind, placements, weights on GPU, activations, FP8) in order of speed, fastest first. A ControlNet goes
    where the transformer goes: resident beside it, offloaded with it (the two on the GPU together while
    denoising), or streamed a block at a time beside it (a partial plan keeps it resident). A partial plan's
    weights are those with one main block resident (make_plan fills the budget with more). With ``fp8``, FP8
    plans come after the bf16 resident ones (bf16 keeps images identical to stock diffusers) and before any plan
    that would stream more. ``compiled`` False: the transformer runs eagerly, with more live activations
    (EAGER_ACT_FACTOR), as the streamed plan always does."""
    C = cn.params * bpe if cn else 0
    TE, V = s.text_encoder_params * bpe, s.vae_params * bpe
    tokens = (w.width // 16) * (w.height // 16) + MAX_TEXT_TOKENS
    act_eager = w.batch * tokens * s.transformer_dim * bpe * EAGER_ACT_FACTOR
    act_t = w.batch * tokens * s.transformer_dim * bpe * TRANSFORMER_ACT_FACTOR if compiled else act_eager
    if cn:  # the ControlNet's hints (one per control block) live through the transformer's forward
        act_t += w.batch * tokens * s.transformer_dim * bpe * cn.blocks
    act_v = w.width * w.height * VAE_BYTES_PER_PIXEL_BF16 * bpe // 2
    act_te = w.batch * MAX_TEXT_TOKENS * s.text_hidden * bpe * TRANSFORMER_ACT_FACTOR
    act_tile = min(act_v, VAE_TILE * VAE_TILE * VAE_TILE_BYTES_PER_PIXEL_BF16 * bpe // 2)
    tilings = (False, True) if act_tile < act_v else (False,)

    def resident(f8: bool):
        T = s.transformer_bytes(f8) + C
        yield "resident", ("gpu", "gpu", "gpu", "gpu", False), T + V + TE, max(act_t, act_v, act_te), f8
        for tiled in tilings:  # tiled VAE decode: a little slower, much less memory at large sizes
            yield "resident", ("gpu", "gpu", "cpu", "cpu", tiled), T + V, max(act_t, act_tile if tiled else act_v), f8

    def partial(f8: bool):
        # the main blocks but one streamed through two buffers, everything else resident
        one = s.block_bytes(f8)
        fixed = s.transformer_bytes(f8) - s.layers * one + C + 2 * one + one
        for tiled in tilings:
            yield "partial", ("partial", "gpu", "cpu", "cpu", tiled), fixed + V, max(act_t, act_tile if tiled else act_v), f8

    yield from resident(False)
    if fp8:
        yield from resident(True)
        if partial_ok:
            yield from partial(True)
    if partial_ok:
        yield from partial(False)
    # model-level offload: the text encoder and the transformer (with the ControlNet) take turns on the GPU; the
    # small VAE stays
    T = s.transformer_bytes() + C
    big = max([(TE, act_te), (T, act_t)], key=lambda p: p[0] + p[1])
    for tiled in (False, True):
        yield "offload", ("offload", "gpu", "offload", "gpu", tiled), big[0] + V, max(big[1], act_tile if tiled else act_v), False
    # streamed: two block groups (current + prefetched) plus what is not in a block; its blocks, the
    # ControlNet's streamed too (what it runs of the transformer's shares the transformer's groups)
    block = s.transformer_block_params * bpe
    streamed = s.transformer_params * bpe - s.transformer_blocks * block + 2 * block
    streamed += (cn.not_in_blocks + 2 * cn.block_params) * bpe if cn else 0
    if cn:  # the ControlNet runs the transformer's embedders and refiners outside its forward, where group
        return  # offloading loads them: not streamed (a PlanError names the smallest plan that is)
    for tiled in (False, True):
        yield "sequential", ("stream", "gpu", "cpu", "cpu", tiled), streamed + V, max(act_eager, act_tile if tiled else act_v), False


def reserve_bytes(kind: str, weights: str = "bf16") -> int:
    """What a plan of ``kind`` with ``weights`` keeps free beyond its estimated tensors, with expandable segments
    (RESERVE_BYTES, FP8_RESERVE_BYTES, STREAM_RESERVE_BYTES; machine.plan_for_this_machine keeps more for another
    allocator)."""
    if kind == "sequential":
        return STREAM_RESERVE_BYTES
    return FP8_RESERVE_BYTES if weights == "fp8" else RESERVE_BYTES


def fixed_segments_extra_bytes(alloc_conf: str | None) -> int:
    """What a plan keeps free beyond :func:`reserve_bytes` in a process whose allocator is configured by
    ``alloc_conf`` (PYTORCH_CUDA_ALLOC_CONF's value; None: PyTorch's default, fixed segments): nothing with expandable
    segments, FIXED_SEGMENTS_EXTRA_BYTES otherwise."""
    return 0 if "expandable_segments:true" in (alloc_conf or "").replace(" ", "").lower() else FIXED_SEGMENTS_EXTRA_BYTES


def graph_headroom_gib(plan: "Plan") -> float:
    """The headroom over ``plan``'s peak (beyond its activations) that CUDA graphs need (GRAPH_SLACK_BYTES less the
    plan's reserve)."""
    return (GRAPH_SLACK_BYTES - reserve_bytes(plan.kind, plan.weights)) / GiB


def make_plan(sizes: ModelSizes, free_bytes: int | None, workload: Workload = Workload(),
              policy: str = "auto", encode_on: str = "auto", controlnet: ControlNetSizes | None = None,
              fp8: bool | str = False, partial_ok: bool = True, compiled: bool = True) -> Plan:
    """Pick the fastest staging that fits ``free_bytes`` of GPU memory (None: no GPU, run on CPU), with the
    ``controlnet`` where it goes (as the transformer) when one is served. ``fp8``: False, bf16 weights only;
    ``"auto"``, FP8 weights where bf16 ones don't fit resident (the caller says the GPU has FP8 matmuls); True,
    FP8 weights in every plan that keeps the transformer on the GPU. ``partial_ok`` False: no partial plans (LoRA
    adapters need every block resident). ``compiled``: whether the transformer will be compiled (eager
    activations are larger). A ControlNet is never streamed.

    Raises PlanError, with the numbers, when the policy asked for can't fit.
    """
    if policy not in POLICIES:
        raise PlanError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if encode_on not in ENCODE_CHOICES:
        raise PlanError(f"unknown encode_on {encode_on!r}; choose one of {', '.join(ENCODE_CHOICES)}")
    if free_bytes is None:
        return Plan(device="cpu", dtype="float32", policy=policy, kind="cpu", transformer="cpu", vae="cpu",
                    text_encoder="cpu", encode_on="gpu" if encode_on == "gpu" else "cpu",  # "gpu": in the generator
                    vae_tiling=False, budget_gib=None,
                    peak_gib=0.0, weights_on_gpu_gib=0.0, activations_gib=0.0, workload=workload, origin=sizes.origin,
                    controlnet="cpu" if controlnet else "none",
                    controlnet_gib=round(controlnet.params * 4 / GiB, 2) if controlnet else 0.0)
    tried = []
    for kind, (tr, vae, te, enc, tiled), weights, act, f8 in _candidates(sizes, workload, 2, controlnet, bool(fp8),
                                                                         partial_ok, compiled):
        if policy not in ("auto", kind) or (encode_on != "auto" and enc != encode_on):
            continue
        if fp8 is True and not f8 and kind in ("resident", "partial"):  # FP8 asked for: its plans only
            continue
        peak = weights + act + reserve_bytes(kind, "fp8" if f8 else "bf16")
        what = f"{kind}{' fp8' if f8 else ''} (text encoder {te}{', tiled VAE' if tiled else ''})"
        tried.append((peak, f"{what} needs {peak / GiB:.2f} GiB"
                      + (" with one main block resident" if kind == "partial" else "")))
        if peak > free_bytes:
            continue
        split = {}
        if kind == "partial":  # as many more main blocks resident as the rest of the budget holds
            one = sizes.block_bytes(f8)
            resident = min(sizes.layers - 1, 1 + (free_bytes - peak) // one)
            weights, peak = weights + (resident - 1) * one, peak + (resident - 1) * one
            split = dict(blocks_resident=int(resident), blocks_streamed=int(sizes.layers - resident),
                         streamed_gib_per_step=round((sizes.layers - resident) * one / GiB, 2))
        return Plan(device="cuda", dtype="bfloat16", policy=policy, kind=kind, transformer=tr, vae=vae,
                    text_encoder=te, encode_on=enc, vae_tiling=tiled, budget_gib=round(free_bytes / GiB, 2),
                    peak_gib=round(peak / GiB, 2), weights_on_gpu_gib=round(weights / GiB, 2),
                    activations_gib=round(act / GiB, 2), workload=workload, origin=sizes.origin,
                    controlnet=("gpu" if tr == "partial" else tr) if controlnet else "none",
                    controlnet_gib=round(controlnet.params * 2 / GiB, 2) if controlnet else 0.0,
                    weights="fp8" if f8 else "bf16", **split)
    if not tried and policy in ("sequential", "partial"):
        why = "a ControlNet is served (it is never streamed)" if policy == "sequential" else "LoRA adapters are served"
        raise PlanError(f"policy {policy!r} is not available: {why}; use policy auto")
    if not tried:
        raise PlanError(f"policy {policy!r} can't encode prompts on the {encode_on.upper()}; use encode_on auto")
    w = workload
    smallest = round(min(peak for peak, _ in tried) / GiB, 2)
    raise PlanError(f"no {policy} plan fits {free_bytes / GiB:.2f} GiB free for {w.width}x{w.height} batch {w.batch}: "
                    + "; ".join(text for _, text in tried) + f". The smallest needs {smallest:.2f} GiB: use a smaller "
                    "size or batch" + (", or policy sequential" if policy != "sequential" else ""), smallest_gib=smallest)
