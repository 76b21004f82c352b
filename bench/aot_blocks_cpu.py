"""The experiment behind model/optim/aot.py (which the engine now uses): could a warm replica load its transformer
blocks' compiled code without Dynamo tracing them? torch's AOT compile (``torch.compile(fn).aot_compile``, ``save_compiled_function``,
``torch.compiler.load_compiled_function``) against today's warm path (``compile_repeated_blocks`` on a warm compile
cache), on the CPU with the tiny checkpoint, each in a fresh process on one compile cache.

One artefact per block variant (modulated without and with a caption mask, unmodulated with a mask: the graphs the
warm-up makes; the unmodulated blocks' calls without a mask are left out of both paths) is compiled from ``ZImageTransformerBlock.forward`` with the block as an argument, batch and sequence
dynamic, and serves every block of that variant (their weights are the graph's inputs). Both paths then run the
same block calls (batch 1 and 2, caption lengths 16, 80 and mixed); each reports the seconds from the start of its
compile (or load) to the end of the first pass, a second pass's milliseconds, the graphs Dynamo traced and the
largest difference from eager.

What the artefacts drop, and a loader has to check itself (aot_key.artefact_key does): the global guards (the
attention backend, the processor's type), the traced source (diffusers' and fusion.py's), and they must be loaded
under ``torch.inference_mode()``. Untested on a GPU (Triton kernels, CUDA graphs).

    python bench/aot_blocks_cpu.py [--save]     # --save: bench/results/cpu/aot_blocks.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("mod_nomask", "mod_mask", "nomod_mask")
CASES = {"b1_cap16": (16,), "b1_cap80": (80,), "b2_cap16": (16, 16), "b2_cap80": (80, 80), "b2_mixed": (5, 40)}


def _model():
    import torch
    from diffusers import ZImageTransformer2DModel

    from zimage_serve.model.optim.fusion import fuse_projections
    from zimage_serve.model.sources import resolve

    model = ZImageTransformer2DModel.from_pretrained(resolve("tiny").path, subfolder="transformer", dtype=torch.float32)
    model.eval().requires_grad_(False)
    fuse_projections(model)
    return model


def _block_inputs(model, caption_tokens: tuple, size: int = 64) -> dict:
    """The arguments each block is called with in one eager forward: {stack name: [args per block]}."""
    import torch

    got, hooks = {}, []
    for name in ("layers", "noise_refiner", "context_refiner"):
        for block in getattr(model, name):
            hooks.append(block.register_forward_pre_hook(
                lambda m, args, name=name: got.setdefault(name, []).append(
                    tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args))))
    g = torch.Generator().manual_seed(0)
    c = model.config
    latents = [torch.randn(c.in_channels, 1, size // 8, size // 8, generator=g) for _ in caption_tokens]
    captions = [torch.randn(n, c.cap_feat_dim, generator=g) for n in caption_tokens]
    with torch.inference_mode():
        model(latents, torch.full((len(caption_tokens),), 0.5), captions, return_dict=False)
    for h in hooks:
        h.remove()
    return got


def _variant(block, args) -> str:
    return ("mod_" if block.modulation else "nomod_") + ("mask" if args[1] is not None else "nomask")


def _save(model, out: Path) -> dict:
    """Compile each variant ahead of time and save it; {variant: seconds}."""
    import torch
    from diffusers.models.transformers.transformer_z_image import ZImageTransformerBlock
    from torch._dynamo.guards import CheckFunctionManager

    unsupported = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)

    def guard_filter(entries):  # global guards and those that can't be serialized are dropped
        return [not (g.is_global or g.guard_type in unsupported or unsupported & set(g.derived_guard_types))
                for g in entries]

    inputs = _block_inputs(model, (5, 40))  # batch 2: no size-1 dimension to specialize on
    examples = {"mod_nomask": (model.layers[0], inputs["noise_refiner"][0]),
                "mod_mask": (model.layers[0], inputs["layers"][0]),
                "nomod_mask": (model.context_refiner[0], inputs["context_refiner"][0])}
    fn = torch.compile(ZImageTransformerBlock.forward, fullgraph=True, options={"guard_filter_fn": guard_filter})
    seconds = {}
    for name, (block, args) in examples.items():
        x, mask, freqs = args[:3]
        for t, dims in ((x, (0, 1)), (freqs, (0, 1)), (mask, (0, 1)), (args[3] if len(args) > 3 else None, (0,))):
            if t is not None:
                torch._dynamo.mark_dynamic(t, dims)
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn.aot_compile(((block, *args), {})).save_compiled_function(str(out / f"{name}.bin"))
        seconds[name] = round(time.perf_counter() - t0, 2)
    return seconds


def child(mode: str, cache: str, artefacts: Path) -> dict:
    """One fresh process: ``save``, or time the ``compile`` or ``aot`` path over the same block calls."""
    import torch
    from diffusers.models.transformers import transformer_z_image
    from torch._dynamo.utils import counters

    from zimage_serve.model.optim.accel import compile_setup

    compile_setup(cache)
    model = _model()
    if mode == "save":
        return {"aot_compile_s": _save(model, artefacts)}
    calls = [(block, args) for case in CASES.values() for stack, per_block in _block_inputs(model, case).items()
             for block, args in zip(getattr(model, stack), per_block)]
    left_out = sum(_variant(*c) not in VARIANTS for c in calls)  # the unmodulated blocks without a mask: no artefact
    calls = [c for c in calls if _variant(*c) in VARIANTS]  # (the same calls on both paths)
    with torch.inference_mode():
        reference = [block(*args) for block, args in calls]
    t0 = time.perf_counter()
    if mode == "compile":
        model.compile_repeated_blocks(fullgraph=True)
        run = lambda block, args: block(*args)
    else:
        with torch.inference_mode():  # (the guards are rebuilt with this thread's state: inference mode, as served)
            fns = {}
            for name in VARIANTS:
                with open(artefacts / f"{name}.bin", "rb") as f:
                    fns[name] = torch.compiler.load_compiled_function(f, f_globals=transformer_z_image.__dict__)
        run = lambda block, args: fns[_variant(block, args)](block, *args)
    with torch.inference_mode():
        outs = [run(block, args) for block, args in calls]
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        for block, args in calls:
            run(block, args)
        second = time.perf_counter() - t1
    diff = max((o - r).abs().max().item() for o, r in zip(outs, reference))
    return {"first_pass_s": round(first, 2), "second_pass_ms": round(second * 1e3, 1), "block_calls": len(calls),
            "graphs_traced": counters["stats"].get("unique_graphs", 0), "max_abs_diff_vs_eager": diff,
            "block_calls_left_out": left_out}


def _run(mode: str, cache: Path, artefacts: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1", "TORCHINDUCTOR_VEC_ISA_OK": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    r = subprocess.run([sys.executable, __file__, "--child", mode, str(cache), str(artefacts)], capture_output=True,
                       text=True, env=env, timeout=900)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{mode}: {r.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def main() -> int:
    import platform

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--save", action="store_true", help="write bench/results/cpu/aot_blocks.json")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, cache, artefacts = args.child
        print("RESULT " + json.dumps(child(mode, cache, Path(artefacts))), flush=True)
        return 0
    result = {"date": time.strftime("%Y-%m-%d"), "command": "python bench/aot_blocks_cpu.py" + (" --save" * args.save),
              "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory(prefix="aot-blocks-") as tmp:
        cache, artefacts = Path(tmp) / "compile", Path(tmp) / "aot"
        artefacts.mkdir()
        result["cold_compile"] = _run("compile", cache, artefacts)  # fills the compile cache (and the job's profile)
        result["save"] = _run("save", cache, artefacts)
        for attempt in range(2):  # each path twice, alternating, in fresh processes on the warm cache
            for mode in ("compile", "aot"):
                result.setdefault(f"warm_{mode}", []).append(_run(mode, cache, artefacts))
                print(mode, json.dumps(result[f"warm_{mode}"][-1]), flush=True)
    best = {m: min(r["first_pass_s"] for r in result[f"warm_{m}"]) for m in ("compile", "aot")}
    result["first_pass_ratio_aot_to_compile"] = round(best["aot"] / best["compile"], 3)
    print("first pass, AOT / compile (best of 2 each):", result["first_pass_ratio_aot_to_compile"])
    if args.save:
        out = ROOT / "bench" / "results" / "cpu" / "aot_blocks.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", out.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
