"""The ``zimage-serve`` command: generate, plan, make-tiny, serve, batch.

Errors the user can fix print as one line on stderr and exit 2; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time

from .errors import ZImageError
from .limits import Bounds, check_prompt, check_seed, check_steps, parse_bytes, parse_size
from .planner import ENCODE_CHOICES, POLICIES, Workload

log = logging.getLogger("zimage_serve")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _model_args(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--model", default=os.environ.get("ZIMAGE_MODEL", default),
                   help="'tiny', a local diffusers directory, or a hub id such as Tongyi-MAI/Z-Image-Turbo "
                        "('auto': the hub model on a GPU when cached, else tiny)")
    p.add_argument("--policy", choices=POLICIES, default="auto", help="staging policy (default: fastest that fits)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zimage-serve", description="Serve and run Z-Image-Turbo.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate one image")
    g.add_argument("--prompt", required=True)
    _model_args(g)
    g.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT, multiples of 16")
    g.add_argument("--steps", type=_int, default=8)
    g.add_argument("--seed", type=_int, default=None, help="default: random (printed)")
    g.add_argument("--guidance-scale", type=float, default=0.0)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--out", default="zimage.png", help="output file (.png, .jpg, .webp)")

    p = sub.add_parser("plan", help="show the staging plan for a GPU")
    _model_args(p, default="Tongyi-MAI/Z-Image-Turbo")
    p.add_argument("--vram", default=None, help="free GPU memory to plan for, e.g. 24GiB (default: this GPU's)")
    p.add_argument("--size", default="1024x1024")
    p.add_argument("--batch", type=_int, default=1)
    p.add_argument("--encode-on", choices=ENCODE_CHOICES, default="auto")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    t = sub.add_parser("make-tiny", help="write a random-weight checkpoint (tiny, or full-size for benchmarks)")
    t.add_argument("dir")
    t.add_argument("--shape", choices=["tiny", "full"], default="tiny")
    t.add_argument("--device", default="cpu", help="where to build the weights (cuda is faster for full)")

    s = sub.add_parser("serve", help="start the Ray Serve application (HTTP API)")
    s.add_argument("--config", default=None, help="a serve config YAML (default: built-in, for this machine)")
    s.add_argument("--model", default=None, help="overrides the config's model")
    s.add_argument("--host", default=None, help="default: the config's http_options.host, else 127.0.0.1")
    s.add_argument("--port", type=_int, default=None, help="default: the config's http_options.port, else 8000")

    b = sub.add_parser("batch", help="generate images for a prompts file with Ray Data")
    b.add_argument("--prompts", required=True, help="JSONL (id, prompt, seed, size, steps, negative_prompt) or text")
    b.add_argument("--out", required=True, help="output directory (resumable)")
    _model_args(b)
    b.add_argument("--size", default="1024x1024")
    b.add_argument("--steps", type=_int, default=8)
    b.add_argument("--seed", type=_int, default=0, help="base seed: a line without one gets seed + line number")
    b.add_argument("--batch-size", type=_int, default=4, help="images per transformer batch")
    b.add_argument("--gpus", default=None, help="generator actors: N, or MIN-MAX on an autoscaling cluster")
    b.add_argument("--format", choices=["png", "jpeg", "webp"], default="png")
    b.add_argument("--verify", action="store_true",
                   help="on a rerun, read every finished image back and compare its SHA-256 with the manifest "
                        "(default: its size; the writes are atomic, so only a change made outside the job differs)")
    b.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="on GPU: fused projections, regional torch.compile and the VAE decoder's norms compiled "
                        "(tens of seconds per actor on a cold compile cache; the cache is kept)")
    b.add_argument("--fp8", action="store_true", help="on Hopper/Ada GPUs: FP8 matmuls (faster, slightly different images)")
    b.add_argument("--encoder-cpus", type=_int, default=None,
                   help="CPUs (and threads) of the prompt encoder (default: half of those the GPU actors leave, 1 to 16)")
    b.add_argument("--encoder-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="the prompt encoder's dtype; auto: bfloat16 on CPUs with AMX, else float32 (as serving's encoder)")
    return parser


def _generate(args) -> int:
    from .engine import Engine, Job, gpu_free_bytes, plan_for_this_machine
    from .sources import resolve

    check_prompt(args.prompt)
    width, height = parse_size(args.size)
    check_steps(args.steps)
    seed = check_seed(args.seed) if args.seed is not None else random.randrange(2**31)
    fmt = _image_format(args.out)
    source = resolve(args.model, gpu=gpu_free_bytes() is not None)
    plan = plan_for_this_machine(source, Workload(width, height, 1), args.policy)
    print(plan.describe(), file=sys.stderr)
    t0 = time.perf_counter()
    engine = Engine.load(source, plan)
    engine.set_progress(True)
    print(f"loaded {source.label} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    prompts = [args.prompt] + ([args.negative_prompt] if args.guidance_scale > 0 else [])
    embeds = engine.encode(prompts)
    job = Job(embeds[0], seed, width, height, args.steps, args.guidance_scale,
              embeds[1] if args.guidance_scale > 0 else None)
    t0 = time.perf_counter()
    result = engine.generate([job])
    result.images[0].save(args.out, format=fmt)
    note = " (random test weights: the image is noise)" if source.random_weights else ""
    print(f"wrote {args.out} ({width}x{height}, seed {seed}, {args.steps} steps, "
          f"{time.perf_counter() - t0:.2f}s){note}")
    return 0


def _image_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
    if ext not in formats:
        raise ZImageError(f"--out must end in .png, .jpg or .webp, got {path!r}")
    if os.path.dirname(path) and not os.path.isdir(os.path.dirname(path)):
        raise ZImageError(f"--out directory {os.path.dirname(path)!r} does not exist")
    return formats[ext]


def _plan(args) -> int:
    from .planner import make_plan
    from .sources import DEFAULT_HUB_ID, resolve
    from .sizes import sizes_of

    width, height = parse_size(args.size, Bounds(max_side=8192))
    if args.batch < 1:
        raise ZImageError(f"--batch must be at least 1, got {args.batch}")
    if args.model == DEFAULT_HUB_ID:
        from .sources import cached_hub

        cached = cached_hub(DEFAULT_HUB_ID)
        sizes = sizes_of(resolve(DEFAULT_HUB_ID) if cached else None)
    else:
        sizes = sizes_of(resolve(args.model))
    if args.vram is not None:
        free = parse_bytes(args.vram)
    else:
        from .engine import gpu_free_bytes

        free = gpu_free_bytes()
    plan = make_plan(sizes, free, Workload(width, height, args.batch), args.policy, args.encode_on)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.describe())
    return 0


def _make_tiny(args) -> int:
    from .checkpoint import write_checkpoint

    path = write_checkpoint(args.dir, args.shape, device=args.device)
    print(f"wrote a {args.shape} Z-Image checkpoint with random test weights to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"generate": _generate, "plan": _plan, "make-tiny": _make_tiny}
    if args.command == "serve":
        from .serve_main import serve_main as run
    elif args.command == "batch":
        from .batch import run
    else:
        run = commands[args.command]
    try:
        return run(args)
    except ZImageError as e:
        print(f"zimage-serve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zimage-serve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
