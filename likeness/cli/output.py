"""What every subcommand shares about output: ``--quiet`` and ``-v/--verbose``.

``--quiet`` silences every progress bar (likeness's own, training's, and the loading bars of
diffusers, transformers and huggingface_hub, in this process and in the child processes it
starts, through ``TQDM_DISABLE``) and keeps only errors in the log. ``-v`` shows likeness's INFO
messages, ``-vv`` DEBUG. Messages go through :mod:`logging` to stderr; results go to stdout.

Third-party warnings (transformers' "requires torchvision ... falling back", ``mean_resizing``, diffusers'
and huggingface_hub's notices, Python warnings raised outside likeness) are shown only with ``-v``: they
are about the libraries, not about the run, and a user cannot act on them. Errors always show.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# The libraries whose logs and warnings are shown only with -v, and their verbosity variables (children inherit them).
THIRD_PARTY = {"transformers": "TRANSFORMERS_VERBOSITY", "diffusers": "DIFFUSERS_VERBOSITY",
               "huggingface_hub": "HF_HUB_VERBOSITY", "accelerate": None, "peft": None}
_ENV_SET: set[str] = set()  # the verbosity variables set here (a user's own setting is left alone)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message (it may be replaced after set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def add_output_options(parser) -> None:
    """Add ``--quiet`` and ``-v/--verbose`` to a subcommand parser (unless it already has them)."""
    taken = parser._option_string_actions  # argparse's own table of option strings
    if "--quiet" not in taken:
        parser.add_argument("--quiet", action="store_true", help="no progress bars; only errors in the log")
    if "--verbose" not in taken:
        parser.add_argument("-v", "--verbose", action="count", default=0,
                            help="more log messages, and the libraries' own warnings (-vv: debug)")


def silence_progress_bars() -> None:
    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads TQDM_* defaults; children inherit it
    for module, function in (("diffusers.utils.logging", "disable_progress_bar"),
                             ("transformers.utils.logging", "disable_progress_bar"),
                             ("huggingface_hub.utils", "disable_progress_bars")):
        try:
            getattr(__import__(module, fromlist=[function]), function)()
        except (ImportError, AttributeError):
            pass


def third_party_output(verbose: int = 0) -> None:
    """Third-party logs at ERROR and their Python warnings hidden, unless ``verbose`` (then WARNING, -vv INFO)."""
    level = logging.INFO if verbose > 1 else logging.WARNING if verbose else logging.ERROR
    for library, variable in THIRD_PARTY.items():
        if variable and (variable not in os.environ or variable in _ENV_SET):
            os.environ[variable] = logging.getLevelName(level).lower()  # read when the library sets up its logger
            _ENV_SET.add(variable)
        logging.getLogger(library).setLevel(level)
        module = sys.modules.get(f"{library}.utils.logging")  # already set up: its own verbosity switch
        if module is not None and hasattr(module, "set_verbosity"):
            module.set_verbosity(level)
    warnings.filterwarnings("default" if verbose else "ignore")
    warnings.filterwarnings("default", module=r"likeness(\.|$)")  # likeness's own warnings always show


def configure_output(args) -> None:
    quiet, verbose = bool(getattr(args, "quiet", False)), int(getattr(args, "verbose", 0) or 0)
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    root = logging.getLogger("likeness")
    handler = next((h for h in root.handlers if getattr(h, "_likeness", False)), None)
    if handler is None:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._likeness = True
        root.addHandler(handler)
    handler.setLevel(level)  # the handler filters; the logger stays open to other handlers (e.g. pytest's)
    root.setLevel(level if verbose else logging.NOTSET)
    third_party_output(verbose)
    if quiet:
        silence_progress_bars()
