"""``likeness evaluate``: score generated images for identity (IPS, SIS) and attributes (APS)."""

from __future__ import annotations

import argparse
import sys

from likeness.cli.runtime import add_runtime_options, plan_from_args

DESCRIPTION = """\
Score generated images of people against the photos they were generated from.

Inputs
  DATASET    the people: the official Stellar layout (STELLAR/000/0.jpg + 0_attributes.json ...)
             or a plain folder of identities (<name>/*.jpg); detected automatically.
  GENERATED  the generated images: likeness' layout <identity>/<item_id>.png + <item_id>.json
             (sidecar with "reference" = the photo used), or Stellar's flat layout
             <save_name>.png + <save_name>.json (with "image_path" = <id>/<k>.jpg).

Outputs
  --store    SQLite file (WAL): table results, one row per (item_id, metric) with value, status
             (ok, no_face, unreadable, too_large, image_missing, sidecar_missing, bad_sidecar,
             duplicate_id, unsupported_format, ref_missing, ...), n_faces, protocol (JSON) and
             detail (JSON: raw cosine, per-photo values, problems). Re-running skips finished rows.
  --csv      optional CSV export of the per-image rows (--parquet: the same columns in Parquet).
  stdout     a summary table (value, mean, std, count, no_face, unscored), every protocol, and
             the count of input files per status: every file in GENERATED is one row.

Metrics: ips (identity preservation), sis (min over the identity's photos), aps (Stellar attribute
probe when CelebA labels exist, otherwise an age/gender agreement under a different protocol name),
copy-gap (similarity to the reference minus similarity to the identity's other photos: large = a copy
of the reference; status single_photo for a person with one photo), multi-id (several people in one
image: faces matched one-to-one to the people of the sidecar's "identities" list, identity confusion).
With the default dlib backend, faces are found by MTCNN (--detector) and scores are calibrated so
strangers sit near 0 (raw cosine kept).
Text-image metrics: clip-t, clip-i, clip-n (with clip-t and ips/sis: the exploitation penalty, rows
ips-penalised / sis-penalised), goa, rfs (likeness' open VQA definition), cp-clip, ti-clip, pickscore,
aesthetic. The open multimodal judge (only when named; answers cached; docs/judge.md): judge-identity,
judge-prompt, judge-overall (--judge-model: a Qwen2.5-VL / Qwen3-VL class model; a row whose answer cannot
be read has status parse_failed, out_of_range or refused). Their models load by hub id or local folder
(flags below, or the LIKENESS_*_MODEL environment variables); a model that is missing gives rows with
status model_missing, a clear message and exit code 1.
"""


def add_model_flags(parser) -> None:
    """One --<role>-model flag per vision-language model role (shared with `likeness bench`)."""
    from likeness.models.vision_language import ROLES

    group = parser.add_argument_group("text-image metric models (hub id, local folder, or tiny id)")
    for role in ROLES.values():
        group.add_argument(role.flag, dest=f"model_{role.role.replace('-', '_')}", metavar="PATH",
                           help=f"{role.used_for}; default ${role.env} or {role.default}")


def model_overrides(args) -> dict:
    from likeness.models.vision_language import ROLES

    return {r: getattr(args, f"model_{r.replace('-', '_')}", None) for r in ROLES if getattr(args, f"model_{r.replace('-', '_')}", None)}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score generated images for identity and attributes (IPS, SIS, APS)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="folder of identities (Stellar layout or <name>/*.jpg)")
    parser.add_argument("generated", help="folder of generated images (likeness or Stellar flat layout)")
    parser.add_argument("--store", default="likeness-results.sqlite", help="SQLite results file (default: %(default)s)")
    parser.add_argument("--metrics", default="ips,sis,aps,copy-gap", help="comma-separated metric names (default: %(default)s)")
    parser.add_argument("--backend", default="dlib", help="face backend: dlib (offline default), dlib-torch, arcface or arcface-torch")
    parser.add_argument("--detector", choices=("mtcnn", "hog", "cnn"), default="mtcnn",
                        help="face detector of the dlib backends: mtcnn (the official Stellar detector, in torch; finds "
                             "faces in generated images that HOG misses), hog or cnn (dlib's MMOD); the protocol names it "
                             "(default: %(default)s)")
    parser.add_argument("--model-dir", help="arcface: folder with the detector and recognition ONNX models")
    parser.add_argument("--face-weights", help="arcface-torch: recogniser weights (.onnx or arcface_torch .pth) "
                        "instead of the folder's recogniser")
    parser.add_argument("--split", choices=("all", "test", "val"), default="all", help="Stellar split (default: %(default)s)")
    parser.add_argument("--cache-dir", help="keep reference-photo faces here between runs")
    parser.add_argument("--csv", help="also export per-image rows to this CSV file")
    parser.add_argument("--parquet", help="also export per-image rows to this Parquet file (same columns as CSV)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--batch-images", type=int, default=8, help="images per feature batch (default: %(default)s)")
    add_model_flags(parser)
    add_runtime_options(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from likeness.bench.evaluate import evaluate, format_summary
    from likeness.bench.store import ResultsStore
    from likeness.data.identities import DatasetError
    from likeness.models.vision_language import VisionModels

    if args.backend in ("arcface", "arcface-torch"):
        if not args.model_dir:
            print(f"likeness evaluate: --backend {args.backend} needs --model-dir", file=sys.stderr)
            return 2
        options = {"model_dir": args.model_dir}
        if args.face_weights:
            if args.backend != "arcface-torch":
                print("likeness evaluate: --face-weights needs --backend arcface-torch", file=sys.stderr)
                return 2
            options["weights"] = args.face_weights
    else:
        options = {"detector": args.detector}
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        plan = plan_from_args(args)
        if args.backend in ("dlib-torch", "arcface-torch"):  # the torch face backends run on the plan's device
            options["device"] = plan.device
        report = evaluate(args.dataset, args.generated, args.store, metrics=metrics, backend=args.backend,
                          backend_options=options, split=args.split, cache_dir=args.cache_dir, progress=not args.quiet,
                          models=VisionModels(model_overrides(args), device=plan.device,
                                             # auto keeps metric models float32 (scores comparable across machines)
                                             dtype=None if args.dtype == "auto" else plan.dtype),
                          batch_size=args.batch_images)
    except (DatasetError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"likeness evaluate: {exc}", file=sys.stderr)
        return 2
    print(format_summary(report))
    if args.csv or args.parquet:
        with ResultsStore(args.store) as store:
            for path, export in ((args.csv, store.export_csv), (args.parquet, store.export_parquet)):
                if path:
                    print(f"per-image rows: {export(path)}")
    for problem in report.model_errors:
        print(f"likeness evaluate: {problem}", file=sys.stderr)
    return 1 if report.model_errors else 0
