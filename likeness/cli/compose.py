"""``likeness compose``: Gen4Gen multi-concept data (run, review, reject) and training on it (train)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from likeness.cli.runtime import add_runtime_options, plan_from_args

DESCRIPTION = """\
Compose several concepts (people, pets, objects) into realistic training images, MyCanvas style
(Gen4Gen): cut each concept out (alpha channel, classical GrabCut, or a salient-object model), plan a layout (offline,
or an OpenAI-compatible LLM), paste, repaint with an inpainting model, caption, and write a dataset
folder (see docs/compose.md for its schema). Rerunning `run` into the same --out continues an
interrupted run without duplicates.

  likeness compose run --concept mochi=photos/mochi:dog --concept kettle=photos/kettle:teapot --out ds --count 100
  likeness compose review ds            # writes ds/review.html (tick, save rejections.json)
  likeness compose reject ds --from rejections.json
  likeness compose train ds --out artifact --base-model stable-diffusion-v1-5/stable-diffusion-v1-5
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compose", help="compose multi-concept training data (Gen4Gen) and train on it",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="compose_command", metavar="<step>")

    r = sub.add_parser("run", help="make (or continue) a composed dataset")
    r.add_argument("--concept", action="append", required=True, metavar="NAME=PATH[:CLASS]",
                   help="a concept's photo or folder (class noun after ':', or class.txt in the folder); repeat")
    r.add_argument("--out", required=True, type=Path, help="dataset folder")
    r.add_argument("--count", type=int, default=100, help="compositions to make (default %(default)s)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--canvas", type=int, default=1024, help="square canvas side in pixels (default %(default)s)")
    r.add_argument("--min-concepts", type=int, default=2)
    r.add_argument("--max-concepts", type=int, default=3)
    r.add_argument("--segmenter", default="auto",
                   help="auto (a photo's alpha channel, else grabcut) | alpha | grabcut (classical, offline, for "
                        "ordinary photos) | PATH.onnx (IS-Net/BiRefNet style) | transformers hub id or folder "
                        "(default %(default)s)")
    r.add_argument("--refine-passes", type=int, default=2, help="repeat-and-refine segmentation passes")
    r.add_argument("--llm-url", help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1); default: offline planner")
    r.add_argument("--llm-model", default="gpt-4o-mini", help="model name sent to the LLM endpoint")
    r.add_argument("--llm-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    r.add_argument("--llm-timeout", type=float, default=30.0)
    r.add_argument("--llm-retries", type=int, default=3)
    r.add_argument("--no-fallback", action="store_true", help="skip a composition when the LLM fails (default: offline plan)")
    r.add_argument("--repaint-model", default="diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                   help="inpainting model: hub id, folder, likeness/tiny-sd-inpaint; 'none' = keep the raw composites")
    r.add_argument("--strength", type=float, default=0.9)
    r.add_argument("--steps", type=int, default=60)
    r.add_argument("--guidance", type=float, default=6.0)
    r.add_argument("--background", help="background image file, or a background prompt (default: the planner's)")
    r.add_argument("--captioner", default="template", help="template | a vision-language model hub id or folder")
    r.add_argument("--caption-strategy", choices=["gen4gen", "plain"], default="gen4gen")
    r.add_argument("--global-token", default="<gen4gen>")
    add_runtime_options(r)
    r.set_defaults(run=run_compose)

    v = sub.add_parser("review", help="write the HTML contact sheet of a dataset")
    v.add_argument("dataset", type=Path)
    v.add_argument("--out", type=Path, help="HTML file (default DATASET/review.html)")
    v.set_defaults(run=run_review)

    j = sub.add_parser("reject", help="record rejected compositions (training leaves them out)")
    j.add_argument("dataset", type=Path)
    j.add_argument("--id", action="append", default=[], help="composition id (repeat)")
    j.add_argument("--from", dest="from_file", type=Path, help="rejections.json saved from the contact sheet")
    j.add_argument("--reason", default="rejected in review")
    j.add_argument("--undo", action="store_true", help="take the rejections back")
    j.set_defaults(run=run_reject)

    t = sub.add_parser("train", help="train Custom Diffusion (K/V + one token per concept) on a dataset")
    t.add_argument("dataset", type=Path)
    t.add_argument("--out", required=True, type=Path, help="artifact folder")
    t.add_argument("--base-model", default="likeness/tiny-sd")
    t.add_argument("--steps", type=int, dest="max_steps")
    t.add_argument("--lr", type=float, dest="learning_rate")
    t.add_argument("--batch-size", type=int, dest="batch_size")
    t.add_argument("--resolution", type=int)
    t.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    t.add_argument("--seed", type=int)
    add_runtime_options(t, training=True)
    t.add_argument("--overwrite", action="store_true", default=None)
    t.add_argument("--prior", action="store_true", default=None, dest="with_prior_preservation",
                   help="prior preservation: class images in every batch, their loss weighted by --prior-weight")
    t.add_argument("--class-images", type=int, dest="num_class_images", help="class images per class noun (default 200)")
    t.add_argument("--class-dir", action="append", metavar="NOUN=DIR", help="real class images for a class noun (repeat); "
                   "nouns without one get images generated by the base model")
    t.add_argument("--prior-weight", type=float, dest="prior_loss_weight", help="prior loss weight (default 1.0)")
    t.set_defaults(run=run_train)
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])


