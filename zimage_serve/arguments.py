"""Command-line pieces shared by ``zimage-serve`` (cli.py) and ``python -m zimage_serve.batch``: a parser whose
errors are one line, integer arguments, the model and policy options, and running a command so that a
domain error prints as one line and exits 2. No torch."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .core.errors import ZImageError
from .model.planner import POLICIES
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


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str = "zimage-serve") -> int:
    """Run a command: its domain errors print as one line on stderr (exit 2), Ctrl-C exits 130, no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ZImageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
