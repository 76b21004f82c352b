"""The transformer blocks' compiled code, saved once per node and loaded by later replicas without Dynamo.

A replica on a warm compile cache still traces every block graph with Dynamo before Inductor's cache answers: most
of a warm replica's compile seconds (issue 23). torch's ahead-of-time compile (``torch.compile(fn).aot_compile``,
``save_compiled_function``, ``torch.compiler.load_compiled_function``) keeps what the trace made (the guards, the
bytecode, Inductor's output) in one file that a new process loads without tracing.

One artefact per block *variant*: modulated or not, with a caption mask or without (the graphs a denoise makes),
and the block's structure (its modules' types, its tensors' shapes and dtypes: a block with LoRA slots where another
has none is another variant). Compiled from ``ZImageTransformerBlock.forward`` with the block as an argument, batch
and sequence dynamic, it serves every block of its variant (their weights are inputs of the graph). The first
replica of a node records one call of each variant in an eager pass at the start of its warm-up
(:class:`Recorder`), compiles and saves them (:func:`save`, with an index of what it recorded) and loads them
(:func:`load`), as later replicas load them at their start: no replica traces its blocks through
``torch.compile``'s regional path. Compiled ahead of time, every graph is dynamic in the batch and sequence from the
start (the regional path compiles a static graph first on a cold cache, then a dynamic one).

What the artefacts can't check themselves, their directory's name does, and the CPU threads they run at are fixed
on a GPU: aot_key.py. Anything else an artefact guards (shapes, strides, dtypes, devices, the block's attributes,
grad mode) it checks on each call: a call that fails them, or one with arguments no artefact takes, runs through
``torch.compile`` instead (that call; logged once per variant).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import uuid
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from .aot_key import Threads, blocks, call_threads

log = logging.getLogger("zimage_serve")
GUARD_MISS = "GuardManager check failed"  # how a loaded function refuses a call (torch/_dynamo/aot_compile.py)
INDEX = "index.json"  # what the recording made: {variant: "saved" or why not}


def _structure(block: nn.Module) -> str:
    """A short hash of a block's structure: its modules' names and types, its tensors' names, shapes and dtypes."""
    parts = [(name, f"{type(m).__module__}.{type(m).__qualname__}") for name, m in block.named_modules()]
    parts += [(name, tuple(t.shape), str(t.dtype)) for name, t in chain(block.named_parameters(), block.named_buffers())]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:10]


def _names(block: nn.Module) -> tuple[str, str]:
    """The names of a block's two variants: (with a caption mask, without)."""
    kind, structure = "mod" if getattr(block, "modulation", False) else "nomod", _structure(block)
    return f"{kind}_mask-{structure}", f"{kind}_nomask-{structure}"


def _pick(names: tuple[str, str], args: tuple) -> str | None:
    """Which of a block's variants (:func:`_names`) a call with ``args`` needs; None for arguments no artefact takes
    (fewer than x, mask and RoPE)."""
    return None if len(args) < 3 else names[0] if args[1] is not None else names[1]


def variant(block: nn.Module, args: tuple) -> str | None:
    """Which compiled graph a block call needs: modulated or not, with a caption mask or without, and the block's
    structure; None for a call whose arguments no artefact takes."""
    return _pick(_names(block), args)


def _guard_filter(entries) -> list[bool]:
    """Keep the guards on the call's arguments; drop the global ones and those on the attention processor's code
    (ID matches, which can't be saved: the key stands for them) and any other that can't be saved."""
    from torch._dynamo.guards import CheckFunctionManager  # Dynamo's internals, at the save only

    unsupported = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    return [not (g.is_global or g.guard_type in unsupported or unsupported & set(g.derived_guard_types)
                 or "__code__" in g.name or "__call__" in g.name) for g in entries]


