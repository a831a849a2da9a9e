"""``likeness compare``: methods side by side, means with 95% intervals and paired tests on shared items."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Compare runs of different methods on the same plan: per metric, each run's mean with a 95% bootstrap
interval over items, and for each pair a paired test on the items both scored (same item ids): mean
difference, its interval, and a sign-flip permutation p-value.

Inputs: run folders of `likeness bench` or results .sqlite files, optionally LABEL=PATH.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="compare methods: CIs and paired tests", description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]RUN", help="run folders or result stores")
    parser.add_argument("--csv", help="also write the table as CSV")
    parser.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from likeness.bench.compare import compare, format_comparison, write_csv

    runs = {}
    for spec in args.runs:
        label, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
        runs[label] = path
    try:
        result = compare(runs)
    except (FileNotFoundError, ValueError) as exc:
        print(f"likeness compare: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(result))
    if args.csv:
        print(f"csv: {write_csv(result, args.csv)}")
    return 0
