"""``likeness train-encoder``: train a tuning-free method's encoder once, on a folder of portraits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Train the encoder of a tuning-free method (photoverse) once, on many portraits; afterwards
`likeness personalize --method photoverse --weights OUT` only encodes a photo.

--data: any folder of portraits, searched recursively. People come from a CelebA-style
identity*.txt (<file> <person> per line) when present, else from the first sub-folder
(<data>/<person>/*.jpg); --exclude drops people (a name, or a file with one name per line).
Unreadable and faceless images are skipped with their reason and counted (OUT/prepared/index.jsonl,
OUT/photoverse.json). Rerunning the same command into the same --out resumes an interrupted run
exactly from its last checkpoint (--checkpoint-every). Multi-GPU: run it under `accelerate launch`.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train-encoder", help="train a tuning-free method's encoder on a folder of portraits",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="photoverse", help="method with an encoder (default: %(default)s)")
    p.add_argument("--data", required=True, type=Path, help="folder of portraits (CelebA-HQ / FFHQ-style or <person>/*.jpg)")
    p.add_argument("--out", required=True, type=Path, help="encoder folder to write")
    p.add_argument("--base-model", default="likeness/tiny-sd", help="hub id, local diffusers folder or likeness/tiny-sd")
    p.add_argument("--image-encoder", help="CLIP vision model, hub id or folder (default: the one matching the base model)")
    p.add_argument("--identity-loss", default="dlib",
                   help="face network of the identity loss (likeness.faces.identity_loss), or none (default: %(default)s)")
    p.add_argument("--exclude", action="append", default=[], metavar="NAME_OR_FILE", help="people to leave out (repeatable)")
    p.add_argument("--steps", type=int, dest="max_steps")
    p.add_argument("--lr", type=float, dest="learning_rate")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--grad-accum", type=int, dest="gradient_accumulation_steps")
    p.add_argument("--resolution", type=int, help="training size (default: the base model's native size)")
    p.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    p.add_argument("--seed", type=int)
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], dest="mixed_precision")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None, dest="gradient_checkpointing")
    p.add_argument("--device")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="other encoder options, JSON values (e.g. num_words=5, adapter_hidden=1024, lora_rank=4)")
    p.add_argument("--overwrite", action="store_true", default=None)
    p.set_defaults(run=run)


def run(args) -> int:
    from likeness.cli.personalize import _value
    from likeness.data.images import ImageError
    from likeness.methods.base import UnknownMethodError, get_method
    from likeness.methods.training import ResumeMismatchError
    from likeness.models.loading import ModelNotFoundError

    config = {k: getattr(args, k) for k in ("max_steps", "learning_rate", "batch_size", "gradient_accumulation_steps",
                                            "resolution", "checkpoint_every", "seed", "mixed_precision",
                                            "gradient_checkpointing", "device", "overwrite")}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --option {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        config[key.strip()] = _value(value)
    try:
        method = get_method(args.method)
        if not hasattr(method, "train_encoder"):
            print(f"error: method {args.method!r} has no encoder to train (it is tuned per person)", file=sys.stderr)
            return 2
        loss = None if args.identity_loss in ("none", "") else args.identity_loss
        out = method.train_encoder(args.data, args.out, args.base_model, image_encoder=args.image_encoder,
                                   identity_loss=loss, exclude=args.exclude, **config)
    except (ImageError, ModelNotFoundError, UnknownMethodError, ResumeMismatchError, FileNotFoundError,
            FileExistsError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"encoder weights written to {out}")
    return 0
