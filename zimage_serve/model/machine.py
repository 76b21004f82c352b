"""This machine's GPU as the planner needs it: its free memory, whether it has FP8 matmuls, and the plan for it;
and its memory allocator's settings."""

from __future__ import annotations

import logging
import os

import torch

from ..core.errors import PlanError
from ..settings import environment
from .planner import EXPANDABLE_SEGMENTS, ControlNetSizes, Plan, Workload, fixed_segments_extra_bytes, make_plan
from .sizes import sizes_of
from .sources import ModelSource


log = logging.getLogger("zimage_serve")


def prepare_allocator() -> None:
    """PyTorch's CUDA allocator with expandable segments, unless the user set PYTORCH_CUDA_ALLOC_CONF: a plan fills
    its card to the last GiB, and the default allocator's fragmentation alone ran a resident plan out of memory on
    a 16 GiB card (bench run52; with expandable segments it served, run54). Call in a process that will use the
    GPU, before its first CUDA allocation (a replica's or a batch actor's load, the CLI's generate); the one place
    the package sets it."""
    if environment().cuda_alloc_conf is None:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = EXPANDABLE_SEGMENTS


def gpu_free_bytes(device: str | None = None) -> int | None:
    """Free memory of the current CUDA device, or None when we run on CPU (or ZIMAGE_DEVICE=cpu)."""
    device = device or environment().device
    if device == "cpu" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    return free


def fp8_plans(fp8: bool | str, on_gpu: bool) -> bool | str:
    """What the planner may do with FP8 weights here: ``"auto"`` where the GPU has FP8 matmuls (compute capability
    8.9+; else bf16 only), ``True`` only there (else a PlanError naming the GPU), False as asked."""
    if not fp8 or not on_gpu:
        return False
    from .optim.fp8 import supported  # the GPU's compute capability

    why_not = supported()
    if why_not is None:
        return fp8
    if fp8 == "auto":
        return False
    raise PlanError(f"generator.fp8 is true but {why_not} (this one is {torch.cuda.get_device_name()}, "
                    f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))}); use fp8: auto "
                    "or false")


def plan_for_this_machine(source: ModelSource, workload: Workload, policy: str = "auto", encode_on: str = "auto",
                          device: str | None = None, reserve_bytes: int = 0, controlnet=None,
                          fp8: bool | str = False, partial_ok: bool = True, compiled: bool = True) -> Plan:
    """The plan for this GPU's free memory, less ``reserve_bytes`` kept for something else (LoRA adapters), with
    the ``controlnet`` (a controlnet.ControlNetSource) when one is served, and FP8 weights as ``fp8`` allows
    (:func:`fp8_plans`); ``partial_ok`` False where LoRA adapters are served (their slots need resident blocks);
    ``compiled`` False where the transformer runs eagerly (its activations are larger). An allocator without
    expandable segments keeps planner.fixed_segments_extra_bytes more free."""
    free = gpu_free_bytes(device)
    extra = fixed_segments_extra_bytes(environment().cuda_alloc_conf)  # (prepare_allocator's, in our GPU processes)
    if extra and free is not None:
        log.warning("the CUDA allocator runs without expandable segments (PYTORCH_CUDA_ALLOC_CONF=%s): the plan keeps "
                    "%.2f GiB more free", environment().cuda_alloc_conf, extra / 2**30)
    reserve_bytes += extra
    return make_plan(sizes_of(source), None if free is None else max(0, free - reserve_bytes), workload, policy,
                     encode_on, ControlNetSizes.of(controlnet.shapes) if controlnet is not None else None,
                     fp8_plans(fp8, free is not None), partial_ok, compiled)