def run_compose(args) -> int:
    import os

    from likeness.compose import LLMPlanner, Repainter, TemplateCaptioner, VLMCaptioner, compose_dataset, parse_concept_spec
    from likeness.compose.dataset import DatasetError
    from likeness.models.loading import ModelNotFoundError

    try:
        plan = plan_from_args(args)
        concepts = [parse_concept_spec(spec) for spec in args.concept]
        planner = None
        if args.llm_url:
            planner = LLMPlanner(args.llm_url, args.llm_model, api_key=os.environ.get(args.llm_key_env),
                                 timeout=args.llm_timeout, retries=args.llm_retries)
        repainter = None
        if args.repaint_model.lower() != "none":
            repainter = Repainter(args.repaint_model, strength=args.strength, num_inference_steps=args.steps,
                                  guidance_scale=args.guidance, device=plan.device, dtype=plan.dtype)
        if args.captioner == "template":
            captioner = TemplateCaptioner(args.caption_strategy, args.global_token)
        else:
            captioner = VLMCaptioner(args.captioner, strategy=args.caption_strategy, global_token=args.global_token,
                                     device=plan.device)
        result = compose_dataset(concepts, args.out, args.count, segmenter=args.segmenter, passes=args.refine_passes,
                                 planner=planner, fallback_planner=not args.no_fallback, repainter=repainter,
                                 captioner=captioner, seed=args.seed, canvas=(args.canvas, args.canvas),
                                 min_concepts=args.min_concepts, max_concepts=args.max_concepts,
                                 background=args.background)
    except (DatasetError, ModelNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(result.written)} new, {len(result.existing)} already there, {len(result.skipped)} skipped "
          f"(reasons in skipped.jsonl)")
    return 0


def run_review(args) -> int:
    from likeness.compose import ComposedDataset, DatasetError

    try:
        path = ComposedDataset(args.dataset).contact_sheet(args.out)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"contact sheet written to {path}")
    return 0


def run_reject(args) -> int:
    from likeness.compose import ComposedDataset, DatasetError
    from likeness.compose.dataset import rejections_from_file

    try:
        ids = list(args.id) + (rejections_from_file(args.from_file) if args.from_file else [])
        if not ids:
            print("error: give --id or --from", file=sys.stderr)
            return 2
        ComposedDataset(args.dataset).reject(ids, reason=args.reason, undo=args.undo)
    except (DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"undone" if args.undo else "rejected": ids}))
    return 0


def run_train(args) -> int:
    from likeness.compose import DatasetError
    from likeness.compose.train import train_on_dataset
    from likeness.data.images import ImageError
    from likeness.methods.training import ResumeMismatchError
    from likeness.models.loading import ModelNotFoundError

    config = {k: getattr(args, k) for k in ("max_steps", "learning_rate", "batch_size", "resolution",
                                            "checkpoint_every", "seed", "overwrite",
                                            "with_prior_preservation", "num_class_images", "prior_loss_weight")}
    try:
        config["plan"] = plan_from_args(args)
        if args.class_dir:
            bad = [c for c in args.class_dir if "=" not in c]
            if bad:
                raise ValueError(f"--class-dir expects NOUN=DIR, got {bad[0]!r}")
            config["class_data_dir"] = dict(c.split("=", 1) for c in args.class_dir)
        out = train_on_dataset(args.dataset, args.out, args.base_model, **config)
    except (DatasetError, ImageError, ModelNotFoundError, ResumeMismatchError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"artifact written to {out}")
    return 0
