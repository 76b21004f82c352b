"""The ``zimage-serve`` command: generate, plan, make-tiny, make-lora, serve, batch.

Errors the user can fix print as one line on stderr and exit 2; nothing prints a traceback. Long work shows a line
per stage on stderr, and on a terminal progress bars too (progress.py); stdout holds the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

from .arguments import Parser, add_adapter_argument, add_model_arguments, integer, parse_adapters, run_command
from .batch.job import add_arguments as add_batch_arguments
from .core.bounds import (Bounds, check_prompt, check_seed, check_steps, check_strength, parse_bytes, parse_lora,
                          parse_size)
from .core.checkpoints import CONTROLNET_VERSIONS, DEFAULT_HUB_ID
from .core.errors import ZImageError
from .core.formats import format_of_path
from .core.control import CANNY_HIGH, CANNY_LOW, INPAINT_NEEDS_2X, with_control_image
from .core.images import read_file, with_edit_inputs
from .core.request import DEFAULT_CONTROL_SCALE, MAX_CONTROL_SCALE, GenerationRequest
from .model.planner import (ENCODE_CHOICES, EXPANDABLE_SEGMENTS, ControlNetSizes, Workload, fixed_segments_extra_bytes,
                            make_plan)
from .model.sizes import sizes_of
from .model.sources import cached_hub, resolve
from .progress import interactive, quiet_library_bars, stage
from .settings import environment

log = logging.getLogger("zimage_serve")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="zimage-serve", description="Serve and run Z-Image-Turbo.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    g = sub.add_parser("generate", help="generate one image")
    g.add_argument("--prompt", required=True)
    add_model_arguments(g)
    g.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 16 (default: 1024x1024; an edit: its "
                                                "input's size, rounded down to multiples of 16)")
    g.add_argument("--steps", type=integer, default=8)
    g.add_argument("--seed", type=integer, default=None, help="default: random (printed)")
    g.add_argument("--guidance-scale", type=float, default=0.0)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--out", default="zimage.png", help="output file (.png, .jpg, .webp)")
    g.add_argument("--image", default=None, help="edit this image (image to image; inpainting with --mask)")
    g.add_argument("--mask", default=None, help="inpainting: what to repaint (white pixels, or transparent ones "
                                                "of a mask with alpha); the image's size")
    g.add_argument("--strength", type=float, default=None,
                   help="an edit's strength in (0, 1]: how far from the image (default 0.6; 1.0 with --mask)")
    g.add_argument("--lora", default=None, metavar="SOURCE[:SCALE]",
                   help="a LoRA adapter: a .safetensors file in diffusers' (or kohya/ComfyUI) format, or a directory "
                        "holding one; SCALE from 0 to 2 (default 1)")
    add_controlnet_argument(g)
    g.add_argument("--control-image", default=None, help="the control map the ControlNet follows (edges, depth, pose, "
                                                         "...); with --image and --mask: ControlNet inpainting")
    g.add_argument("--control-scale", type=float, default=None,
                   help=f"how strongly the control applies, 0 to {MAX_CONTROL_SCALE:g} (default {DEFAULT_CONTROL_SCALE})")
    g.add_argument("--canny", action="store_true", help="use the edges of --control-image (OpenCV Canny, thresholds "
                                                        f"{CANNY_LOW} and {CANNY_HIGH}) as the control map")

    p = sub.add_parser("plan", help="show the staging plan for a GPU")
    add_model_arguments(p, default="Tongyi-MAI/Z-Image-Turbo")
    p.add_argument("--vram", default=None, help="free GPU memory to plan for, e.g. 24GiB (default: this GPU's)")
    p.add_argument("--size", default="1024x1024")
    p.add_argument("--batch", type=integer, default=1)
    p.add_argument("--encode-on", choices=ENCODE_CHOICES, default="auto")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--fp8", choices=["off", "on", "auto"], default="off",
                   help="FP8 weights: auto where bf16 doesn't fit resident, on always (as generator.fp8; for --vram "
                        "a card with FP8 matmuls is assumed)")
    add_controlnet_argument(p)

    t = sub.add_parser("make-tiny", help="write a random-weight checkpoint (tiny, or full-size for benchmarks)")
    t.add_argument("dir")
    t.add_argument("--shape", choices=["tiny", "full"], default="tiny")
    t.add_argument("--device", default="cpu", help="where to build the weights (cuda is faster for full)")
    t.add_argument("--controlnet", default=None, metavar="PATH",
                   help="also write a random Union ControlNet for the checkpoint: PATH.safetensors as the single "
                        "published file, else a diffusers directory")
    t.add_argument("--controlnet-version", choices=CONTROLNET_VERSIONS, default="2.1",
                   help="1.0: 16 control channels; 2.0 and 2.1: 33, with the inpaint mode (default 2.1)")

    lo = sub.add_parser("make-lora", help="write a LoRA adapter with random weights (for tests and benchmarks)")
    lo.add_argument("dir", help="output directory (gets pytorch_lora_weights.safetensors)")
    lo.add_argument("--model", default="tiny", help="'tiny' or a checkpoint directory: the transformer it adapts")
    lo.add_argument("--rank", type=integer, default=4)
    lo.add_argument("--seed", type=integer, default=0, help="the same seed writes the same file")

    s = sub.add_parser("serve", help="start the Ray Serve application (HTTP API)")
    s.add_argument("--config", default=None, help="a serve config YAML (default: built-in, for this machine)")
    s.add_argument("--model", default=None, help="overrides the config's model")
    s.add_argument("--host", default=None, help="default: the config's http_options.host, else 127.0.0.1")
    s.add_argument("--port", type=integer, default=None, help="default: the config's http_options.port, else 8000")
    add_adapter_argument(s, "serve a LoRA adapter as model NAME (repeatable; added to the config's adapters)")
    add_controlnet_argument(s, "serve this ControlNet (overrides the config's controlnet)")
    s.add_argument("--jobs-dir", default=None, metavar="DIR",
                   help="where async jobs are kept: a directory, or s3:// / gs:// (overrides the config's jobs.dir)")
    s.add_argument("--webhook-allow", action="append", default=None, metavar="CIDR",
                   help="a network jobs' webhooks may reach although private or loopback (repeatable; added to the "
                        "config's jobs.webhook_allow)")

    add_batch_arguments(sub.add_parser("batch", help="generate images for a prompts file with Ray Data"))
    return parser


def add_controlnet_argument(p: argparse.ArgumentParser, what: str = "a Z-Image Union ControlNet") -> None:
    p.add_argument("--controlnet", default=None, metavar="SOURCE",
                   help=f"{what}: a ZImageControlNetModel directory, the single .safetensors file as published, or a "
                        "ModelScope id")


def _controlnet(args):
    """--controlnet, checked from its headers (no torch), or None."""
    if not args.controlnet:
        return None
    from .model.controlnet import find_controlnet  # safetensors headers only

    return find_controlnet(args.controlnet)


def _request(args) -> GenerationRequest:
    """The command line as the typed request, every bound checked before a model is loaded."""
    if args.image is None and (args.mask is not None or args.strength is not None):
        raise ZImageError("--mask and --strength edit an image: give it with --image")
    if args.control_image is None and (args.control_scale is not None or args.canny):
        raise ZImageError("--control-scale and --canny apply to a control image: give it with --control-image")
    if args.control_image is not None and not args.controlnet:
        raise ZImageError("--control-image needs a ControlNet: give it with --controlnet SOURCE")
    if args.control_scale is not None and not 0 <= args.control_scale <= MAX_CONTROL_SCALE:
        raise ZImageError(f"--control-scale must be between 0 and {MAX_CONTROL_SCALE:g}, got {args.control_scale:g}")
    size = parse_size(args.size) if args.size else None
    width, height = size or parse_size("1024x1024")
    fmt = format_of_path(args.out)
    out_dir = Path(args.out).parent
    if not out_dir.is_dir():
        raise ZImageError(f"--out directory {str(out_dir)!r} does not exist")
    if args.negative_prompt:
        check_prompt(args.negative_prompt, param="negative_prompt")
    request = GenerationRequest(prompt=check_prompt(args.prompt), negative_prompt=args.negative_prompt,
                                seed=check_seed(args.seed) if args.seed is not None else random.randrange(2**31),
                                width=width, height=height, steps=check_steps(args.steps),
                                guidance_scale=args.guidance_scale, output_format=fmt.name)
    if args.lora:
        source, scale = parse_lora(args.lora)
        from .model.adapters import adapter_file  # no torch: checked before a model loads

        adapter_file(source, "--lora", param="lora")
        request = request.replace(adapter="lora", adapter_scale=scale)
    if args.control_image is not None:
        request = with_control_image(request, read_file(args.control_image, "--control-image"),
                                     "canny" if args.canny else "none", scale=args.control_scale)
    if args.image is None:
        return request
    strength = check_strength(args.strength) if args.strength is not None else None
    mask = read_file(args.mask, "--mask") if args.mask else None
    return with_edit_inputs(request.replace(strength=strength), read_file(args.image, "--image"), mask, size)


def _generate(args) -> int:
    from .model.startup import remember_installed_packages  # (no torch: see below)

    remember_installed_packages()  # before diffusers and transformers are imported (the tiny model's writing too)
    request = _request(args)
    # any model but `auto` is checked before torch is imported: a bad --model is one line in a second, not six
    source = resolve(args.model) if args.model != "auto" else None
    from .model.engine import Engine, Job, gpu_free_bytes, plan_for_this_machine  # torch: only when generating
    from .model.machine import prepare_allocator  # (with torch)

    prepare_allocator()  # before the first CUDA allocation
    bars = interactive()
    if not bars:
        quiet_library_bars()  # again, now that diffusers and transformers are imported: their own switches

    source = source or resolve(args.model, gpu=gpu_free_bytes() is not None)
    controlnet = _controlnet(args)
    if request.mode == "controlnet-inpaint" and not controlnet.inpaint:
        raise ZImageError(f"{INPAINT_NEEDS_2X}; {args.controlnet} is 1.0")
    plan = plan_for_this_machine(source, Workload(request.width, request.height, 1), args.policy, controlnet=controlnet,
                                 compiled=False)  # (one image: eager)
    with stage(f"loading {source.label}"):
        engine = Engine.load(source, plan, controlnet=controlnet)  # logs the plan, once
        if request.adapter:
            engine.load_adapter(request.adapter, parse_lora(args.lora)[0])
    engine.set_progress(bars)  # diffusers' bar of the steps: on a terminal only
    t0 = time.perf_counter()
    texts = list(request.texts)
    with stage("encoding the prompt" if len(texts) == 1 else f"encoding {len(texts)} prompts"):
        embeds = engine.encode(texts)
    with stage(f"generating 1 image ({request.size}, {request.steps} steps)"):
        result = engine.generate([Job.of(request, embeds)])
    with stage(f"writing {args.out}"):
        result.images[0].save(args.out, format=format_of_path(args.out).pil_name)
    note = " (random test weights: the image is noise)" if source.random_weights else ""
    edit = f", {request.mode} of {args.image}" + (f" at strength {request.strength:g}" if request.strength else "") \
        if args.image else ""
    if request.control_image is not None:
        edit += f", {'canny edges of ' if args.canny else ''}{args.control_image} at control scale {request.control_scale:g}"
    if request.adapter:
        scale = request.adapter_scale if request.adapter_scale is not None else 1.0
        edit += f", LoRA {parse_lora(args.lora)[0]} at scale {scale:g}"
    print(f"wrote {args.out} ({request.size}, seed {request.seed}, {request.steps} steps{edit}, "
          f"{time.perf_counter() - t0:.2f}s){note}")
    return 0


def _plan(args) -> int:
    width, height = parse_size(args.size, Bounds(max_side=8192))
    if args.batch < 1:
        raise ZImageError(f"--batch must be at least 1, got {args.batch}")
    if args.model == DEFAULT_HUB_ID:
        cached = cached_hub(DEFAULT_HUB_ID)
        sizes = sizes_of(resolve(DEFAULT_HUB_ID) if cached else None)
    else:
        sizes = sizes_of(resolve(args.model))
    if args.vram is not None:
        free = parse_bytes(args.vram)
    else:
        from .model.engine import gpu_free_bytes  # torch: only when no --vram is given

        free = gpu_free_bytes()
    cn = _controlnet(args)
    fp8 = {"off": False, "on": True}.get(args.fp8, args.fp8)
    if args.vram is None and free is not None:
        from .model.machine import fp8_plans  # torch: this GPU's compute capability

        fp8 = fp8_plans(fp8, True)
    conf = environment().cuda_alloc_conf
    extra = fixed_segments_extra_bytes(conf or EXPANDABLE_SEGMENTS)  # the allocator a GPU process of ours would use
    if free is not None:
        free = max(0, free - extra)
    plan = make_plan(sizes, free, Workload(width, height, args.batch), args.policy, args.encode_on,
                     ControlNetSizes.of(cn.shapes) if cn else None, fp8)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.describe())
    if extra and free is not None and not args.json:
        print(f"  allocator     PYTORCH_CUDA_ALLOC_CONF={conf} has no expandable segments: {extra / 2**30:.2f} GiB "
              "more kept free (the budget above is after it)")
    return 0


def _make_tiny(args) -> int:
    from .testing.checkpoint import write_checkpoint  # its torch and diffusers: only for this command

    path = write_checkpoint(args.dir, args.shape, device=args.device)
    print(f"wrote a {args.shape} Z-Image checkpoint with random test weights to {path}")
    if args.controlnet:
        from .testing.controlnet import write_controlnet  # (see above)

        single = args.controlnet.endswith(".safetensors")
        out = write_controlnet(args.controlnet, path, args.controlnet_version, "single-file" if single else "diffusers",
                               dtype="float32" if args.shape == "tiny" else "bfloat16", device=args.device)
        print(f"wrote a {args.controlnet_version} Union ControlNet with random test weights to {out}")
    return 0


def _make_lora(args) -> int:
    from .testing.lora import write_lora  # its torch and diffusers: only for this command

    if args.rank < 1:
        raise ZImageError(f"--rank must be at least 1, got {args.rank}")
    path = write_lora(args.dir, resolve(args.model).path, args.rank, args.seed)
    print(f"wrote a rank-{args.rank} LoRA adapter with random test weights to {path}")
    return 0


def _serve(args) -> int:
    from .serving.local import serve_main  # Ray: only for this command

    args.adapters = parse_adapters(args.adapter)
    if args.controlnet:  # checked here, in one line, before Ray starts; a local one as an absolute path
        found = _controlnet(args)
        args.controlnet = str(found.path.resolve()) if Path(args.controlnet).expanduser().exists() else args.controlnet
    return serve_main(args)


def _batch(args) -> int:
    from .batch.job import run  # Ray: only for this command

    return run(args)


COMMANDS = {"generate": _generate, "plan": _plan, "make-tiny": _make_tiny, "make-lora": _make_lora, "serve": _serve,
            "batch": _batch}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
