"""``likeness bench``: personalize -> generate -> evaluate -> report, in one resumable run folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from likeness.cli.runtime import add_runtime_options, runtime_choices

DESCRIPTION = """\
Run a personalization method over identities x prompts x seeds, score every image, write a report.

With no options it runs the built-in smoke benchmark: textual inversion on the tiny base model
(likeness/tiny-sd, random weights: it makes noise, not people) for the bundled identity
`astronaut` (scikit-image's public-domain photo), 8 prompts of the open prompt set, beside the
reference row copy-reference (the reference photo returned for every prompt: IPS ~1 that the
exploitation penalty zeroes once CLIP-T and CLIP-N are computed, e.g. with --clip-model), in
OUT/<method>/ with OUT/leaderboard.html ranking them; real-photos (another photo of the person, the
upper bound) joins when an identity has a second photo.

Inputs
  --identities   a folder of people (<name>/*.jpg) or the official Stellar layout; default: builtin
  --prompts      open (likeness' open Stellar-T-style set, 1152 prompts), stellar-t / stellar-h (each
                 identity's own prompts_t.json / prompts_h.json), or a JSON file in that schema
Outputs (all in the run folder, --out; several methods: one such folder per method, OUT/<method>/,
and OUT/leaderboard.html)
  run.json                       the configuration and its digest; another config is refused
  run.lock                       the running run's host and pid (empty when none runs)
  results.sqlite                 items (pending/done/failed + reason) and per-image metric rows
  artifacts/<identity>-<photo>/  one personalization artifact per reference photo
  timings/<identity>-<photo>.json  how long that person's personalization took (the leaderboard's s / person)
  images/<identity>/<item_id>.png + .json   canonical layout, item_id = identity-photo-prompt-s<seed>
  report/index.html              leaderboard (IPS APS SIS GOA RFS), protocol, plots, image grids

People are trained and their images generated one by one: each artifact is kept the moment it is
trained, the first images come after the first person. Re-running the same command continues where
a killed run stopped, training only the missing artifacts. One run per folder (RUN/run.lock): a
second run on a folder in use exits with code 2; a killed run's lock is taken over. Shard over processes on this
machine with --processes N (forked after the imports: no launcher, imports paid once), or with
accelerate: `accelerate launch --multi_gpu --num_processes 2 -m likeness bench ...` (on CPU too:
ranks join a gloo group); several machines: add --num_machines, --machine_rank, --main_process_ip,
--main_process_port, with the run folder on a filesystem all of them see (docs/bench.md). Each rank
takes every N-th item and writes only its own store and images (ranks/<host>-<rank>/); they are
merged into results.sqlite when the run ends (and by --resume and `likeness report`).
"""


def _key_value(text: str) -> tuple[str, object]:
    import json

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark a method: personalize, generate, evaluate, report (resumable, shardable)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/bench", help="run folder (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue --out with the configuration recorded in it")
    parser.add_argument("--retry-failed", action="store_true", help="give failed items another try (they are final otherwise)")
    parser.add_argument("--method",
                        help="personalization method, or several comma-separated: each runs into OUT/<method>/ with the "
                             "same plan and OUT/leaderboard.html ranks them; METHOD@BASE runs that method on a base model "
                             "of its own (hub id, local folder or tiny id), so methods of different families share one "
                             "leaderboard, e.g. pulid@likeness/tiny-sdxl,dreambooth-lora@likeness/tiny-flux (the others run "
                             "on --base-model; rerunning the same command continues each on its base) (default: "
                             + ",".join(DEFAULT_METHODS)
                             + ", and real-photos when an identity has a second photo: the method beside the reference "
                             "rows; a folder made by a one-method run (OUT/run.json) goes on with " + DEFAULT_METHODS[0] + ")")
    parser.add_argument("--base-model", default="likeness/tiny-sd", help="hub id, local folder or tiny id (default: %(default)s)")
    parser.add_argument("--identities", default="builtin", help="dataset folder, or 'builtin' (default: %(default)s)")
    parser.add_argument("--prompts", default="open", help="open | stellar-t | stellar-h | JSON file (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=8, help="first N prompts of the set; 0 = all (default: %(default)s)")
    parser.add_argument("--categories", type=_csv, help="only prompts in these categories (comma-separated)")
    parser.add_argument("--prompt-ids", type=_csv, help="only these prompt ids (comma-separated, e.g. t0000,t0042)")
    parser.add_argument("--references", type=int, default=1, help="reference photos per identity; 0 = all (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=1, help="images per (reference, prompt) (default: %(default)s)")
    parser.add_argument("--base-seed", type=int, default=0, help="changes every derived seed (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 4 on tiny models, else 50)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (default: %(default)s)")
    parser.add_argument("--resolution", type=int, help="image side in px (default: 64 on tiny models, else the model's)")
    parser.add_argument("--train-steps", type=int, help="personalization steps (default: 20 on tiny models, else the method's)")
    parser.add_argument("--method-option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="extra method option, JSON value (repeatable), e.g. learning_rate=1e-3; "
                             "METHOD:KEY=VALUE applies to that method only (e.g. ip-adapter:scale=0.6)")
    parser.add_argument("--metrics", type=_csv, help="comma-separated (default: ips,sis,aps,copy-gap + every text-image metric "
                        "whose models are available locally: see the --*-model flags)")
    parser.add_argument("--face-backend", default="dlib", help="face backend for the metrics (default: %(default)s)")
    parser.add_argument("--face-detector", choices=("mtcnn", "hog", "cnn"), default="mtcnn",
                        help="face detector of the dlib face backends, as `likeness evaluate --detector` "
                             "(default: %(default)s)")
    parser.add_argument("--quantize", choices=["none", "int8", "nf4", "fp8"], default="none",
                        help="quantize the denoiser's weights at generation: int8 / nf4 with bitsandbytes on CUDA, int8 / "
                             "fp8 with optimum-quanto on CPU (fp8 also on CUDA); recorded in the run's protocol "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on tiny models, else torch's default)")
    parser.add_argument("--processes", type=int, default=1,
                        help="ranks on this machine, forked after the imports (no launcher, imports paid once); "
                             "same items, seeds and pixels as any launch; several machines: accelerate launch "
                             "(default: %(default)s)")
    parser.add_argument("--stellar-flat", metavar="DIR", help="also copy the images into Stellar's flat layout here")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (training's included)")
    parser.add_argument("--batch-size", type=int, help="images per pipeline call; pixels do not depend on it "
                        "(default: 1 on CPU, 4 on a GPU)")
    parser.add_argument("--parquet", metavar="FILE", help="also export per-image rows to Parquet (same columns as CSV)")
    parser.add_argument("--csv", metavar="FILE", help="also export per-image rows to CSV")
    parser.add_argument("--compose-dataset", metavar="DIR",
                        help="benchmark custom-diffusion on a composed dataset (`likeness compose run`): trains on its kept "
                             "compositions, prompts name all its concepts in held-out backgrounds, metrics default to "
                             "cp-clip,ti-clip (replaces --identities and --prompts; inputs go to OUT/compose/)")
    from likeness.cli.evaluate import add_model_flags

    add_model_flags(parser)
    add_runtime_options(parser, training=True, generation=True)
    parser.set_defaults(run=run)


IDENTITY_METRICS = ["ips", "sis", "aps", "copy-gap"]
# The default run: the built-in method beside the reference rows (likeness.methods.baselines.reference_rows), so its
# leaderboard shows what the identity numbers mean even when the method makes noise.
DEFAULT_METHODS = ["textual-inversion", "copy-reference"]
UPPER_BOUND = "real-photos"


def default_method(args) -> str:
    """``--method`` when not given: the built-in method, ``copy-reference`` and, when an identity has a second
    photo to return, ``real-photos`` (the built-in astronaut has one). A run folder made by a one-method run
    (``OUT/run.json``, the default before the reference rows) is continued as it was: the built-in method alone."""
    from likeness.bench.plan import CONFIG_FILE

    if args.resume or (Path(args.out) / CONFIG_FILE).is_file() or args.compose_dataset:
        return DEFAULT_METHODS[0]
    methods = list(DEFAULT_METHODS)
    if args.identities != "builtin":
        from likeness.data.identities import DatasetError, load_identities

        try:
            if any(len(identity.photos) > 1 for identity in load_identities(args.identities)):
                methods.append(UPPER_BOUND)
        except (DatasetError, OSError):
            pass  # the run reports a bad --identities itself, naming the fix
    return ",".join(methods)


def default_metrics(models) -> tuple[list[str], list[str]]:
    """ips, sis, aps + the text-image metrics whose models load without the network (not the judge: it runs only
    when named); and why others were left out."""
    from likeness.bench.evaluate import is_vision_language
    from likeness.metrics import METRICS

    chosen, skipped = list(IDENTITY_METRICS), []
    for name in METRICS.names():
        if name in chosen or not is_vision_language(name) or getattr(METRICS.get(name), "only_when_asked", False):
            continue
        missing = METRICS.get(name).unavailable(models)
        if missing:
            skipped.append(f"{name} (not available locally: {', '.join(missing)})")
        else:
            chosen.append(name)
    return chosen, skipped


def method_bases(text: str) -> list[tuple[str, str | None]]:
    """``--method a,b@BASE``: ``[(a, None), (b, BASE)]``; a method named twice is refused (one run folder each)."""
    entries = []
    for part in _csv(text):
        method, _, base = part.partition("@")
        entries.append((method.strip(), base.strip() or None))
    names = [m for m, _ in entries]
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise ValueError(f"--method names {', '.join(twice)} more than once; each method runs into OUT/<method>/ once "
                         "(for another base, run it again with another --out)")
    return entries


def config_from_args(args, bases: list[str] | None = None):
    """The run's configuration; ``bases``: the base models of a run with per-method bases (tiny-model defaults for
    steps and resolution only when every one of them is tiny)."""
    from likeness.bench.plan import RunConfig
    from likeness.models.tiny import is_tiny

    tiny = all(is_tiny(b) for b in (bases or [args.base_model]))
    options = {k: v for k, v in args.method_option if ":" not in k}
    if args.train_steps is not None or tiny:
        options.setdefault("max_steps", args.train_steps if args.train_steps is not None else 20)
    def absolute(path: str, keywords: tuple[str, ...]) -> str:
        # A run folder is continued from anywhere: record where inputs are, not how they were typed.
        return path if path in keywords else str(Path(path).expanduser().resolve())

    return RunConfig(
        method=args.method,
        base_model=str(Path(args.base_model).resolve()) if Path(args.base_model).is_dir() else args.base_model,
        identities=absolute(args.identities, ("builtin",)),
        prompts=absolute(args.prompts, ("open", "stellar-t", "stellar-h")),
        prompt_limit=args.limit or None,
        prompt_ids=args.prompt_ids,
        categories=args.categories,
        references=args.references or None,
        seeds=args.seeds,
        base_seed=args.base_seed,
        steps=args.steps or (4 if tiny else 50),
        quantize=args.quantize,
        guidance=args.guidance,
        resolution=args.resolution or (64 if tiny else None),
        metrics=args.metrics if args.metrics is not None else list(IDENTITY_METRICS),
        face_backend=args.face_backend,
        face_detector=args.face_detector,
        method_options=options,
        runtime=chosen_runtime(args),
    )


def chosen_runtime(args) -> dict:
    """The runtime options given other than their defaults (resolved by each rank: see RunConfig.runtime).
    Checked here, before any rank starts, on a described CPU-only machine: a bad spelling fails at once;
    whether the machine has the device is each rank's check."""
    from likeness.models.runtime import resolve_plan

    choices = runtime_choices(args)
    resolve_plan(**{**choices, "device": "cpu", "offload": "none"})  # option values only (no hardware asked)
    return {k: v for k, v in choices.items() if v not in (None, "auto", "none", False)}


def set_threads(threads: int | None, base_model: str) -> None:
    """Tiny models gain nothing from several threads, and on a busy CPU spinning threads made the
    smoke run ~10x slower (13 s with one thread vs 159 s with two, measured here under load)."""
    import torch

    threads = default_threads(threads, base_model)
    if threads:
        torch.set_num_threads(threads)


def default_threads(threads: int | None, base_model: str, env=None, cpus: int | None = None) -> int | None:
    """--threads, else 1 on tiny models, else the machine's cores shared among the ranks launched on
    it (accelerate sets LOCAL_WORLD_SIZE): N ranks x all cores each oversubscribe the CPU.
    None: torch's own default (one process)."""
    from likeness.models.tiny import is_tiny

    if threads is not None:
        return threads
    if is_tiny(base_model):
        return 1
    local = int((os.environ if env is None else env).get("LOCAL_WORLD_SIZE", "1") or 1)
    if local <= 1:
        return None
    return max(1, (cpus or os.cpu_count() or 1) // local)


def on_ranks(args, prepare, work) -> tuple[int, object]:
    """``prepare()`` -> the run's config (bad input raises here, before any fork); then the ``--processes``
    ranks are forked and each runs ``work(config)``. Returns (exit code, its result) on rank 0, where the
    code is the worst of all ranks'; a forked rank exits in here. Bad input is printed once."""
    from likeness.bench import local_ranks
    from likeness.bench.plan import RunConfigError
    from likeness.data.identities import DatasetError
    from likeness.data.prompts import PromptError
    from likeness.methods.base import UnknownMethodError

    ranks = local_ranks.LocalRanks(0, 1)
    try:
        config = prepare()
        ranks = local_ranks.start(args.processes, config.method)  # from here on, in every rank
        set_threads(args.threads, config.base_model)  # after the fork: the cores are shared among the ranks
        result = work(config)
    except (RunConfigError, DatasetError, PromptError, UnknownMethodError, FileNotFoundError, ValueError,
            local_ranks.LaunchError) as exc:
        if ranks.rank == 0:  # every rank fails alike on bad input: say it once
            print(f"likeness bench: {exc}", file=sys.stderr)
        return ranks.finish(2), None
    except BaseException:
        if ranks.rank == 0 and (lost := ranks.lost()):  # rank 0's collective failed because a rank died
            print(f"likeness bench: {lost}; the finished items of every rank are kept in {args.out}: rerun the "
                  "same command (or --resume) to complete the rest", file=sys.stderr)
            return ranks.finish(1), None
        ranks.finish(1, crashed=True)  # a forked rank prints its traceback and exits here
        raise
    return ranks.finish(0), result


def run(args) -> int:
    from likeness.bench.plan import load_run_config
    from likeness.bench.runner import Runner

    from likeness.cli.evaluate import model_overrides
    from likeness.models.vision_language import VisionModels

    # Metric models follow an explicit --dtype (auto keeps them float32: scores comparable across machines);
    # each rank puts them on its own device.
    models = VisionModels(model_overrides(args), dtype=None if args.dtype == "auto" else args.dtype)
    if args.method is None:
        args.method = default_method(args)
        from likeness.bench.leaderboard import PAGE
        from likeness.bench.plan import CONFIG_FILE

        several = Path(args.out) / PAGE
        if args.resume and not (Path(args.out) / CONFIG_FILE).is_file() and several.is_file():
            print(f"likeness bench: {args.out} holds one run folder per method ({several.name} ranks them): continue "
                  "them by rerunning the command that made them without --resume, or one with --resume --out "
                  f"{Path(args.out) / '<method>'}", file=sys.stderr)
            return 2
        if "," not in args.method and not args.resume and not args.compose_dataset and not args.quiet:
            print(f"likeness bench: {args.out} holds a one-method run (run.json): going on with {args.method} alone; "
                  "the default run's reference rows (copy-reference) need a new --out", file=sys.stderr)
    if args.compose_dataset and not args.resume:
        try:
            compose_inputs(args)
        except (ValueError, FileNotFoundError) as exc:
            print(f"likeness bench: {exc}", file=sys.stderr)
            return 2
    if not args.resume and args.metrics is None:
        args.metrics, skipped = default_metrics(models)
        if skipped and not args.quiet:
            print("metrics left out (give their models with the --*-model flags): " + "; ".join(skipped), file=sys.stderr)
    if "@" in args.method and "," not in args.method:  # one method on a base of its own: --base-model, said shorter
        from likeness.methods.discovery import check_base

        args.method, _, args.base_model = args.method.partition("@")
        try:
            check_base(args.method, args.base_model)
        except (ValueError, FileNotFoundError) as exc:
            print(f"likeness bench: {exc}", file=sys.stderr)
            return 2
    if "," in args.method:
        return run_several(args, models)
    def prepare():
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        return load_run_config(args.out) if args.resume else config_from_args(args)

    def work(config):
        runner = Runner(config, args.out, progress=not args.quiet, retry_failed=args.retry_failed,
                        batch_size=args.batch_size, models=models)
        return runner, runner.run()

    code, result = on_ranks(args, prepare, work)
    if code or not result[0].state.is_main_process:
        return code
    runner, summary = result
    print(summary.describe())
    if args.csv or args.parquet:
        from likeness.bench.runner import STORE_FILE
        from likeness.bench.store import ResultsStore

        with ResultsStore(runner.run_dir / STORE_FILE) as store:
            for path, export in ((args.csv, store.export_csv), (args.parquet, store.export_parquet)):
                if path:
                    print(f"per-image rows: {export(path)}")
    if args.stellar_flat:
        from likeness.data.layout import to_stellar_flat

        written = to_stellar_flat(runner.run_dir / "images", args.stellar_flat, runner.identities)
        print(f"Stellar flat layout: {len(written)} images in {args.stellar_flat}")
    if not args.no_report:
        from likeness.bench.report import build_report

        try:
            page, text = build_report(runner.run_dir)
        except OSError as exc:  # the run itself is finished and kept: only its pages are missing
            print(f"likeness bench: every result is kept in {runner.run_dir}, but the report could not be written "
                  f"({exc}); free space and run `likeness report {runner.run_dir}`", file=sys.stderr)
            return 1
        print(text)
        print(f"report: {page}")
    return 0


def compose_inputs(args) -> None:
    """``--compose-dataset``: the identity, prompts and training set from the dataset (likeness.compose.bench)."""
    from likeness.compose.bench import bench_inputs

    methods = _csv(args.method)
    if "custom-diffusion" not in methods:
        raise ValueError(f"--compose-dataset trains custom-diffusion; --method {args.method} does not include it")
    inputs = bench_inputs(args.compose_dataset, Path(args.out) / "compose")
    args.identities, args.prompts = str(inputs.identities), str(inputs.prompts)
    prefix = "custom-diffusion:" if len(methods) > 1 else ""
    args.method_option = list(args.method_option) + [(prefix + k, v) for k, v in inputs.options.items()]
    if args.metrics is None:
        args.metrics = ["cp-clip", "ti-clip"]


def run_several(args, models=None) -> int:
    """``--method a,b,c``: one run folder per method under --out, one leaderboard over them."""
    from likeness.bench.leaderboard import build_leaderboard, method_folder, run_methods
    from likeness.methods.base import get_method
    from likeness.methods.discovery import check_base

    try:
        entries = method_bases(args.method)
    except ValueError as exc:
        print(f"likeness bench: {exc}", file=sys.stderr)
        return 2
    methods = [m for m, _ in entries]
    bases = {m: b for m, b in entries if b}
    per_method: dict[str, dict] = {m: {} for m in methods}
    for key, value in args.method_option:
        if ":" in key:
            method, _, option = key.partition(":")
            if method not in per_method:
                print(f"likeness bench: --method-option {key}: {method!r} is not one of --method {args.method}", file=sys.stderr)
                return 2
            per_method[method][option] = value
    def prepare():
        for method in methods:
            get_method(method)  # an unknown name fails before any work
        for method, base in bases.items():
            check_base(method, base)
        args.method = methods[0]
        return config_from_args(args, [bases.get(m, args.base_model) for m in methods])

    def work(config):
        main = int(os.environ.get("RANK", "0") or 0) == 0  # forked or launched by accelerate
        return main, run_methods(config, per_method, args.out, progress=not args.quiet, retry_failed=args.retry_failed,
                                 report=not args.no_report and main, models=models,
                                 bases={m: str(Path(b).resolve()) if Path(b).is_dir() else b for m, b in bases.items()})

    code, result = on_ranks(args, prepare, work)
    if code or not result[0]:
        return code
    summaries = result[1]
    for summary in summaries:
        print(summary.describe())
    page, text = build_leaderboard([method_folder(Path(args.out), m) for m in methods], args.out)
    print(text)
    print(f"leaderboard: {page}")
    return 0
