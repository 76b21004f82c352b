"""Distributed batch generation as a Ray job (Ray Data), also ``zimage-serve batch``.

    ray job submit --working-dir . -- python -m zimage_serve.batch --prompts prompts.jsonl --out /data/out

Stages: a CPU stage encodes prompts in batches; a GPU actor pool (one GPU per actor, as many
actors as GPUs, or a MIN-MAX range on an autoscaling cluster) generates with the engine and its
staging plan, items sorted so batches share a shape; CPU writers encode each image and write it
atomically while the GPUs go on; the driver appends its manifest line. A rerun into the same
directory does only the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..arguments import add_adapter_argument, add_model_arguments, integer, parse_adapters, ray_init_options
from ..core.bounds import Bounds
from ..core.control import INPAINT_NEEDS_2X
from ..core.errors import ZImageError
from ..core.formats import FORMATS
from ..progress import Progress
from .output import OutputDir
from .prompts_file import read_prompts
from .stages import EncodeStage, GenerateStage, WriteStage, row as row_of

log = logging.getLogger("zimage_serve")
# Ray Data hands a block on when its task ends, so blocks of one GPU batch make the first image and each
# manifest line come soon; past this many blocks a larger job gets larger blocks, since each block costs
# the driver about 1.5 ms (bench/blocks.py: 100,000 prompts built and iterated in 25,000 blocks 48.0 s,
# in 10,000 26.1 s; a million prompts make 100-prompt blocks).
MAX_BLOCKS = 10_000


def add_arguments(b: argparse.ArgumentParser) -> None:
    """The batch job's options (``zimage-serve batch`` and ``python -m zimage_serve.batch``)."""
    b.add_argument("--prompts", required=True,
                   help="JSONL (id, prompt, seed, size, steps, negative_prompt, model, lora_scale, image, ...) or text")
    b.add_argument("--out", required=True, help="output directory (resumable)")
    add_model_arguments(b)
    add_adapter_argument(b, "a LoRA adapter that prompts-file lines name in 'model' (repeatable)")
    b.add_argument("--controlnet", default=None, metavar="SOURCE",
                   help="a Z-Image Union ControlNet for lines with a control_image: a ZImageControlNetModel directory, "
                        "the single .safetensors file as published, or a ModelScope id")
    b.add_argument("--size", default="1024x1024")
    b.add_argument("--steps", type=integer, default=8)
    b.add_argument("--seed", type=integer, default=0, help="base seed: a line without one gets seed + line number")
    b.add_argument("--batch-size", type=integer, default=4, help="images per transformer batch")
    b.add_argument("--gpus", default=None, help="generator actors: N, or MIN-MAX on an autoscaling cluster")
    b.add_argument("--format", choices=list(FORMATS), default="png")
    b.add_argument("--verify", action="store_true",
                   help="on a rerun, read every finished image back and compare its SHA-256 with the manifest "
                        "(default: its size; the writes are atomic, so only a change made outside the job differs)")
    b.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="on GPU: fused projections, regional torch.compile and the VAE decoder's norms compiled "
                        "(tens of seconds per actor on a cold compile cache; the cache is kept)")
    b.add_argument("--fp8", nargs="?", const="on", default="off", choices=["off", "on", "auto"],
                   help="FP8 weights and matmuls on Hopper/Ada GPUs (faster, slightly different images): --fp8 always "
                        "(an error on older GPUs), --fp8 auto where bf16 doesn't fit resident, as generator.fp8 does")
    b.add_argument("--encoder-cpus", type=integer, default=None,
                   help="CPUs (and threads) of the prompt encoder (default: half of those the GPU actors leave, 1 to 16)")
    b.add_argument("--encoder-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="the prompt encoder's dtype; auto: bfloat16 on CPUs with AMX, else float32 (as serving's encoder)")


