"""Reads a component's safetensors weights onto its device in background threads, so a replica's start can read
its weights while it imports diffusers and transformers (the two take about as long; bench step ``scaleout``).

Only torch is needed to read: the module is built afterwards, with its parameters on the meta device, and the
tensors read here are assigned to it (:func:`assemble`), each one its own allocation, so later rewrites (fused
projections, FP8) free what they replace. On a CUDA device each thread reads a tensor's bytes in chunks into
pinned buffers (``os.preadv``, which releases the GIL: reading from the page cache runs beside the imports)
and copies them to the GPU on its own stream while it reads the next chunk; a tensor stored in another dtype
than the one served is converted on the GPU. On the CPU the bytes are read straight into the tensor.

Safetensors only; the file's header is checked as any checkpoint's (offsets inside the file, known dtypes).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import ModelSourceError
from .sources import safetensors_header

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
CHUNK_BYTES = 32 << 20  # one pinned buffer; each thread has two, so it reads one while the other copies


@dataclass(frozen=True)
class _Entry:
    path: Path
    name: str
    dtype: torch.dtype
    shape: tuple
    start: int  # absolute offsets in the file
    end: int


def _entries(path: Path) -> list[_Entry]:
    data, header, size = safetensors_header(path)
    entries = []
    for name, info in header.items():
        if info.get("dtype") not in _DTYPES:
            raise Unsupported(f"{path}: tensor {name} is {info.get('dtype')}")
        dtype, shape = _DTYPES[info["dtype"]], tuple(info.get("shape", ()))
        try:
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            begin = end = -1
        numel = 1
        for d in shape:
            numel *= d
        if not 0 <= begin <= end <= size - data or end - begin != numel * dtype.itemsize:
            raise ModelSourceError(f"{path} is not a readable safetensors file (tensor {name}'s offsets don't match "
                                   "its shape or the file)")
        entries.append(_Entry(path, name, dtype, shape, data + begin, data + end))
    return entries


class Unsupported(Exception):
    """A file this reader doesn't read (a dtype it doesn't know), though it may be a good one: diffusers reads it."""


class WeightReader:
    """Reads every tensor of ``files`` (``keep``, when given: those whose names it keeps) onto ``device`` (as
    ``dtype`` where given: floating tensors only) in ``threads`` threads, started at once; :meth:`result` waits for
    them and returns {name: tensor}."""

    def __init__(self, files: list[Path], device: torch.device | str, dtype: torch.dtype | None = None,
                 threads: int = 8, keep=None):
        self.device, self.dtype = torch.device(device), dtype
        entries = [e for f in files for e in _entries(Path(f)) if keep is None or keep(e.name)]
        entries.sort(key=lambda e: e.end - e.start, reverse=True)  # the largest first: the threads finish together
        self.bytes = sum(e.end - e.start for e in entries)
        self._todo, self._lock = entries, threading.Lock()
        self._tensors: dict[str, torch.Tensor] = {}
        self._error: BaseException | None = None
        self._t0 = time.perf_counter()
        self.seconds: float | None = None  # from the start to the last thread's end
        self._threads = [threading.Thread(target=self._work, name=f"weights-{i}", daemon=True)
                         for i in range(max(1, min(threads, len(entries))))]
        for t in self._threads:
            t.start()

    def drop(self) -> None:
        """Wait for the threads and let go of what they read (before reading the weights another way)."""
        for t in self._threads:
            t.join()
        self._tensors.clear()

    def result(self) -> dict[str, torch.Tensor]:
        """The tensors read, handed over once: the reader keeps no reference, so that what the model's later
        rewrites replace (fused projections, LoRA slots, FP8) is freed then, not when the reader goes."""
        for t in self._threads:
            t.join()
        if self._error is not None:
            raise self._error
        tensors, self._tensors = self._tensors, {}
        return tensors

    def _next(self) -> _Entry | None:
        with self._lock:
            return self._todo.pop(0) if self._todo and self._error is None else None

    def _work(self) -> None:
        try:
            if self.device.type == "cuda":
                self._work_cuda()
            else:
                self._work_cpu()
        except BaseException as e:  # reported by result(), in the caller's thread
            with self._lock:
                self._error = self._error or e
        finally:  # when the last thread is done: the reads' own seconds, whenever result() is called
            with self._lock:
                self.seconds = time.perf_counter() - self._t0

    def _converts(self, tensor: torch.Tensor) -> bool:
        return self.dtype is not None and tensor.is_floating_point() and tensor.dtype != self.dtype

    def _convert(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if self._converts(tensor) else tensor

    def _work_cpu(self) -> None:
        files: dict[Path, int] = {}
        try:
            while (e := self._next()) is not None:
                if e.path not in files:
                    files[e.path] = os.open(e.path, os.O_RDONLY)
                fd = files[e.path]
                raw = torch.empty(e.end - e.start, dtype=torch.uint8)
                _read(fd, memoryview(raw.numpy()), e.start)
                self._tensors[e.name] = self._convert(raw.view(e.dtype).view(e.shape))
        finally:
            for fd in files.values():
                os.close(fd)

    def _work_cuda(self) -> None:
        """Each tensor is allocated on the default stream (a block freed later, as fusing frees the projections it
        replaces, must go back to the pool every allocation uses, not to this thread's stream's) and filled on this
        thread's own stream once that has waited for the default stream; a conversion runs on the default stream
        once it has waited for the copies. The two pinned buffers (64 MiB) stay in PyTorch's pinned-memory cache."""
        stream = torch.cuda.Stream(self.device)
        buffers = [torch.empty(CHUNK_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        views = [memoryview(b.numpy()) for b in buffers]
        done = [None, None]  # the event after each buffer's last copy: it may be refilled once that has run
        files: dict[Path, int] = {}
        k = 0
        try:
            while (e := self._next()) is not None:
                if e.path not in files:
                    files[e.path] = os.open(e.path, os.O_RDONLY)
                fd = files[e.path]
                raw = torch.empty(e.end - e.start, dtype=torch.uint8, device=self.device)
                # the block may have been freed by work still queued on the default stream (the conversion of an
                # earlier tensor, in this thread or another): write to it only after that work
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for offset in range(0, e.end - e.start, CHUNK_BYTES):
                        n = min(CHUNK_BYTES, e.end - e.start - offset)
                        if done[k] is not None:
                            done[k].synchronize()
                        _read(fd, views[k][:n], e.start + offset)
                        raw[offset:offset + n].copy_(buffers[k][:n], non_blocking=True)
                        done[k] = stream.record_event()
                        k = 1 - k
                tensor = raw.view(e.dtype).view(e.shape)
                if self._converts(tensor):
                    torch.cuda.current_stream(self.device).wait_stream(stream)
                    tensor = self._convert(tensor)
                self._tensors[e.name] = tensor
        finally:  # every copy done before result() hands the tensors over (or an error frees them)
            stream.synchronize()
            torch.cuda.current_stream(self.device).synchronize()
            for fd in files.values():
                os.close(fd)


def _read(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the file's bytes from ``offset`` (preadv may return fewer than asked)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise ModelSourceError(f"unexpected end of a weights file at byte {offset + got}")
        got += n


def assemble(cls, config: dict, tensors: dict[str, torch.Tensor]):
    """The diffusers model ``cls`` built from ``config`` with its parameters on the meta device, then given
    ``tensors`` (strictly: every parameter and persistent buffer, nothing else), in eval mode without grads: what
    ``cls.from_pretrained`` makes from the same files."""
    from accelerate import init_empty_weights  # with the model classes: diffusers depends on it

    with init_empty_weights():
        model = cls.from_config(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelSourceError(f"the {cls.__name__} weights don't match its config: {what}")
    return model.eval().requires_grad_(False)
