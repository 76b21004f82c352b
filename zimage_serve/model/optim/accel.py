"""GPU speed-ups applied to a loaded pipeline: for the transformer fused projections, regional torch.compile
(with a persistent compile cache so new replicas skip most of the compile), an attention backend, opt-in
FP8 and CUDA graphs; for the VAE decoder compiled GroupNorm+SiLU pairs.

Each is measured against stock diffusers in bench/ (BENCHMARKS.md explains the gains).

Importing this module changes nothing in the process (tests/model/test_global_state.py checks the whole
package). The compile cache is process state, so it is set up by one explicit call, :func:`compile_setup`,
which :func:`accelerate` and :func:`accelerate_vae` make when they compile, before the first compile: it sets
the environment variables TORCHINDUCTOR_CACHE_DIR (unless the user chose one), TORCHINDUCTOR_FX_GRAPH_CACHE
and TORCHINDUCTOR_AUTOGRAD_CACHE (unless set), ``torch.compiler.config.job_id`` (unless set), raises
``torch._dynamo.config.cache_size_limit`` to at least 64 and sets ``torch.fx.experimental._config
.backed_size_oblivious`` (batch 1 shares the larger batches' graphs). A process that never compiles never has them
set.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ...settings import environment

log = logging.getLogger("zimage_serve")


def use_compile_cache(cache_dir: str) -> None:
    """Persist Inductor/AOT caches on disk (a shared volume in a cluster): a new replica reuses the
    compiled kernels instead of compiling again. Must run before the first compile.

    Also names the job for Dynamo's profile-guided dynamic shapes (kept in the same directory): the first
    process learns which dimensions vary (batch, caption length) by compiling twice; later ones read that
    and compile each graph once, dynamic from the start."""
    # Inductor's internals only when a compile cache is set up
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # (see above)
    except ImportError:
        from torch._inductor.runtime.runtime_utils import default_cache_dir  # torch < 2.7

    os.makedirs(cache_dir, exist_ok=True)
    # Importing torch._dynamo (diffusers does) sets TORCHINDUCTOR_CACHE_DIR to torch's default under /tmp, so
    # that value means "not chosen": only a directory the user named is kept
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    if torch.compiler.config.job_id is None:  # TORCH_COMPILE_JOB_ID, when set, wins
        torch.compiler.config.job_id = f"zimage-serve-torch{torch.__version__}"


def quantize_fp8(transformer: torch.nn.Module, min_features: int = 1024) -> int:
    """FP8 rowwise matmuls on the wide Linear layers of the repeated DiT blocks, where nearly all the
    FLOPs are (see fp8.py); embedders and the final layer stay bf16. Raises RuntimeError when the GPU can't."""
    from .fp8 import quantize_linears, supported  # only when FP8 is asked for

    why_not = supported()
    if why_not:
        raise RuntimeError(why_not)
    block_types = tuple(getattr(transformer, "_repeated_blocks", ()))
    return sum(quantize_linears(m, min_features) for m in transformer.modules() if type(m).__name__ in block_types)


def accelerate_vae(vae: torch.nn.Module, cache_dir: str | None = None, whole: bool = False) -> dict:
    """torch.compile of the VAE decoder's GroupNorm+SiLU pairs (lean_vae.GroupNormSiLU): eager GroupNorm at
    full resolution is much of the decode, and compiled each pair is one kernel writing one output.
    ``whole`` compiles the whole decoder instead (Inductor also fuses the residual adds): 0.043 s against 0.051 s
    at 1024² on the H100, but its activations peak 0.38 GiB higher than eager and it compiles twice as long
    (bench run36), so the engine doesn't. The encoder's pairs stay eager: compiled, a 1024² encode took the
    same 0.045 s (bench run44).

    Static shapes (dynamic ones were slower and still compiled again for a new size, bench run21):
    Engine._decode runs any size but the plan's under :func:`compiled_shapes_only`, eagerly, instead of
    compiling on a request."""
    from .lean_vae import GroupNormSiLU  # only when the VAE is compiled

    compile_setup(cache_dir)
    if whole:
        vae.decoder.compile(dynamic=False)
        return {"vae_compile": "decoder"}
    norms = [m for m in vae.decoder.modules() if isinstance(m, GroupNormSiLU)]
    for m in norms:
        m.compile(dynamic=False)
    return {"vae_compile": f"{len(norms)} GroupNorm+SiLU"}


def compiled_shapes_only():
    """A context in which compiled code runs for the shapes it was compiled for and anything else runs
    eagerly, never compiling (torch.compiler's "eager_on_recompile" stance)."""
    return torch.compiler.set_stance("eager_on_recompile")


def compile_setup(cache_dir: str | None) -> None:
    """The persistent compile cache (ZIMAGE_CACHE_DIR/compile by default) and room for a few shapes per graph.

    The one place that writes process-global compile state (this module's docstring lists it); call it
    before the first ``torch.compile`` of the process. Idempotent."""
    use_compile_cache(cache_dir or str(environment().cache_dir / "compile"))
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # a dimension compiled dynamic (the batch, once the job's profile says it varies) is not specialized at size 1:
    # batch 1 and larger batches share one graph per block kind, one compile (or cache load) fewer each at a
    # replica's start. (torch 2.7+: older ones keep a graph for batch 1)
    from torch.fx.experimental import _config as fx_config  # (torch's symbolic-shapes settings)

    if hasattr(fx_config, "backed_size_oblivious"):
        fx_config.backed_size_oblivious = True


