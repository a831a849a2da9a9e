"""``likeness agreement``: Kendall tau between every metric and human ratings (Stellar's agreement table)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Repeat Stellar's human-agreement table on your own study: Kendall tau-b between each metric's per-image
values and the human ratings, per aspect (overall, objects, relations, or any other), with 95% bootstrap
intervals.

Ratings file (CSV with a header, or JSON / JSON lines with the same keys), one of:
  scores, long   image,rater,aspect,score  (also item_id / image_id for the image, rating for the score;
                 aspect defaults to overall; several raters are averaged) - Stellar's table and most studies
  scores, wide   image[,rater],overall,objects,...  (one numeric column per aspect)
  pairwise       image_a,image_b,winner[,aspect][,rater]  (winner a | b | tie | the winning image's id):
                 adds "pairs agreeing", the share of judged pairs the metric orders as the rater did (a metric
                 tie counts 1/2), and tau is taken against each image's human win rate
Images are named by their id in the results (e.g. astronaut-0-t0001-s123); a path or file name counts by its
stem. Ratings: any number, higher = better. See docs/judge.md.

Outputs: the table on stdout; --plot PNG (grouped bars with the intervals); --csv.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("agreement", help="Kendall tau of each metric vs human ratings", description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", required=True, help="ratings file (CSV or JSON): long scores, wide scores or "
                        "pairwise preferences (see above)")
    parser.add_argument("--results", required=True, help="run folder of `likeness bench` or a results .sqlite")
    parser.add_argument("--plot", help="write the agreement plot here (PNG)")
    parser.add_argument("--csv", help="write metric,aspect,tau,ci_low,ci_high,n here")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import csv

    from likeness.bench.agreement import RatingsError, agreement, format_agreement, metric_values, plot_agreement, read_human

    try:
        ratings = read_human(args.ratings)
        values = metric_values(args.results)
    except (RatingsError, FileNotFoundError, ValueError) as exc:
        print(f"likeness agreement: {exc}", file=sys.stderr)
        return 2
    rows = agreement(ratings, values, samples=args.bootstrap)
    if not any(r.n for r in rows):
        print("likeness agreement: no rated item has a metric value (do the item_ids match the results?)", file=sys.stderr)
        return 2
    print(format_agreement(rows))
    if args.plot:
        print(f"plot: {plot_agreement(rows, args.plot)}")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            w = csv.writer(handle)
            w.writerow(["metric", "aspect", "tau", "ci_low", "ci_high", "n", "pairs_agreeing", "pairs_ci_low", "pairs_ci_high",
                        "pairs"])
            for r in rows:
                w.writerow([r.metric, r.aspect, r.tau, *r.ci95, r.n, *([r.accuracy, *r.accuracy_ci95] if r.pairs else ["", "", ""]),
                            r.pairs])
        print(f"csv: {args.csv}")
    return 0