def parse_actors(gpus: str | None) -> tuple[int, int] | None:
    """--gpus N or MIN-MAX -> (min, max) generator actors; None: one per GPU of the cluster."""
    if not gpus:
        return None
    try:
        lo, _, hi = gpus.partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise ZImageError(f"--gpus must be N or MIN-MAX, got {gpus!r}") from None
    if not 1 <= lo <= hi:
        raise ZImageError(f"--gpus must be N or MIN-MAX with 1 <= MIN <= MAX, got {gpus!r}")
    return lo, hi


def encoder_cpus(requested: int | None, cluster_cpus: int, generator_actors: int, node_cpus: int | None = None) -> int:
    """CPUs (and torch threads) of the prompt-encoding actor: as requested, else half of what the
    generator actors leave, between 1 and 16 (a 4B encoder in bf16 on 7 AMX cores outpaces one H100),
    and no more than the largest node has (one actor runs on one node)."""
    if requested is not None:
        return requested
    return max(1, min(16, (cluster_cpus - generator_actors) // 2, node_cpus or cluster_cpus))


def block_count(prompts: int, batch_size: int) -> int:
    """Blocks of one GPU batch each, at most MAX_BLOCKS."""
    return max(1, min(prompts // batch_size, MAX_BLOCKS))


def run(args) -> int:
    adapters = parse_adapters(getattr(args, "adapter", None) or [])  # local files checked, before Ray
    controlnet = getattr(args, "controlnet", None)
    if controlnet:
        from ..model.controlnet import find_controlnet  # headers only, before Ray

        path = Path(controlnet).expanduser()
        found = find_controlnet(str(path.resolve()) if path.exists() else controlnet)
        controlnet = str(found.path)
    items = read_prompts(args.prompts, args.size, args.steps, args.seed,  # every line checked, before Ray
                         adapters=frozenset(adapters), controlnet=bool(controlnet))
    inpaint = [i.line for i in items if i.control_image and i.mask]
    if inpaint and controlnet and not found.inpaint:
        raise ZImageError(f"{args.prompts}: line {inpaint[0]} (and {len(inpaint) - 1} more): {INPAINT_NEEDS_2X}; "
                          f"{args.controlnet} is 1.0")
    actors = parse_actors(args.gpus)
    if args.batch_size < 1:
        raise ZImageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.encoder_cpus is not None and args.encoder_cpus < 1:
        raise ZImageError(f"--encoder-cpus must be at least 1, got {args.encoder_cpus}")
    out = OutputDir(args.out)
    done = out.recover(verify=args.verify)
    todo = [(i, i.request(args.format)) for i in items if i.id not in done]
    # batches that share a transformer batch run together (an edit's mode is known once its inputs are read)
    todo.sort(key=lambda pair: repr((pair[1].batch_key, pair[0].image is not None, pair[0].mask is not None,
                                     pair[0].control_image is not None)))
    print(f"{len(items)} prompts: {len(items) - len(todo)} already done in {out.path}, {len(todo)} to generate",
          file=sys.stderr, flush=True)
    if not todo:
        return 0

    # Ray and the resolver only when the job runs: the CLI imports this module for its options
    import ray

    from ..model.sources import resolve

    # every Ray worker (the stages' actors) sets up our logging first (arguments.py)
    ray.init(logging_level=logging.WARNING, ignore_reinit_error=True, **ray_init_options())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    # the rows carry typed requests (and the stages' arrays of objects), which Arrow can't hold: pickled by
    # design, said here, so that Ray Data doesn't warn in the driver and again in each stage's actor
    ctx.enable_fallback_to_arrow_object_ext_type = True
    resources = ray.cluster_resources()
    cluster_gpus = int(resources.get("GPU", 0))
    # resolved for where the images are made: 'auto' is the hub model when the cluster has GPUs (the driver
    # itself usually has none)
    source = resolve(args.model, gpu=cluster_gpus > 0)
    lo, hi = actors or (max(1, cluster_gpus),) * 2
    largest_node = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]), default=1)
    enc_cpus = encoder_cpus(args.encoder_cpus, int(resources.get("CPU", 1)), hi, largest_node)
    # the generator actors' plan, logged by each actor as it loads, follows
    print(f"model {source.label}; {lo if lo == hi else f'{lo}-{hi}'} generator actor(s) on "
          f"{'a GPU each' if cluster_gpus else 'CPU'}, prompt encoder on {enc_cpus} CPU(s)", file=sys.stderr)
    # fixed actor pools, or MIN-MAX autoscaling ones (map_batches' concurrency= is deprecated since Ray 2.51)
    pool = lambda: ray.data.ActorPoolStrategy(**({"size": lo} if lo == hi else {"min_size": lo, "max_size": hi}))
    gpus_per_actor = 1.0 if cluster_gpus else 0.0
    model = str(source.path)
    # the plan's size: the largest asked for, or the bounds' when an edit is made at its input's size
    max_side = max(max(r.width, r.height) if i.sized else Bounds().max_side for i, r in todo)
    rows = [row_of(i, r) for i, r in todo]
    ds = ray.data.from_items(rows, override_num_blocks=block_count(len(rows), args.batch_size))
    # encoder blocks of one GPU batch, at least 4 prompts (bf16 on AMX: 0.19 s a prompt at 4, 0.18 at 8,
    # ../shared/gpu/README.md): the GPU stage then answers, and the manifest and progress advance, batch by batch
    ds = ds.map_batches(EncodeStage, fn_constructor_args=(model, enc_cpus, args.encoder_dtype),
                        batch_size=max(4, args.batch_size), compute=ray.data.ActorPoolStrategy(size=1),
                        num_cpus=enc_cpus, batch_format="numpy")
    used = {r.adapter for _, r in todo if r.adapter}  # the actors hold the adapters this run's lines name
    ds = ds.map_batches(GenerateStage, fn_constructor_args=(model, args.batch_size, args.policy, max_side,
                                                            args.compile, {"off": False, "on": True}.get(args.fp8, args.fp8),
                                                            {n: a for n, a in adapters.items() if n in used},
                                                            controlnet if any(i.control_image for i, _ in todo) else None),
                        batch_size=args.batch_size, compute=pool(), num_gpus=gpus_per_actor,
                        num_cpus=1, batch_format="numpy")
    # One writer per generator keeps up: a PNG takes about 0.03 s (png.py), an image about 0.8 s of an H100.
    # No CPU reserved (like the Serve ingress): a writer must never wait for CPUs that the encoder holds
    # while the encoder waits for the writers to drain the queue.
    ds = ds.map_batches(WriteStage, fn_constructor_args=(str(out.path),), batch_size=None,
                        compute=pool(), num_cpus=0, batch_format="numpy")
    t0 = time.perf_counter()
    # on a terminal a bar from the first image on (before it, Ray Data logs its plan and the actors load theirs);
    # elsewhere a line every 10 s and one at the end; the rate counts from here either way
    progress = Progress(len(todo), "batch", start=t0)
    count, failed = 0, 0
    for row in ds.iter_rows():
        if row["error"]:  # no image: the line says why (a rerun tries it again)
            lora = {"model": str(row["model"])} if row["model"] else {}
            out.append({"id": str(row["id"]), "prompt": str(row["prompt"]), **lora, "error": str(row["error"])})
            failed += 1
        else:
            lora = {"model": str(row["model"]), "lora_scale": float(row["lora_scale"])} if row["model"] else {}
            out.append({"id": str(row["id"]), "prompt": str(row["prompt"]), "seed": int(row["seed"]),
                        "size": str(row["size"]), "steps": int(row["steps"]), **lora, "file": str(row["file"]),
                        "bytes": int(row["bytes"]), "sha256": str(row["sha256"]), "seconds": float(row["seconds"])})
            count += 1
        progress.update()
    progress.close()
    print(f"wrote {count} images to {out.path} ({count / (time.perf_counter() - t0):.2f} images/s); "
          f"manifest: {out.manifest}", file=sys.stderr)
    if failed:
        print(f"{failed} line(s) failed: their manifest lines say why (a rerun tries them again)", file=sys.stderr)
        return 1
    return 0
