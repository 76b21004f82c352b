"""Command-line pieces shared by ``zimage-serve`` (cli.py) and ``python -m zimage_serve.batch``: a parser whose
errors are one line, integer arguments, the model, policy and LoRA adapter options, and running a command so that a
domain error prints as one line and exits 2, and no library's progress bar where stderr is no terminal. No torch."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from .core.bounds import parse_lora
from .core.errors import InvalidInput, ZImageError
from .model.adapters import adapter_file
from .model.planner import POLICIES
from .model.sources import HUB_ID
from .progress import QUIET_ENV, interactive, quiet_library_bars
from .settings import environment


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def add_model_arguments(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--model", default=environment().model or default,
                   help="'tiny', a local diffusers directory, or a hub id such as Tongyi-MAI/Z-Image-Turbo "
                        "('auto': the hub model on a GPU when cached, else tiny)")
    p.add_argument("--policy", choices=POLICIES, default="auto", help="staging policy (default: fastest that fits)")


def add_adapter_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=SOURCE[:SCALE]",
                   help=f"{what}: a .safetensors file, a directory with one, or a ModelScope id")


def parse_adapters(specs: list[str], param: str = "--adapter") -> dict:
    """``NAME=SOURCE[:SCALE]`` arguments as the config's ``adapters``; a local SOURCE is checked here (it exists and
    holds LoRA weights: a safetensors header is read, no torch), before anything starts."""
    adapters = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise InvalidInput(f"{param} {spec!r}: expected NAME=SOURCE or NAME=SOURCE:SCALE", param=param)
        if name in adapters:
            raise InvalidInput(f"{param} {name!r} is given twice", param=param)
        source, scale = parse_lora(rest, param)
        if not HUB_ID.match(source) or source.startswith((".", "/", "~")) or Path(source).expanduser().exists():
            adapter_file(source, f"{param} {name}", param=param)
            source = str(Path(source).expanduser().resolve())  # the replicas and actors may run in another directory
        adapters[name] = {"source": source, **({"scale": scale} if scale is not None else {})}
    return adapters


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Well-understood noise of the libraries, dropped in every process of ours (the command's and, through
# setup_worker_logging, each Ray worker it starts): (logger, a fragment of the message). Warnings and below only:
# an error always shows.
QUIET = (
    # diffusers warns on every ModelMixin.to(dtype), also when no module must stay in float32 (an empty
    # list): testing/checkpoint.py casts the tiny VAE so when it writes the embedded checkpoint
    ("diffusers.models.modeling_utils", "that should be kept in float32: []"),
    # Serve's controller warns, at each deploy and each shutdown, for every deployment with a fixed number of
    # replicas (our Ingress): it deregisters autoscaling state that it never registered (autoscaling_state.py)
    ("ray.serve", "Cannot deregister autoscaling state for deployment"),
    # a stopping replica with requests still in flight says so at every check, every DRAIN_POLL_S (settings.py)
    ("ray.serve", "Waiting for an additional"),
    # the batch job turns Ray Data's progress bars off on purpose (its own bar counts images); Ray Data says so
    ("ray.data._internal.progress", "Progress bars disabled."),
)
# Ray workers of the jobs our commands start (``zimage-serve serve``, the batch job) run setup_worker_logging first,
# and start with no library progress bars: a worker's stderr is a log, where a bar is a line of carriage returns
# (progress.py; the variables are set before the worker imports anything, tqdm included). Our commands pass it to
# ray.init for a cluster they join, or name the hook to a Ray they start through the environment (ray_init_options)
RAY_RUNTIME_ENV = {"worker_process_setup_hook": "zimage_serve.arguments.setup_worker_logging",
                   "env_vars": dict(QUIET_ENV)}
# the variable through which Ray hands a worker its setup hook (ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR, which
# Ray's worker reads as it starts, before it runs anything: ray/_private/workers/default_worker.py)
_SETUP_HOOK_VARIABLE = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"


def ray_init_options() -> dict:
    """``ray.init``'s options for our commands (``zimage-serve serve``, the batch job): every Ray worker runs
    setup_worker_logging first, which also turns the library progress bars off (RAY_RUNTIME_ENV). Where ray.init
    will start a Ray here (no RAY_ADDRESS, no ``ray start`` cluster on this machine: Ray's own lookup), its workers
    inherit this process's environment: the hook is named in it, as Ray hands a hook to a worker (the command
    itself keeps its bars), and no runtime_env is given; one makes every worker's start (Serve's controller and
    proxy, the app's build, each replica; the batch job's actors) wait on Ray's runtime-env agent: 1.2-2.0 s of
    the app's start on 2 cores (medians of two runs of bench/app_start_cpu.py). Ray's spilling workers run the hook too. A cluster joined gets
    RAY_RUNTIME_ENV. tests/serving/test_serve_cli.py pins that the workers run the hook."""
    try:
        # how ray.init finds a cluster to join (Ray: imported by the commands that start it, only)
        from ray._private.services import canonicalize_bootstrap_address

        joins = canonicalize_bootstrap_address(None) is not None
    except Exception:  # (a Ray without it, an address it can't parse) the way that works anywhere
        joins = True
    if joins:
        return {"runtime_env": RAY_RUNTIME_ENV}
    os.environ[_SETUP_HOOK_VARIABLE] = RAY_RUNTIME_ENV["worker_process_setup_hook"]
    return {}


class _Quiet(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or self.fragment not in record.getMessage()


def quiet_noise() -> None:
    """Drop the messages in QUIET (idempotent). A filter on the logger itself, so it outlives the handlers that
    Ray Serve replaces when it configures its components' logging."""
    for name, fragment in QUIET:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Quiet) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_Quiet(fragment))


def setup_logging() -> None:
    """The command's logging: INFO and up on stderr, the noise in QUIET dropped."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    quiet_noise()


def setup_worker_logging() -> None:
    """Each Ray worker of our jobs (RAY_RUNTIME_ENV's hook): our own ``zimage_serve`` log at INFO on stderr (Ray shows
    it prefixed by the worker, as it shows Serve's own log; without a handler only warnings would show, bare),
    the noise in QUIET dropped, and no library progress bars (a worker's stderr is a log, where a bar is a line
    of carriage returns; RAY_RUNTIME_ENV's variables already say so, unless a job's own runtime_env overrides
    them; it sets them here too, for a worker that inherited the hook alone). On a GPU node the worker then imports
    the model layer in a thread, for a replica it may serve later (model/preload.py)."""
    quiet_library_bars()
    log = logging.getLogger("zimage_serve")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # a root handler that Ray or a library adds would print each line twice
    quiet_noise()
    from .model.preload import start  # (no torch here: its thread imports it)

    start()


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str = "zimage-serve") -> int:
    """Run a command: its domain errors print as one line on stderr (exit 2), Ctrl-C exits 130, no traceback.
    Where stderr is no terminal, no library's progress bar from the start (progress.quiet_library_bars)."""
    if not interactive():
        quiet_library_bars()
    setup_logging()
    try:
        return run(args)
    except ZImageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