class Recorder:
    """Records one call of each block variant, the largest batch's (no size-1 dimension for Dynamo to specialize
    on), with forward pre-hooks: a context manager; ``examples`` maps each variant to (a block, copies of its
    arguments). Run the calls eagerly within it (``torch.compiler.set_stance("force_eager")``, and no CUDA graph
    replays): compiled blocks don't guard on their hooks, so code compiled inside would keep recording after it."""

    def __init__(self, transformer: nn.Module):
        self._names = {block: _names(block) for block in blocks(transformer)}
        self.examples: dict[str, tuple[nn.Module, tuple]] = {}
        self._hooks: list = []

    def _record(self, block: nn.Module, args: tuple) -> None:
        name = _pick(self._names[block], args)
        if name is None:
            return
        held = self.examples.get(name)
        if held is None or args[0].shape[0] > held[1][0].shape[0]:
            self.examples[name] = (block, tuple(_copy(a) for a in args))

    def __enter__(self) -> "Recorder":
        for block in self._names:
            self._hooks.append(block.register_forward_pre_hook(lambda m, args: self._record(m, args)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


def _copy(a):
    """A copy of a block's argument with its strides (the artefact guards them), or the argument itself."""
    if not isinstance(a, torch.Tensor):
        return a
    return torch.empty_strided(a.size(), a.stride(), dtype=a.dtype, device=a.device).copy_(a)


def _mark_dynamic(args: tuple) -> None:
    """Batch and sequence dynamic (the mask's and RoPE's too), the conditioning's batch."""
    batch = args[0].shape[0] > 1
    dims = (0, 1) if batch else (1,)
    for t in args[:3]:
        if isinstance(t, torch.Tensor):
            torch._dynamo.mark_dynamic(t, dims)
    if batch and len(args) > 3 and isinstance(args[3], torch.Tensor):
        torch._dynamo.mark_dynamic(args[3], 0)


def save(examples: dict, directory: Path, compile_mode: str | None = None, threads: int | None = None
         ) -> dict[str, float]:
    """Compile each recorded variant ahead of time and write it under ``directory`` (atomically, beside anything
    another replica wrote), then the index of what was recorded; {variant: seconds}. A variant that fails to compile
    or save is logged, and the index says why, so that no later replica records and compiles it again.
    ``examples`` (a Recorder's) is emptied as it goes: its copies of the arguments are freed one by one.
    ``threads``: the CPU threads to save the code at (:func:`call_threads`; as :func:`load` decides them)."""
    from torch._inductor import list_mode_options  # (see _guard_filter)

    directory.mkdir(parents=True, exist_ok=True)
    options = {**(list_mode_options(compile_mode) if compile_mode else {}), "guard_filter_fn": _guard_filter}
    seconds, index, fn = {}, {}, None
    for name in sorted(examples):
        block, args = examples.pop(name)
        target = directory / f"{name}.bin"
        if target.exists():  # another replica's, meanwhile
            index[name] = "saved"
            continue
        t0 = time.perf_counter()
        try:
            if fn is None:  # one for every variant (a second torch.compile of the forward saves guards it can't)
                # (torch before 2.13 gives the compiled function its aot_compile only with this flag on, its default
                # off; 2.13's default is on)
                with torch._dynamo.config.patch(enable_aot_compile=True):
                    fn = torch.compile(type(block).forward, fullgraph=True, options=options)
            with torch.inference_mode(), Threads(call_threads(block, threads)):  # inference tensors, as served
                args = tuple(a if not isinstance(a, torch.Tensor) or a.is_inference() else _copy(a) for a in args)
                _mark_dynamic(args)
                compiled = fn.aot_compile(((block, *args), {}))
            _write(directory, target.name, lambda tmp: compiled.save_compiled_function(str(tmp)))
        except Exception as e:  # an artefact is an optimization: the replica serves on without it
            cause = e.__cause__ or getattr(e, "inner_exception", None)
            if isinstance(e, torch.OutOfMemoryError) or isinstance(cause, torch.OutOfMemoryError):
                _merge_index(directory, index)  # what was saved so far; the rest: a later replica tries again
                raise torch.OutOfMemoryError(str(cause or e)) from e
            why = f"{type(e).__name__}: {str(e)[:300]}"
            log.warning("could not save the compiled %s blocks: %s", name, why)
            if not isinstance(e, OSError):  # (a full disk may not be full for the next replica)
                index[name] = f"not saved: {why}"
            continue
        index[name] = "saved"
        seconds[name] = round(time.perf_counter() - t0, 2)
    _merge_index(directory, index)
    return seconds


def _merge_index(directory: Path, entries: dict) -> None:
    """Add ``entries`` to the directory's index (replicas that save at once each add theirs)."""
    import fcntl  # (Linux: the index's lock)

    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            index = json.loads((directory / INDEX).read_text())
        except (OSError, ValueError):
            index = {}
        index.update(entries)
        _write(directory, INDEX, lambda tmp: tmp.write_text(json.dumps(index, indent=1, sort_keys=True)))


def _write(directory: Path, name: str, write) -> None:
    """``write(path)`` to a temporary file beside ``directory / name``, then renamed to it (atomic)."""
    tmp = directory / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        os.replace(tmp, directory / name)
    finally:
        tmp.unlink(missing_ok=True)


def needs_recording(directory: Path, transformer: nn.Module) -> bool:
    """Whether a replica should record and save the variants: the index under ``directory`` has none of one of the
    transformer's block structures (no replica like this one recorded yet), or a file it says was saved is gone."""
    try:
        index = json.loads((directory / INDEX).read_text())
    except (OSError, ValueError):
        return True
    recorded = {name.rsplit("-", 1)[-1] for name in index}
    return (any(structure not in recorded for structure in {_structure(b) for b in blocks(transformer)})
            or any(state == "saved" and not (directory / f"{name}.bin").exists() for name, state in index.items()))


class AotForward:
    """A block's forward through the loaded artefact of its variant. A call an artefact refuses (its guards), one of
    a variant without an artefact, or one with arguments no artefact takes, runs through ``torch.compile`` instead
    (one compiled function shared by all blocks, as regional compilation shares one); the artefact stays for the
    calls that fit it."""

    def __init__(self, block: nn.Module, shared: dict):
        # shared: {"loaded": {variant: (fn, check, run)}, "compiled": fn, "missed": {variant: calls},
        #          "threads": the CPU threads to call the loaded code at (None: the process's)}
        self._block, self._shared, self._names = block, shared, _names(block)

    def __call__(self, *args, **kwargs):
        shared, block = self._shared, self._block
        name = None if kwargs else _pick(self._names, args)
        loaded = shared["loaded"].get(name)
        if loaded is not None:
            fn, check, run = loaded
            with Threads(shared["threads"]):  # (the count the code was saved at: its guards check it)
                if check is None:  # (another torch's compiled function: its own call checks and raises)
                    try:
                        return fn(block, *args)
                    except RuntimeError as e:
                        if not str(e).startswith(GUARD_MISS):
                            raise
                        why = str(e)[len(GUARD_MISS):]
                elif check(block, *args):  # the guards, then the code: no exception to raise on a miss
                    return run(block, *args)
                else:
                    why = "its guards" if name in shared["missed"] else _why(fn, block, args)
            if name not in shared["missed"]:
                log.warning("the saved compiled %s blocks don't fit this call (%s); it compiles instead",
                            name, why.strip(" ,:")[:300])
        elif name not in shared["missed"]:
            log.warning("no saved compiled code for the %s blocks; they compile", name)
        shared["missed"][name] = shared["missed"].get(name, 0) + 1
        return shared["compiled"](block, *args, **kwargs)


def _why(fn, block, args) -> str:
    """Which of a loaded function's guards a call fails (for the log: building it costs more than the check)."""
    try:
        return str(fn._artifacts.guard_manager.check_verbose(fn.prepare_f_locals(block, *args)))
    except Exception:  # (torch's internals: the log line is all it is for)
        return "its guards"


def _parts(fn) -> tuple:
    """(a loaded function, its guard check, its code): the check and the code None where torch's compiled function
    has no such parts (AotForward then calls the function, which checks and raises)."""
    check, run = getattr(fn, "guard_check", None), getattr(fn, "fn", None)
    return (fn, check, run) if check is not None and run is not None else (fn, None, None)


def load(transformer: nn.Module, directory: Path, compile_mode: str | None = None, threads: int | None = None
         ) -> list[str]:
    """Run the transformer's blocks through the artefacts saved under ``directory``: the variants loaded (an empty
    list, with nothing changed, when there are none or none loads). ``threads``: the CPU threads the code was saved
    at (:func:`call_threads`), which each call sets."""
    found = blocks(transformer)
    if any("forward" in vars(b) and not isinstance(vars(b)["forward"], AotForward) for b in found):
        return []  # a hook that replaced the forward (accelerate's offload): leave it
    loaded, threads = {}, call_threads(transformer, threads)
    for path in sorted(directory.glob("*.bin")) if directory.is_dir() else ():
        try:
            with torch.inference_mode(), Threads(threads), open(path, "rb") as f:
                # (its guards rebuilt with the serving thread's state)
                loaded[path.stem] = torch.compiler.load_compiled_function(
                    f, f_globals=sys.modules[type(found[0]).__module__].__dict__)
        except Exception as e:
            log.warning("could not load the compiled %s blocks from %s: %s: %s", path.stem, directory,
                        type(e).__name__, str(e)[:300])
    if not loaded:
        return []
    forward = type(found[0]).forward
    shared = {"loaded": {name: _parts(fn) for name, fn in loaded.items()}, "missed": {},
              "threads": threads,
              "compiled": torch.compile(forward, fullgraph=True, **({"mode": compile_mode} if compile_mode else {}))}
    for block in found:
        block.forward = AotForward(block, shared)
        block._compiled_call_impl = None  # (a regional torch.compile of the block, not run yet, undone)
    return sorted(loaded)


def _shared(transformer: nn.Module) -> dict | None:
    """What the transformer's AotForwards share (load's ``shared``), or None when its blocks run no saved code."""
    forward = next((getattr(b, "forward", None) for b in blocks(transformer)), None)
    return forward._shared if isinstance(forward, AotForward) else None


def loaded_variants(transformer: nn.Module) -> set[str]:
    """The variants the transformer's blocks run saved code of."""
    return set((_shared(transformer) or {}).get("loaded", ()))


def saved_variants(directory: Path) -> set[str]:
    """The variants saved under ``directory``."""
    return {p.stem for p in directory.glob("*.bin")} if directory.is_dir() else set()


def runs_saved_code_only(transformer: nn.Module) -> bool:
    """Whether every variant the transformer's blocks can call (with and without a caption mask, of each block kind)
    runs loaded saved code: nothing of them is left to compile, but a call its guards refuse."""
    needed = {name for block in blocks(transformer) for name in _names(block)}
    return bool(needed) and needed <= loaded_variants(transformer)


def uses_artefacts(transformer: nn.Module) -> bool:
    """Whether the transformer's blocks run through loaded artefacts."""
    return _shared(transformer) is not None


def calls_compiled_instead(transformer: nn.Module) -> dict:
    """{variant (None: arguments no artefact takes): calls} that ran through ``torch.compile``, not an artefact."""
    return dict((_shared(transformer) or {}).get("missed", {}))
