"""The ``likeness`` command. It only parses arguments and calls library code.

Each subcommand lives in its own module here with two functions: ``add_parser(subparsers)`` and
``run(args) -> int``. Add a module to ``SUBCOMMANDS`` to expose it.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys

from likeness import __version__
from likeness.cli.output import add_output_options, configure_output, third_party_output

# Module names under likeness.cli, in the order shown by --help.
SUBCOMMANDS: list[str] = ["personalize", "train_encoder", "generate", "evaluate", "bench", "report", "agreement", "compare", "compose", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="likeness",
        description="Personalized text-to-image generation of people, and its evaluation "
        "(Stellar protocol). Run `likeness <command> --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"likeness {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"likeness.cli.{name}")
        module.add_parser(subparsers)
    for sub in subparsers.choices.values():  # every command: --quiet and -v/--verbose
        add_output_options(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    third_party_output(0)  # before the subcommands import anything; configure_output applies -v
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    configure_output(args)
    from likeness.models.runtime import PlanError

    try:
        code = int(args.run(args) or 0)
    except PlanError as exc:  # a device / precision this machine cannot honour, found outside a command's own checks
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if argv is None:
        # The process ends next: without this, the collector's final pass over every object of torch,
        # diffusers and transformers took ~7 s of a smoke run's exit (2 loaded cores), in every rank.
        gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(main())
