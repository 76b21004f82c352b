"""Distributed batch generation as a Ray job (Ray Data), also ``zimage-serve batch``.

    ray job submit --working-dir . -- python -m zimage_serve.batch --prompts prompts.jsonl --out /data/out

Stages: a CPU stage encodes prompts in batches; a GPU actor pool (one GPU per actor, as many
actors as GPUs, or a MIN-MAX range on an autoscaling cluster) generates with the engine and its
staging plan, items sorted so batches share a shape; CPU writers encode each image and write it
atomically while the GPUs go on; the driver appends its manifest line. A rerun into the same
directory does only the rest.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time

import numpy as np

from .batch_output import OutputDir, write_atomic
from .errors import ZImageError
from .prompts_file import Item, read_prompts

log = logging.getLogger("zimage_serve")
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# Ray Data hands a block on when its task ends, so blocks of one GPU batch make the first image and each
# manifest line come soon; past this many blocks a larger job gets larger blocks, since each block costs
# the driver about 1.5 ms (bench/blocks.py: 100,000 prompts built and iterated in 25,000 blocks 48.0 s,
# in 10,000 26.1 s; a million prompts make 100-prompt blocks).
MAX_BLOCKS = 10_000


class EncodeStage:
    """Ray Data CPU stage: prompts -> embeddings (float32 arrays [tokens, hidden]).

    ``threads`` torch threads (Ray sets OMP_NUM_THREADS to the actor's num_cpus, so one unless told);
    ``dtype`` as the serving encoder's ``encoder.dtype`` (encoding.cpu_encoder_dtype)."""

    def __init__(self, model: str, threads: int = 1, dtype: str = "auto"):
        import torch

        from .encoding import PromptEncoder, cpu_encoder_dtype
        from .loader import load_text_encoder
        from .sources import resolve

        torch.set_num_threads(threads)
        self.dtype = cpu_encoder_dtype(dtype)
        self.encoder = PromptEncoder(*load_text_encoder(resolve(model), torch.device("cpu"), self.dtype))

    def __call__(self, batch: dict) -> dict:
        prompts = list(batch["prompt"])
        guided = [i for i, g in enumerate(batch["guidance_scale"]) if g > 0]
        embeds = self.encoder.encode(prompts + [str(batch["negative_prompt"][i]) for i in guided])
        arrays = [e.float().numpy() for e in embeds]
        negative = [np.zeros((0, arrays[0].shape[1]), np.float32)] * len(prompts)
        for k, i in enumerate(guided):
            negative[i] = arrays[len(prompts) + k]
        out = dict(batch)
        out["embeds"] = _objects(arrays[: len(prompts)])
        out["negative_embeds"] = _objects(negative)
        return out


def _objects(arrays: list) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


class GenerateStage:
    """Ray Data GPU stage: embeddings -> images, as uint8 pixel arrays for the WriteStage.

    It hands the pixels on instead of encoding and writing them itself, so the GPU starts the next
    batch while another actor encodes and writes this one."""

    def __init__(self, model: str, batch_size: int, policy: str, max_side: int, compile: bool = True, fp8: bool = False):
        from .engine import Engine, plan_for_this_machine
        from .planner import Workload
        from .sources import resolve

        source = resolve(model)
        plan = plan_for_this_machine(source, Workload(max_side, max_side, batch_size), policy, encode_on="cpu")
        # batches of at most plan.workload.batch; the speed-ups apply on a GPU only
        self.engine = Engine.load(source, plan, with_text_encoder=False, speedups={"compile": compile, "fp8": fp8})
        self.engine.set_progress(False)

    def __call__(self, batch: dict) -> dict:
        import torch

        from .engine import Job

        n = len(batch["id"])
        tensor = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # a writable copy
        jobs = [Job(embeds=tensor(batch["embeds"][i]), seed=int(batch["seed"][i]),
                    width=int(batch["width"][i]), height=int(batch["height"][i]), steps=int(batch["steps"][i]),
                    guidance_scale=float(batch["guidance_scale"][i]),
                    negative_embeds=tensor(batch["negative_embeds"][i]) if batch["guidance_scale"][i] > 0 else None)
                for i in range(n)]
        t0 = time.perf_counter()
        result = self.engine.generate(jobs)
        seconds = round((time.perf_counter() - t0) / n, 4)
        return {**{k: batch[k] for k in ("id", "prompt", "seed", "stem", "steps")},
                "size": np.array([f"{w}x{h}" for w, h in zip(batch["width"], batch["height"])]),
                "pixels": _objects([np.asarray(image) for image in result.images]), "seconds": np.full(n, seconds)}


class WriteStage:
    """Ray Data CPU stage: pixels -> image files, each written atomically, then its manifest row (a file
    exists before the driver lists it)."""

    def __init__(self, out_dir: str, fmt: str):
        self.out, self.fmt = OutputDir(out_dir), fmt

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        from .imaging import encode_image

        files, digests, sizes = [], [], []
        for stem, pixels in zip(batch["stem"], batch["pixels"]):
            data = encode_image(Image.fromarray(pixels), self.fmt)
            name = f"{stem}.{EXTENSIONS[self.fmt]}"
            write_atomic(self.out.path, name, data)
            files.append(name)
            digests.append(hashlib.sha256(data).hexdigest())
            sizes.append(len(data))
        return {**{k: batch[k] for k in ("id", "prompt", "seed", "size", "steps", "seconds")},
                "file": np.array(files), "bytes": np.array(sizes), "sha256": np.array(digests)}


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
    items = read_prompts(args.prompts, args.size, args.steps, args.seed)  # every line checked, before Ray
    actors = parse_actors(args.gpus)
    if args.batch_size < 1:
        raise ZImageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.encoder_cpus is not None and args.encoder_cpus < 1:
        raise ZImageError(f"--encoder-cpus must be at least 1, got {args.encoder_cpus}")
    out = OutputDir(args.out)
    done = out.recover(verify=args.verify)
    todo = sorted((i for i in items if i.id not in done), key=lambda i: (i.width, i.height, i.steps, i.guidance_scale))
    print(f"{len(items)} prompts: {len(items) - len(todo)} already done in {out.path}, {len(todo)} to generate",
          file=sys.stderr, flush=True)
    if not todo:
        return 0

    import ray
    from tqdm import tqdm

    from .sources import resolve

    source = resolve(args.model, gpu=False)
    if source.random_weights:
        print(f"model {source.label}", file=sys.stderr)
    ray.init(logging_level=logging.WARNING, ignore_reinit_error=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    resources = ray.cluster_resources()
    cluster_gpus = int(resources.get("GPU", 0))
    lo, hi = actors or (max(1, cluster_gpus),) * 2
    largest_node = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]), default=1)
    enc_cpus = encoder_cpus(args.encoder_cpus, int(resources.get("CPU", 1)), hi, largest_node)
    concurrency = lo if lo == hi else (lo, hi)
    gpus_per_actor = 1.0 if cluster_gpus else 0.0
    model = str(source.path)
    max_side = max(max(i.width, i.height) for i in todo)
    rows = [{**i.to_dict(), "stem": i.stem} for i in todo]
    ds = ray.data.from_items(rows, override_num_blocks=block_count(len(rows), args.batch_size))
    # encoder blocks of one GPU batch, at least 4 prompts (bf16 on AMX: 0.19 s a prompt at 4, 0.18 at 8,
    # ../shared/gpu/README.md): the GPU stage then answers, and the manifest and progress advance, batch by batch
    ds = ds.map_batches(EncodeStage, fn_constructor_args=(model, enc_cpus, args.encoder_dtype),
                        batch_size=max(4, args.batch_size), concurrency=1, num_cpus=enc_cpus, batch_format="numpy")
    ds = ds.map_batches(GenerateStage, fn_constructor_args=(model, args.batch_size, args.policy, max_side,
                                                            args.compile, args.fp8),
                        batch_size=args.batch_size, concurrency=concurrency, num_gpus=gpus_per_actor,
                        num_cpus=1, batch_format="numpy")
    # One writer per generator keeps up: a PNG takes about 0.03 s (png.py), an image about 0.8 s of an H100.
    # No CPU reserved (like the Serve ingress): a writer must never wait for CPUs that the encoder holds
    # while the encoder waits for the writers to drain the queue.
    ds = ds.map_batches(WriteStage, fn_constructor_args=(str(out.path), args.format), batch_size=None,
                        concurrency=concurrency, num_cpus=0, batch_format="numpy")
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc="generating", file=sys.stderr)
    count = 0
    for row in ds.iter_rows():
        out.append({"id": str(row["id"]), "prompt": str(row["prompt"]), "seed": int(row["seed"]), "size": str(row["size"]),
                    "steps": int(row["steps"]), "file": str(row["file"]), "bytes": int(row["bytes"]), "sha256": str(row["sha256"]),
                    "seconds": float(row["seconds"])})
        count += 1
        bar.update(1)
        bar.set_postfix(img_per_s=f"{count / (time.perf_counter() - t0):.2f}")
    bar.close()
    print(f"wrote {count} images to {out.path} ({count / (time.perf_counter() - t0):.2f} images/s); "
          f"manifest: {out.manifest}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(["batch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
