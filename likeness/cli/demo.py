"""``likeness demo``: serve the interactive demo page on this machine."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from likeness.cli.runtime import add_runtime_options, plan_from_args, runtime_argv

DESCRIPTION = """\
A local web page: upload a photo of a person, pick methods and prompts, run them side by side on
the same photo, prompt and seed, and see every image with its identity scores and their protocol.

Each visitor gets a work folder of their own under --root (deleted when they leave, unless they tick
"keep my files"); each method runs as a `likeness bench` child process writing a normal run folder
(<root>/<visitor>/runs/<method>), so `likeness report` and `likeness bench --resume` work on it.

Methods: every registered method whose weights are found, in the --weights folders (searched by the published
file names, any layout; InsightFace-style ArcFace packs found there serve the methods that need one) and in the
local Hugging Face cache (offline: what a download left there). The page lists the methods found and, for the
others, the file each is missing. Each method runs on a base model of a family it supports: --base FAMILY=MODEL
per family; the defaults are the built-in tiny bases (likeness/tiny-sd, -sdxl, -flux, ...: random weights, noise
not pictures, offline). Tuning-free methods show the time to encode the photo, trained ones their training time,
side by side on the same photo, prompts and seeds.
Served on 127.0.0.1 only unless --host says otherwise; needs `pip install likeness[app]` (gradio).
"""


def _base(text: str) -> tuple[str, str]:
    from likeness.models.families import FAMILY_NAMES

    family, sep, model = (part.strip() for part in text.partition("="))
    if not sep or family not in FAMILY_NAMES or not model:
        raise argparse.ArgumentTypeError(f"expected FAMILY=MODEL with FAMILY one of {', '.join(FAMILY_NAMES)}, got {text!r}")
    return family, model


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="interactive web demo: your photo, several methods, their scores",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--root", help="where visitors' work folders go (default: a new temporary folder)")
    parser.add_argument("--max-concurrent", type=int, default=1,
                        help="methods running at once across all visitors (default: %(default)s)")
    parser.add_argument("--queue-size", type=int, default=16, help="runs waiting at most (default: %(default)s)")
    parser.add_argument("--weights", action="append", default=[], metavar="DIR",
                        help="folder of published method weights (repeatable; searched by file name, any layout), e.g. "
                             "a download of h94/IP-Adapter, InstantX/InstantID, guozinan/PuLID, ByteDance/InfiniteYou, "
                             "an antelopev2 pack")
    parser.add_argument("--base", action="append", default=[], metavar="FAMILY=MODEL", type=_base,
                        help="base model of a family (repeatable; hub id or local folder), e.g. "
                             "sdxl=stabilityai/stable-diffusion-xl-base-1.0 (default: the tiny base of each family)")
    parser.add_argument("--no-hub-cache", action="store_true",
                        help="find method weights in the --weights folders only, not in the local Hugging Face cache")
    add_runtime_options(parser, training=True, generation=True)
    parser.set_defaults(run=run)


def run(args) -> int:
    try:
        from likeness.app.ui import launch
    except ImportError as exc:
        print(f"likeness demo: needs gradio ({exc}); install it with `pip install 'likeness[app]'`", file=sys.stderr)
        return 2
    root = args.root or tempfile.mkdtemp(prefix="likeness-demo-")
    print(f"likeness demo: visitors' folders in {root}")
    plan_from_args(args)  # a device / precision this machine lacks: refused before serving anyone
    missing = [w for w in args.weights if not Path(w).expanduser().is_dir()]
    if missing:
        print(f"likeness demo: --weights {missing[0]}: no such folder", file=sys.stderr)
        return 2
    launch(root, host=args.host, port=args.port, max_concurrent=args.max_concurrent, queue_size=args.queue_size,
           runtime=runtime_argv(args), weights=args.weights, bases=dict(args.base), hub_cache=not args.no_hub_cache)
    return 0
