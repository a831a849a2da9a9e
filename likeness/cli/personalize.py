"""``likeness personalize``: train a method on photos of one or more people and write an artifact folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from likeness.cli.runtime import add_runtime_options, plan_from_args

DESCRIPTION = """\
Train a personalization method on photos of people and write an artifact folder: weights in a
format plain diffusers loads (textual-inversion embeddings or LoRA) plus likeness.json (method,
base model and revision, placeholder tokens), loss.csv and loss.png.

Inputs: --identity PHOTO_OR_FOLDER, once per person (a folder = all its images). Each photo is
face-detected; the largest face is used (with a warning when there are several); a photo with no
face is skipped when the person has others, else it is an error naming the file.

Rerunning the same command into the same --out folder resumes an interrupted run from its last
checkpoint (see --checkpoint-every). The default base model, likeness/tiny-sd, is a built-in tiny
model for offline smoke runs: it makes noise, not pictures.
"""


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_options(config: dict, items: list[str]) -> str:
    """Put each ``--option KEY=VALUE`` (JSON value, else text) into ``config``; the error text, or ""."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            return f"error: --option {item!r} is not KEY=VALUE"
        config[key.strip()] = _value(value)
    return ""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("personalize", help="train a method on photos of people; write an artifact folder",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True,
                   help="method name, e.g. textual-inversion, dreambooth-lora, celeb-basis, or a tuning-free one: "
                        "photoverse, stellarnet (need --weights), ip-adapter, ip-adapter-faceid, instantid, photomaker, pulid, "
                        "pulid-flux, infiniteyou, flux-ip-adapter (FLUX.1) "
                        "(these only encode the photos), or a reference-image editor: flux-kontext, flux2-reference, "
                        "qwen-image-edit (these only record the photo)")
    p.add_argument("--base-model",
                   help="hub id, local diffusers folder, or a tiny id: likeness/tiny-sd | tiny-sdxl | tiny-flux | "
                        "tiny-flux2-klein | tiny-sd3 | tiny-qwen-image | tiny-qwen-image-edit (default: the one "
                        "--weights were trained on, else likeness/tiny-sd)")
    p.add_argument("--identity", action="append", required=True, metavar="PHOTO_OR_FOLDER",
                   help="photos of one person (repeat for several people)")
    p.add_argument("--name", action="append", help="name for each --identity, in order (default: folder name or photo stem)")
    p.add_argument("--out", required=True, type=Path, help="artifact folder to write")
    p.add_argument("--steps", type=int, dest="max_steps", help="optimizer steps (method default if omitted)")
    p.add_argument("--lr", type=float, dest="learning_rate", help="learning rate (method default if omitted)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--grad-accum", type=int, dest="gradient_accumulation_steps")
    p.add_argument("--resolution", type=int, help="training size in pixels (default: the base model's native size)")
    p.add_argument("--checkpoint-every", type=int, dest="checkpoint_every", help="save a resumable checkpoint every N steps")
    p.add_argument("--seed", type=int, help="training seed (default 0)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None, dest="gradient_checkpointing")
    p.add_argument("--masked-loss", choices=["person", "face"], dest="masked_loss", help="loss only inside this mask")
    p.add_argument("--quantize", choices=["none", "int8", "nf4", "fp8"],
                   help="weight quantization the artifact's images are generated with by default (recorded in "
                        "likeness.json; training itself runs unquantized): int8 / nf4 with bitsandbytes on CUDA, int8 / "
                        "fp8 with optimum-quanto on CPU; `generate --quantize` overrides it")
    p.add_argument("--weights", type=Path,
                   help="trained encoder folder of a tuning-free method (photoverse, stellarnet: made by "
                        "`likeness train-encoder`); the photo is only encoded, nothing trains")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other method option, value parsed as JSON when possible (e.g. rank=8, train_text_encoder=true)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a finished artifact in --out")
    add_runtime_options(p, training=True)
    p.set_defaults(run=run)


def run(args) -> int:
    from likeness.data.images import ImageError
    from likeness.methods.base import ArtifactError, UnknownMethodError, get_method
    from likeness.methods.preparation import NoFaceError, identity_photos
    from likeness.methods.training import ResumeMismatchError
    from likeness.models.loading import ModelNotFoundError

    if args.name and len(args.name) != len(args.identity):
        print(f"error: got {len(args.name)} --name for {len(args.identity)} --identity", file=sys.stderr)
        return 2
    config = {k: getattr(args, k) for k in ("max_steps", "learning_rate", "batch_size", "gradient_accumulation_steps",
                                            "resolution", "checkpoint_every", "seed",
                                            "gradient_checkpointing", "masked_loss", "overwrite")}
    if args.weights is not None:
        config["weights"] = str(args.weights)
    if getattr(args, "quantize", None) not in (None, "none"):
        config["quantize"] = args.quantize
    base_model = args.base_model or (None if args.weights is not None else "likeness/tiny-sd")
    problem = add_options(config, args.option)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.quiet:
        config["progress"] = False  # the training bar
    try:
        config["plan"] = plan_from_args(args)
        method = get_method(args.method)
        identities = {}
        for i, path in enumerate(args.identity):
            path = Path(path)
            name = args.name[i] if args.name else (path.name if path.is_dir() else path.stem)
            identities[name] = identity_photos(path)
        out = method.personalize(identities, args.out, base_model, **config)
    except (ImageError, NoFaceError, ModelNotFoundError, ArtifactError, UnknownMethodError, ResumeMismatchError,
            FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"artifact written to {out}")
    return 0
