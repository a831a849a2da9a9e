"""``likeness generate``: images of the people in an artifact, written in likeness's canonical layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from likeness.cli.runtime import add_runtime_options, plan_from_args

DESCRIPTION = """\
Generate images with a personalization artifact (from `likeness personalize`) and write them as
<out>/<identity>/<item_id>.png plus a .json sidecar (prompt, seed, method, base model, ...),
item_id = <identity>-<reference photo stem>-<prompt id>-s<seed>.

Prompts use the Stellar placeholder: "{} sleeping on a couch" ({} becomes the person). Give them
with --prompt (repeatable; ids u0000, u0001, ...) or --prompts FILE (a Stellar prompts_t.json /
prompts_h.json, or "open" for likeness's open set; see --limit). Each prompt gets -n images with
seeds --seed, --seed+1, ... Existing images are kept, so rerunning continues an interrupted run.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate images with an artifact, in the canonical layout",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", required=True, type=Path, help="artifact folder written by `likeness personalize`")
    p.add_argument("--prompt", action="append", default=[], help='prompt template with {}, e.g. "{} riding a horse"')
    p.add_argument("--prompts", help='prompt file (Stellar schema) or "open"')
    p.add_argument("--limit", type=int, help="use only the first N prompts of --prompts")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt and person (default 1)")
    p.add_argument("--identity", action="append", help="only these people of the artifact (default: all)")
    p.add_argument("--out", required=True, type=Path, help="output root folder")
    p.add_argument("--steps", type=int, dest="num_inference_steps", help="denoising steps (default: the artifact's)")
    p.add_argument("--guidance", type=float, dest="guidance_scale", help="classifier-free guidance (default: the artifact's)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--base-model", help="another base model of the same family (default: the artifact's)")
    add_runtime_options(p, generation=True)
    p.add_argument("--quantize", choices=["none", "int8", "nf4", "fp8"],
                   help="quantize the denoiser's weights: int8 / nf4 with bitsandbytes on CUDA, int8 / fp8 with "
                        "optimum-quanto on CPU (fp8 also on CUDA); recorded in each image's sidecar (default: the "
                        "artifact's, else none)")
    p.set_defaults(run=run)


def run(args) -> int:
    from likeness.data.prompts import Prompt, PromptError, load_prompts, select_prompts
    from likeness.methods.base import ArtifactError, PromptPlaceholderError, UnknownMethodError, fill_prompt, load_artifact, write_images
    from likeness.models.loading import ModelNotFoundError

    try:
        prompts = [Prompt(prompt_id=f"u{i:04d}", prompts=text, source="command line") for i, text in enumerate(args.prompt)]
        if args.prompts:
            prompts += select_prompts(load_prompts(args.prompts), limit=args.limit)
        if not prompts:
            raise ValueError("no prompts: give --prompt TEXT or --prompts FILE")
        for prompt in prompts:  # refuse a bad prompt before loading any model
            fill_prompt(prompt.template, "x")
        personalized = load_artifact(args.artifact, base_model=args.base_model, plan=plan_from_args(args),
                                     quantize=getattr(args, "quantize", None))
        seeds = [args.seed + k for k in range(args.num_images)]
        sampling = {k: getattr(args, k) for k in ("num_inference_steps", "guidance_scale", "height", "width")}
        written = write_images(personalized, prompts, seeds, args.out, identities=args.identity,
                               progress=not getattr(args, "quiet", False), **sampling)
    except (ArtifactError, PromptPlaceholderError, PromptError, UnknownMethodError, ModelNotFoundError,
            FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    print(f"{len(written)} images in {args.out}")
    return 0
