"""``python -m zimage_serve.batch``: the batch job as a Ray job entrypoint (``zimage-serve batch`` runs the same)."""

import sys

from ..arguments import Parser, run_command
from .job import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m zimage_serve.batch", description="Generate images for a prompts file with Ray Data.")
    add_arguments(parser)
    return run_command(run, parser.parse_args(argv), prog="zimage-serve batch")


if __name__ == "__main__":
    sys.exit(main())
