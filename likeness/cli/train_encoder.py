"""``likeness train-encoder``: train a tuning-free method's encoder once, on a folder of portraits.

Dispatches on the method's ``train_encoder(data, out_dir, base_model, **options)`` hook, so every
encoder-based method (PhotoVerse, StellarNet, ...) shares this one command. Flags a method does not
take are only passed when given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from likeness.cli.runtime import add_runtime_options, plan_from_args

DESCRIPTION = """\
Train the encoder of a tuning-free method (photoverse, stellarnet) once, on many portraits;
afterwards `likeness personalize --method METHOD --weights OUT` only encodes a photo.

--data: a folder of portraits. photoverse searches it recursively; people come from a CelebA-style
identity*.txt (<file> <person> per line) when present, else from the first sub-folder
(<data>/<person>/*.jpg). stellarnet reads a CelebAMask-HQ folder (CelebA-HQ-img/,
CelebAMask-HQ-mask-anno/, attribute file), a Stellar-layout folder (photos + *_bg.png masks) or any
folder of portrait photos (--layout).

--exclude leaves people out (repeatable): a name or CelebA identity id, a text file of them, a comma
list, or (stellarnet) a Stellar folder whose identities must not be trained on. Unusable photos
(unreadable, faceless, missing masks when --segmenter celebamask, no person) are skipped and
counted; the counts are stored with the weights.

Rerunning the same command into the same --out folder resumes an interrupted run exactly from its
last checkpoint (--checkpoint-every). Multi-GPU: run it under `accelerate launch`.
"""

# Flags only some methods take: passed to the hook only when given on the command line.
METHOD_SPECIFIC = ("layout", "limit", "segmenter")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train-encoder", help="train a tuning-free method's encoder once on portraits",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="photoverse",
                   help="method with an encoder: photoverse or stellarnet (default: %(default)s)")
    p.add_argument("--data", required=True, type=Path, help="portrait dataset folder")
    p.add_argument("--out", required=True, type=Path, help="encoder weights folder to write")
    p.add_argument("--base-model", default="likeness/tiny-sd",
                   help="hub id, local diffusers folder, or likeness/tiny-sd | likeness/tiny-sdxl (default: %(default)s)")
    p.add_argument("--image-encoder", dest="image_encoder",
                   help="CLIP vision model, hub id or folder (default: the method's own choice)")
    p.add_argument("--exclude", action="append", default=[], metavar="NAME_OR_FILE",
                   help="people to leave out (repeatable): name/id, text file, comma list, or a Stellar folder")
    p.add_argument("--identity-loss", dest="identity_loss",
                   help="photoverse: face network of the identity loss (likeness.faces.identity_loss), or none "
                        "(default: dlib)")
    p.add_argument("--layout", choices=["auto", "celebamask-hq", "stellar", "folder"],
                   help="stellarnet: dataset layout (default auto)")
    p.add_argument("--limit", type=int, help="stellarnet: use at most N photos")
    p.add_argument("--segmenter",
                   help="stellarnet: auto | heuristic | celebamask | transformers:<model id or folder> (default auto)")
    p.add_argument("--steps", type=int, dest="max_steps")
    p.add_argument("--lr", type=float, dest="learning_rate")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--grad-accum", type=int, dest="gradient_accumulation_steps")
    p.add_argument("--resolution", type=int, help="training size (default: the base model's native size)")
    p.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    p.add_argument("--seed", type=int)
    p.add_argument("--gradient-checkpointing", action="store_true", default=None, dest="gradient_checkpointing")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="other method options, JSON values (e.g. num_words=5, adapter_hidden=1024, lora_rank=4, "
                        "reg_weight=0.01)")
    p.add_argument("--overwrite", action="store_true", default=None)
    add_runtime_options(p, training=True)
    p.set_defaults(run=run)


def run(args) -> int:
    from likeness.cli.personalize import add_options
    from likeness.data.identities import DatasetError
    from likeness.data.images import ImageError
    from likeness.methods.base import UnknownMethodError, get_method
    from likeness.methods.training import ResumeMismatchError
    from likeness.models.loading import ModelNotFoundError

    config = {k: getattr(args, k) for k in ("image_encoder", "max_steps", "learning_rate", "batch_size",
                                            "gradient_accumulation_steps", "resolution", "checkpoint_every", "seed",
                                            "gradient_checkpointing", "overwrite",
                                            *METHOD_SPECIFIC)}
    config = {k: v for k, v in config.items() if v is not None}
    if args.exclude:
        config["exclude"] = list(args.exclude)
    if getattr(args, "quiet", False):
        config["progress"] = False  # the training bar
    if args.identity_loss is not None:
        config["identity_loss"] = None if args.identity_loss.lower() in ("none", "") else args.identity_loss
    problem = add_options(config, args.option)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        config["plan"] = plan_from_args(args)
        method = get_method(args.method)
        hook = getattr(method, "train_encoder", None)
        if hook is None:
            print(f"error: method {args.method!r} has no encoder to train (it is tuned per person); train-encoder "
                  f"is for tuning-free methods (use `likeness personalize` for {args.method})", file=sys.stderr)
            return 2
        out = hook(args.data, args.out, args.base_model, **config)
    except (DatasetError, ImageError, ModelNotFoundError, UnknownMethodError, ResumeMismatchError, FileNotFoundError,
            FileExistsError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"encoder weights written to {out}")
    return 0