def accelerate_controlnet(controlnet, *, compile: bool = True, fuse: bool = True, fp8: bool = False,
                          compile_mode: str | None = None, cache_dir: str | None = None, **_) -> dict:
    """The transformer's speed-ups on a resident ControlNet's own blocks (its control layers and control
    noise refiner; what it runs of the transformer's is the transformer's, already accelerated): fused
    projections, FP8, and a regional compile of its blocks (control_blocks.py). Returns what was applied."""
    blocks = [b for name in ("control_layers", "control_noise_refiner")
              for b in (getattr(controlnet, name, None) or ())]
    applied = {}
    if fuse:
        from .fusion import fuse_projections  # only when fusing

        applied["controlnet_fused_blocks"] = sum(fuse_projections(b) for b in blocks)
    if fp8:
        from .fp8 import quantize_linears  # (see quantize_fp8)

        applied["controlnet_fp8_linear_layers"] = sum(quantize_linears(b, 1024) for b in blocks)
    if compile:
        from .control_blocks import compile_control_blocks  # only for a ControlNet

        compile_setup(cache_dir)
        count = compile_control_blocks(controlnet, **({"mode": compile_mode} if compile_mode else {}))
        applied["controlnet_compile"] = f"{count} blocks, one graph"
    log.info("controlnet speed-ups: %s", applied or "none")
    return applied


def artefacts_dir(transformer, cache_dir: str | None = None, compile_mode: str | None = None,
                  batched: bool = True) -> Path:
    """Where the compiled code of ``transformer``'s blocks is saved and loaded (aot.py): under the compile cache,
    in a directory named by what the code assumes (aot_key.artefact_key; ``batched``: batches of more than one)."""
    from .aot_key import artefact_key  # only when compiling with artefacts

    return (Path(cache_dir or environment().cache_dir / "compile") / "aot"
            / artefact_key(transformer, compile_mode, batched))


def accelerate(transformer, *, compile: bool = True, attention_backend: str | None = None, fp8: bool = False,
               fuse: bool = True, compile_mode: str | None = None, cache_dir: str | None = None,
               cuda_graphs: bool = False, compile_artifacts: bool = False, batched: bool = True,
               before_quantize=None, seconds: dict | None = None) -> dict:
    """Apply the speed-ups in place; returns what was applied (for logs and /readyz).

    ``before_quantize(transformer)``, when given, runs after fusing and before FP8, compiling and CUDA graphs
    (the engine makes its LoRA slots there). ``compile_artifacts``: with ``compile``, the blocks run the compiled
    code saved by an earlier replica where there is some (:func:`artefacts_dir`; ``batched``: the engine runs
    batches of more than one), not ``torch.compile``'s trace.

    ``fuse`` and ``cuda_graphs`` need a resident transformer (all weights on the GPU, no offload hooks).
    ``cache_dir`` defaults to ZIMAGE_CACHE_DIR/compile. ``seconds``, when given, gets each step's seconds (fuse,
    slots, fp8, compile setup, compile: wrapping or loading the saved code, cuda_graphs): a replica's start details."""
    applied, seconds = {}, seconds if seconds is not None else {}
    t = time.perf_counter()

    def took(step: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[step] = now - t
        t = now

    if fuse:
        from .fusion import fuse_projections  # only when fusing

        applied["fused_blocks"] = fuse_projections(transformer)
        took("fuse")
    if before_quantize is not None:
        before_quantize(transformer)
        took("slots")
    if attention_backend:
        transformer.set_attention_backend(attention_backend)
        applied["attention_backend"] = attention_backend
    if fp8:
        applied["fp8_linear_layers"] = quantize_fp8(transformer)
        took("fp8")
    if compile:
        compile_setup(cache_dir)
        took("compile_setup")
        loaded = []
        if compile_artifacts:
            from .aot import load  # (see artefacts_dir)

            directory = artefacts_dir(transformer, cache_dir, compile_mode, batched)
            applied["compile_artifacts"] = str(directory)  # (the engine saves there too: the key computed once)
            loaded = load(transformer, directory, compile_mode)
        if not loaded:
            transformer.compile_repeated_blocks(fullgraph=True, **({"mode": compile_mode} if compile_mode else {}))
        applied["compile"] = (f"regional (repeated blocks){', ' + compile_mode if compile_mode else ''}"
                              + (f", saved code of {len(loaded)} block kinds loaded" if loaded else ""))
        took("compile")
    if cuda_graphs:
        from .graphs import use_cuda_graphs  # only for CUDA graphs

        applied["cuda_graph_blocks"] = use_cuda_graphs(transformer)
        took("cuda_graphs")
    log.info("transformer speed-ups: %s", applied or "none")
    return applied
