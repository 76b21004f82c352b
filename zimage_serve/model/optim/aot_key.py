"""What the blocks' saved compiled code (aot.py) assumes: the name of its directory, and the CPU threads it runs at.

What the artefacts can't check themselves, their directory's name does (:func:`artefact_key`): the global guards are
dropped to save them (diffusers' process-wide attention backend among them; the processor's type and its own
backend are guarded), and the traced source isn't guarded at all. So the key hashes the Python, torch, diffusers and
Triton versions, the device (its name, compute capability and SM count), the dtype, the module and processor types
in the blocks and their source files, the attention backend settings, Inductor's and Dynamo's configuration, the
compile mode, whether the batch is dynamic (a replica that batches, or one that never does) and, on the CPU, torch's
CPU thread count.

Threads: Dynamo's global-state guard (kept) checks torch's CPU thread count, so code saved at one count refuses every
call made at another. Inductor's CPU kernels are made for the count: on the CPU the key names the process's count
(replicas of other counts save their own). Code for a GPU has no CPU kernels: it is saved, and called, at one fixed
count (:data:`GPU_THREADS`, set for the call and restored: 0.2-0.4 us a pair on torch's OpenMP build, measured on
the CPU machine), so every process on the node shares it whatever its own count (a serving replica's is its
num_cpus, a batch job's GPU worker's 1). The count is the process's while it is set: a thread whose first parallel
torch work falls inside a block call keeps that count (the GPU replicas' other threads encode PNGs and read
uploads, little torch work on the CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import diffusers
import torch
from torch import nn

FORMAT = 2  # bumped when what a directory holds changes
GPU_THREADS = 1  # torch's CPU threads while code for a GPU is saved and called (see the module's docstring)


def blocks(transformer: nn.Module) -> list[nn.Module]:
    """The transformer's repeated blocks, wherever they sit (a streamed one inside its StreamedBlock)."""
    kinds = set(getattr(transformer, "_repeated_blocks", ()))
    return [m for m in transformer.modules() if type(m).__name__ in kinds]


def call_threads(module: nn.Module, threads: int | None = None) -> int | None:
    """The CPU thread count the code of a transformer's blocks (or of a block) is saved and called at: ``threads``
    when given, :data:`GPU_THREADS` for blocks on a GPU, else None: the process's own, whatever it is at the call
    (the CPU's kernels are made for it)."""
    if threads is not None:
        return threads
    param = next((blocks(module) or [module])[0].parameters(), None)
    return GPU_THREADS if param is not None and param.device.type == "cuda" else None


class Threads:
    """torch's CPU thread count set to ``count`` within (None: left as it is), then restored."""

    def __init__(self, count: int | None):
        self._count, self._before = count, None

    def __enter__(self) -> None:
        if self._count is not None and torch.get_num_threads() != self._count:
            self._before = torch.get_num_threads()
            torch.set_num_threads(self._count)

    def __exit__(self, *exc) -> None:
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None


def artefact_key(transformer: nn.Module, compile_mode: str | None = None, batched: bool = True,
                 threads: int | None = None) -> str:
    """The name of the directory whose artefacts this transformer may load: a hash of everything the artefacts
    assume and don't guard (see the module's docstring). ``batched``: the replica runs batches of more than one;
    ``threads``: the CPU threads the code is saved and called at (:func:`call_threads`)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry  # (the process-wide backend)
    from torch._dynamo import config as dynamo_config  # (their configuration: part of what the code assumes)
    from torch._inductor import config as inductor_config
    from torch.fx.experimental import _config as fx_config

    found = blocks(transformer)
    if not found:
        raise ValueError("the transformer has no repeated blocks to compile")
    types, sources = set(), set()
    for block in found:
        for m in block.modules():
            types.add(f"{type(m).__module__}.{type(m).__qualname__}")
            processor = getattr(m, "processor", None)
            if processor is not None:
                types.add(f"{type(processor).__module__}.{type(processor).__qualname__}"
                          f"[{getattr(processor, '_attention_backend', None)}]")
                sources.add(type(processor).__module__)
            sources.add(type(m).__module__)
    sources.add("diffusers.models.attention_dispatch")
    digest = hashlib.sha256()
    for name in sorted(sources):
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            digest.update(name.encode() + Path(path).read_bytes())
    param = next(found[0].parameters())
    device = param.device
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        device_name = f"{props.name} sm{props.major}{props.minor} x{props.multi_processor_count}"
    else:
        device_name = device.type
    try:
        import triton  # (on CUDA machines only)
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    # paths under the working directory (where, not what); whether torch.compile offers aot_compile at all (off by
    # default before torch 2.13: the save turns it on)
    unkeyed = {"debug_dir_root", "enable_aot_compile"}
    config = lambda c: hashlib.sha256(json.dumps(_stable({k: v for k, v in c.save_config_portable().items()
                                                          if k not in unkeyed})).encode()).hexdigest()
    ignored_env = {"TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_COMPILE_THREADS"}  # (where and how fast, not what)
    parts = {"format": FORMAT, "python": sys.version_info[:2], "torch": torch.__version__,
             "diffusers": diffusers.__version__, "triton": triton_version, "cuda": torch.version.cuda,
             "device": device_name, "dtype": str(param.dtype), "modules": sorted(types), "sources": digest.hexdigest(),
             "attention": [str(_AttentionBackendRegistry._active_backend),
                           getattr(_AttentionBackendRegistry, "_checks_enabled", None)],
             "inductor": config(inductor_config), "dynamo": config(dynamo_config),
             "size_oblivious": getattr(fx_config, "backed_size_oblivious", None), "mode": compile_mode,
             "batched": batched,
             # the CPU threads the code is saved and called at (Dynamo's global-state guard checks them)
             "threads": call_threads(transformer, threads) or torch.get_num_threads(),
             "env": sorted((k, v) for k, v in os.environ.items()
                           if k.startswith(("TORCHINDUCTOR_", "DIFFUSERS_ATTN")) and k not in ignored_env)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _stable(value):
    """``value`` with its sets sorted and everything else as its repr: the same in every process (a set's order
    follows string hashes, which differ from process to process)."""
    if isinstance(value, (set, frozenset)):
        return sorted((_stable(v) for v in value), key=repr)
    if isinstance(value, dict):
        return sorted(([repr(k), _stable(v)] for k, v in value.items()), key=repr)
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return repr(value)
