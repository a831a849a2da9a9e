"""``likeness demo``: serve the interactive demo page on this machine."""

from __future__ import annotations

import argparse
import sys
import tempfile

from likeness.cli.runtime import add_runtime_options, plan_from_args, runtime_argv

DESCRIPTION = """\
A local web page: upload a photo of a person, pick methods and prompts, run them side by side on
the same photo, prompt and seed, and see every image with its identity scores and their protocol.

Each visitor gets a work folder of their own under --root (deleted when they leave, unless they tick
"keep my files"); each method runs as a `likeness bench` child process writing a normal run folder
(<root>/<visitor>/runs/<method>), so `likeness report` and `likeness bench --resume` work on it.
The default base model is the built-in tiny one (random weights: noise, not pictures).
Served on 127.0.0.1 only unless --host says otherwise; needs `pip install likeness[app]` (gradio).
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="interactive web demo: your photo, several methods, their scores",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--root", help="where visitors' work folders go (default: a new temporary folder)")
    parser.add_argument("--max-concurrent", type=int, default=1,
                        help="methods running at once across all visitors (default: %(default)s)")
    parser.add_argument("--queue-size", type=int, default=16, help="runs waiting at most (default: %(default)s)")
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
    launch(root, host=args.host, port=args.port, max_concurrent=args.max_concurrent, queue_size=args.queue_size,
           runtime=runtime_argv(args))
    return 0
