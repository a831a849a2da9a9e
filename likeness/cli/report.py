"""``likeness report RUN``: a static HTML page for a benchmark run folder."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Write a static HTML report of a `likeness bench` run folder (it works while the run is going).

Input
  RUN   a run folder made by `likeness bench` (run.json + results.sqlite + images/)
Output (default RUN/report/)
  index.html      leaderboard in Stellar's layout (IPS APS SIS GOA RFS; "—" = not computed), the
                  protocol of every score, per-category breakdown, image grids per identity next to
                  the reference photo with per-image scores below (and on hover), failed items
  categories.png  the per-category plot; refs/*.jpg reference thumbnails
  stdout          the leaderboard row and item counts
With --ratings FILE (human ratings in any form `likeness agreement` reads: image,rater,aspect,score; one
column per aspect; or image_a,image_b,winner preferences) the page also shows each metric's agreement
with them: Kendall tau-b with 95% bootstrap intervals per aspect (and pairwise accuracy for preferences).
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write the HTML report of a bench run", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN", help="run folder made by `likeness bench`")
    parser.add_argument("--out", help="output folder (default: RUN/report)")
    parser.add_argument("--ratings", help="human ratings file: show each metric's agreement with it (see above)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from likeness.bench.plan import RunConfigError
    from likeness.bench.report import build_report

    try:
        page, text = build_report(args.run_dir, args.out, args.ratings)
    except (RunConfigError, ValueError, FileNotFoundError) as exc:
        print(f"likeness report: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full or read-only disk: the run's results are untouched, only the pages are missing
        print(f"likeness report: cannot write the report ({exc}); the run's results in {args.run_dir} are intact: "
              f"free space (or pass a writable --out) and run `likeness report` again", file=sys.stderr)
        return 1
    print(text)
    print(f"report: {page}")
    return 0
