"""CUDA graphs for the Z-Image DiT's block stacks: each stack replays as one graph per input shape.

A denoise step runs 34 blocks (2 noise refiners, 2 context refiners, 30 main layers). Compiled, each
block is a few dozen kernels; launching them costs CPU time, and wherever the CPU falls behind the
GPU idles. Replaying a captured graph launches a whole stack at once. Measured on the H100
(BENCHMARKS.md): 1.15x the denoise at 512², where a step is short; nothing at 1024², where the GPU is
the bound. The cost is memory (a replica with graphs peaked 0.7 GiB over its plan's estimate at batch
4, 1024²), which is why Engine.load keeps them for plans with headroom.

``use_cuda_graphs(transformer)`` swaps each ``nn.ModuleList`` of blocks for a :class:`GraphedBlocks`
holding the same modules (same names, same state dict). diffusers' forward iterates the list and
calls each block in turn with the same arguments but the first; iterating a ``GraphedBlocks`` yields
a single callable that runs every block, so the forward is unchanged. Per input shape (the shape of
every tensor argument, which None), the first call runs eagerly and is captured; later calls copy
their inputs into the captured ones and replay. Shapes are few: image tokens are fixed by the size,
caption tokens are padded to multiples of 32 by the model, and the batch is at most the plan's.

Graphs share one memory pool (they never run at once). Their captured inputs and outputs stay
allocated, so the number kept is bounded by bytes, least recently used first out.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn

log = logging.getLogger("zimage_serve")
# The stacks over image tokens: 32 of the 34 blocks and nearly all the launches. The 2 context refiners
# (on the caption's few tokens) stay eager: their capture failed on the H100 (bench/results/run14).
STACKS = ("noise_refiner", "layers")


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list, output: torch.Tensor):
        self.graph, self.inputs, self.output = graph, inputs, output
        self.bytes = sum(t.numel() * t.element_size() for t in inputs + [output] if isinstance(t, torch.Tensor))

    def replay(self, args: tuple) -> torch.Tensor:
        for static, arg in zip(self.inputs, args):
            if isinstance(static, torch.Tensor):
                static.copy_(arg)
        self.graph.replay()
        return self.output.clone()  # the next replay (another shape may share the memory) must not change it


class GraphedBlocks(nn.ModuleList):
    """The blocks of one stack; iterating yields one callable that runs them all, from a CUDA graph when it can."""

    def __init__(self, blocks: nn.ModuleList, shared: dict, max_bytes: int):
        super().__init__(list(blocks))
        self._shared, self._max_bytes = shared, max_bytes  # shared["pool"]: the memory pool of all stacks
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self.captures = 0

    def __iter__(self):
        if self._shared.get("one_by_one"):  # see blocks_one_by_one
            return iter(self._modules.values())
        return iter((self._run,))

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # ModuleList would build another GraphedBlocks with the wrong arguments
            return nn.ModuleList(list(self._modules.values())[idx])
        return super().__getitem__(idx)

    def _eager(self, x: torch.Tensor, *rest) -> torch.Tensor:
        for block in self._modules.values():
            x = block(x, *rest)
        return x

    def _run(self, x: torch.Tensor, *rest) -> torch.Tensor:
        args = (x,) + rest
        if (self._shared.get("failed") or not x.is_cuda or torch.is_grad_enabled()
                or torch.cuda.is_current_stream_capturing()):
            return self._eager(*args)
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a for a in args)
        captured = self._graphs.get(key)
        if captured is None:
            return self._capture(key, args)
        self._graphs.move_to_end(key)
        return captured.replay(args)

    def _capture(self, key: tuple, args: tuple) -> torch.Tensor:
        """Run eagerly on a side stream (compiles this shape, warms cuBLAS/cuDNN), then capture a graph."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = self._eager(*args)
        torch.cuda.current_stream().wait_stream(side)
        result.record_stream(torch.cuda.current_stream())
        inputs = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        graph = torch.cuda.CUDAGraph()
        t0 = time.perf_counter()
        try:  # thread_local: other threads (a health check) may use the GPU while this one captures
            if "pool" not in self._shared:
                self._shared["pool"] = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._shared["pool"], capture_error_mode="thread_local"):
                output = self._eager(*inputs)
        except RuntimeError as e:  # something in the blocks can't be captured: stay eager, correct and slower
            log.warning("CUDA graph capture failed for %s; every stack runs eagerly from now: %s", key, e)
            self._shared["failed"] = True  # a failed capture can leave the shared pool mid-recording
            self._graphs.clear()
            return result
        self._shared["capture_s"] = self._shared.get("capture_s", 0.0) + time.perf_counter() - t0
        self._graphs[key] = _Captured(graph, inputs, output)
        self.captures += 1
        while len(self._graphs) > 1 and sum(c.bytes for c in self._graphs.values()) > self._max_bytes:
            self._graphs.popitem(last=False)
        return result


@contextmanager
def blocks_one_by_one(transformer: nn.Module):
    """Within this context the GraphedBlocks of ``transformer`` iterate their blocks one by one (each compiled, none
    replayed from a graph), as diffusers' forward needs when a ControlNet adds a hint after some of them. Nothing
    changes for a transformer without graphs."""
    stacks = [s for s in (getattr(transformer, name, None) for name in STACKS) if isinstance(s, GraphedBlocks)]
    for stack in stacks:
        stack._shared["one_by_one"] = True
    try:
        yield
    finally:
        for stack in stacks:
            stack._shared["one_by_one"] = False


def capture_seconds(transformer: nn.Module) -> float:
    """Seconds the transformer's GraphedBlocks have spent capturing new shapes (not the eager run before each
    capture, which compiles); 0 without graphs."""
    stacks = [s for s in (getattr(transformer, name, None) for name in STACKS) if isinstance(s, GraphedBlocks)]
    return stacks[0]._shared.get("capture_s", 0.0) if stacks else 0.0


def use_cuda_graphs(transformer: nn.Module, max_bytes: int = 1 << 30) -> int:
    """Replace the block stacks of a resident, CUDA transformer with GraphedBlocks; returns how many blocks
    they hold. Call after compiling (each captured shape then replays the compiled kernels)."""
    shared: dict = {}
    count = 0
    for name in STACKS:
        blocks = getattr(transformer, name, None)
        if isinstance(blocks, nn.ModuleList) and not isinstance(blocks, GraphedBlocks) and len(blocks):
            setattr(transformer, name, GraphedBlocks(blocks, shared, max_bytes // len(STACKS)))
            count += len(blocks)
    return count
