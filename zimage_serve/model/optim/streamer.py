"""Partial residency: some of the transformer's main blocks streamed from host memory through two GPU buffers, the
others resident (planner.py's ``partial`` plans).

Every streamed block has the same structure, so two sets of GPU tensors shaped like one block's weights serve them
all: before block i runs, its weights are in buffer i % 2 (copied from pinned host memory on a copy stream) and the
block's parameters point at that buffer; as it starts, block i + 1's copy into the other buffer starts, once the
block that last used that buffer is done with it. The last streamed block prefetches the first two for the next call.
The copies overlap the compute of the blocks before them; a block waits only when its copy is not done yet.

Which blocks stream (:func:`streamed_positions`): spread evenly among the resident ones, not the last ones. The
copies are the bound (a bf16 block is 345 MiB, ~7 ms over PCIe, against ~3 ms of compute at 1024²), and with two
buffers only the next two streamed blocks can be copied ahead: behind a run of resident blocks the copy engine
would idle; between them it copies while they compute.

The blocks' parameters keep their identity (only their ``.data`` moves), so compiled code runs them unchanged.
CUDA graphs can't (weights change under them): the engine keeps them off for these plans. On the CPU (tests) the
buffers are host tensors and the copies synchronous: the same pointer swaps, checked against the resident model.
"""

from __future__ import annotations

import torch
from torch import nn


def _tensors(block: nn.Module) -> dict[str, torch.Tensor]:
    """A block's parameters and buffers, by name: what moves."""
    return {**dict(block.named_parameters()), **dict(block.named_buffers())}


class BlockStreamer:
    def __init__(self, blocks: list[nn.Module], device: torch.device):
        self.blocks, self.device = blocks, torch.device(device)
        cuda = self.device.type == "cuda"
        # the weights' home: pinned host memory (a copy from pageable memory can't overlap compute)
        self.host = [{name: (t.data.cpu().pin_memory() if cuda else t.data.cpu().clone())
                      for name, t in _tensors(b).items()} for b in blocks]
        self.buffers = [{name: torch.empty_like(t, device=self.device) for name, t in self.host[0].items()}
                        for _ in range(2)]
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self.loaded: list = [None, None]  # per buffer: (block index, copy-done event or None)
        self.freed: list = [None, None]  # per buffer: event after the compute of the block that last used it
        self.copies = 0  # blocks copied to the GPU so far
        # per block, its tensors and their twins in its buffer: what `before` points it at
        self.targets = [[(t, self.buffers[i % 2][name]) for name, t in _tensors(b).items()]
                        for i, b in enumerate(blocks)]
        for i in range(len(blocks)):  # the host copy is the weights' home now: each block points at its buffer
            self._point(i)

    def _point(self, i: int) -> None:
        for tensor, buffered in self.targets[i]:
            tensor.data = buffered

    @property
    def nbytes(self) -> int:
        """The GPU memory of the two buffers."""
        return sum(t.numel() * t.element_size() for buf in self.buffers for t in buf.values())

    def _load(self, i: int) -> None:
        """Start copying block i's weights into its buffer (after the buffer's last user is done)."""
        slot = i % 2
        if self.loaded[slot] is not None and self.loaded[slot][0] == i:
            return
        host, buffer = self.host[i], self.buffers[slot]
        self.copies += 1
        if self.copy_stream is None:
            for name, dst in buffer.items():
                dst.copy_(host[name])
            self.loaded[slot] = (i, None)
            return
        with torch.cuda.stream(self.copy_stream):
            if self.freed[slot] is not None:
                self.copy_stream.wait_event(self.freed[slot])
            for name, dst in buffer.items():
                dst.copy_(host[name], non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        self.loaded[slot] = (i, done)

    def before(self, i: int) -> None:
        """Block i is about to run: its weights in its buffer (waiting for their copy), the next block's copy
        started."""
        slot = i % 2
        self._load(i)  # already under way, unless this is the first call
        event = self.loaded[slot][1]
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        self._point(i)
        if i + 1 < len(self.blocks):
            self._load(i + 1)

    def after(self, i: int) -> None:
        """Block i has been launched: its buffer is free once the compute stream gets here."""
        if self.copy_stream is not None:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
            self.freed[i % 2] = done
        if i + 1 == len(self.blocks):  # the next call's first two streamed blocks, beside what runs before them
            self._load(0)
            if len(self.blocks) > 1:
                self._load(1)


class StreamedBlock(nn.Module):
    """A streamed block in its place in the transformer: it asks the streamer for its weights around the block's
    call. The block itself stays a plain block (regional torch.compile compiles it; this wrapper, which moves
    weights and waits on events, stays eager)."""

    def __init__(self, block: nn.Module, streamer: BlockStreamer, index: int):
        super().__init__()
        self.block = block
        self._streamer, self._index = streamer, index

    def forward(self, *args, **kwargs):
        self._streamer.before(self._index)
        out = self.block(*args, **kwargs)
        self._streamer.after(self._index)
        return out


def streamed_positions(layers: int, streamed: int) -> list[int]:
    """Which of ``layers`` main blocks a plan that streams ``streamed`` of them streams: spread evenly, the last
    block among them (so the copies run beside the resident blocks' compute; see the module's docstring)."""
    streamed = max(0, min(streamed, layers))
    return [(k + 1) * layers // streamed - 1 for k in range(streamed)] if streamed else []


def stream_blocks(transformer: nn.Module, positions: list[int], device) -> BlockStreamer | None:
    """Stream the main blocks (``transformer.layers``) at ``positions`` (ascending) of a transformer whose weights
    are on the CPU; the caller moves the rest to the GPU afterwards (the streamed blocks' tensors already point at
    the GPU buffers, so nothing of them is copied twice). None when nothing is streamed."""
    if not positions:
        return None
    layers = transformer.layers
    streamer = BlockStreamer([layers[i] for i in positions], device)
    for index, i in enumerate(positions):
        layers[i] = StreamedBlock(layers[i], streamer, index)
    return streamer
