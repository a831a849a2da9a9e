"""``likeness train-encoder``: train a tuning-free method's encoder once, on a portrait dataset.

Dispatches on the method's ``train_encoder(data, out_dir, base_model, **options)`` hook, so every
encoder-based method (StellarNet, PhotoVerse, ...) shares this one command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Train the encoder of a tuning-free method (e.g. stellarnet) once on a folder of portraits, then
personalize anyone without training: `likeness personalize --method stellarnet --weights OUT ...`.

--data is a CelebAMask-HQ folder (CelebA-HQ-img/, CelebAMask-HQ-mask-anno/, attribute file), a
Stellar-layout folder (photos + *_bg.png masks) or any folder of portrait photos. Unusable photos
(unreadable, missing masks when --segmenter celebamask, no person) are skipped and counted; the
counts are printed and stored in the weights' config. --exclude leaves people out (CelebA identity
ids, file names, a text file of them, or a Stellar folder whose identities must not be trained on).

Rerunning the same command into the same --out folder resumes from the last checkpoint.
"""


def add_parser(subparsers) -> None:
    from likeness.cli.personalize import _value

    p = subparsers.add_parser("train-encoder", help="train a tuning-free method's encoder once on portraits",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, help="an encoder-based method, e.g. stellarnet")
    p.add_argument("--base-model", required=True, help="hub id, local diffusers folder, or likeness/tiny-sdxl")
    p.add_argument("--data", required=True, type=Path, help="portrait dataset folder")
    p.add_argument("--out", required=True, type=Path, help="weights folder to write")
    p.add_argument("--image-encoder", dest="image_encoder", help="CLIP vision model: hub id or folder")
    p.add_argument("--layout", choices=["auto", "celebamask-hq", "stellar", "folder"], help="dataset layout (default auto)")
    p.add_argument("--exclude", help="identities to leave out: comma list, a text file, or a Stellar folder")
    p.add_argument("--limit", type=int, help="use at most N photos")
    p.add_argument("--segmenter", help="auto | heuristic | celebamask | transformers:<model id or folder> (default auto)")
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
                   help="any other method option, value parsed as JSON when possible (e.g. rank=8, reg_weight=0.01)")
    p.add_argument("--overwrite", action="store_true", default=None)
    p.set_defaults(run=run, _value=_value)


def run(args) -> int:
    from likeness.data.identities import DatasetError
    from likeness.methods.base import UnknownMethodError, get_method
    from likeness.methods.training import ResumeMismatchError
    from likeness.models.loading import ModelNotFoundError

    config = {k: getattr(args, k) for k in ("image_encoder", "layout", "exclude", "limit", "segmenter", "max_steps",
                                            "learning_rate", "batch_size", "gradient_accumulation_steps", "resolution",
                                            "checkpoint_every", "seed", "mixed_precision", "gradient_checkpointing",
                                            "device", "overwrite")}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --option {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        config[key.strip()] = args._value(value)
    try:
        method = get_method(args.method)
        hook = getattr(method, "train_encoder", None)
        if hook is None:
            print(f"error: method {args.method!r} has no encoder to train; train-encoder is for tuning-free methods "
                  f"(use `likeness personalize` for {args.method})", file=sys.stderr)
            return 2
        out = hook(args.data, args.out, args.base_model, **{k: v for k, v in config.items() if v is not None})
    except (DatasetError, ModelNotFoundError, UnknownMethodError, ResumeMismatchError, FileNotFoundError,
            FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"encoder weights written to {out}")
    return 0
