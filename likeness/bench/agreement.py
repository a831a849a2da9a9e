"""Human agreement: Kendall's tau between each metric and human ratings, as in Stellar's agreement table.

Ratings file (CSV with a header, or JSON: a list of objects / JSON lines), one row per judgement:

    item_id,aspect,rating[,rater]
    astronaut-0-t0001-s123,overall,4
    astronaut-0-t0001-s123,objects,5
    astronaut-0-t0001-s123,relations,3

``item_id`` is the image's id in the results (the canonical ``<identity>-<photo>-<prompt>-s<seed>``, or a
Stellar ``save_name``); ``aspect`` is ``overall``, ``objects`` or ``relations`` (other names are kept as
they are); ``rating`` is any number (higher = better). Several raters of one (item, aspect) are averaged.
Per metric and aspect: tau-b over the items that have both a rating and a metric value, with a 95% bootstrap
interval over items.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from likeness.bench.store import ResultsStore
from likeness.metrics.stats import kendall_tau, kendall_tau_ci

ASPECTS = ("overall", "objects", "relations")


class RatingsError(ValueError):
    """A ratings file that cannot be used; the message names the file and the row."""


def read_ratings(path: str | Path) -> dict[str, dict[str, float]]:
    """aspect -> item_id -> mean rating."""
    path = Path(path)
    if not path.is_file():
        raise RatingsError(f"{path}: ratings file does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".json", ".jsonl"):
        try:
            rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise RatingsError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    else:
        rows = list(csv.DictReader(text.splitlines()))
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for n, row in enumerate(rows, start=2 if path.suffix.lower() not in (".json", ".jsonl") else 1):
        if not isinstance(row, dict) or not {"item_id", "aspect", "rating"} <= set(row):
            raise RatingsError(f"{path}: row {n} needs item_id, aspect and rating (got {row!r})")
        try:
            rating = float(row["rating"])
        except (TypeError, ValueError):
            raise RatingsError(f"{path}: row {n}: rating {row['rating']!r} is not a number") from None
        if not math.isfinite(rating):
            raise RatingsError(f"{path}: row {n}: rating {row['rating']!r} is not finite")
        sums[str(row["aspect"]).strip().lower()][str(row["item_id"]).strip()].append(rating)
    if not sums:
        raise RatingsError(f"{path}: no ratings")
    return {aspect: {item: float(np.mean(v)) for item, v in items.items()} for aspect, items in sums.items()}


def store_path(results: str | Path) -> Path:
    """A run folder (its results.sqlite) or a store file."""
    results = Path(results)
    if results.is_dir():
        results = results / "results.sqlite"
    if not results.is_file():
        raise FileNotFoundError(f"{results}: no results store (give a run folder or a .sqlite file)")
    return results


def metric_values(results: str | Path) -> dict[str, dict[str, float]]:
    """metric -> item_id -> value (scored rows only), from a run folder or a store."""
    values: dict[str, dict[str, float]] = defaultdict(dict)
    with ResultsStore(store_path(results)) as store:
        for s in store.scores():
            if s.value is not None and math.isfinite(s.value):
                values[s.metric][s.item_id] = float(s.value)
    return dict(values)


@dataclass
class Agreement:
    metric: str
    aspect: str
    tau: float
    ci95: tuple[float, float]
    n: int


def agreement(ratings: dict[str, dict[str, float]], values: dict[str, dict[str, float]], samples: int = 1000) -> list[Agreement]:
    out = []
    aspects = [a for a in ASPECTS if a in ratings] + sorted(a for a in ratings if a not in ASPECTS)
    for metric in sorted(values):
        for aspect in aspects:
            items = sorted(set(ratings[aspect]) & set(values[metric]))
            x = [values[metric][i] for i in items]
            y = [ratings[aspect][i] for i in items]
            tau = kendall_tau(x, y) if len(items) >= 2 else float("nan")
            out.append(Agreement(metric, aspect, tau, kendall_tau_ci(x, y, samples=samples), len(items)))
    return out


def format_agreement(rows: list[Agreement]) -> str:
    aspects = list(dict.fromkeys(r.aspect for r in rows))
    lines = [f"{'metric':<14}" + "".join(f"{a:>28}" for a in aspects),
             f"{'':<14}" + "".join(f"{'tau [95% CI] (n)':>28}" for _ in aspects)]
    by = {(r.metric, r.aspect): r for r in rows}
    for metric in dict.fromkeys(r.metric for r in rows):
        cells = []
        for a in aspects:
            r = by[(metric, a)]
            cells.append(f"{_n(r.tau)} [{_n(r.ci95[0])}, {_n(r.ci95[1])}] ({r.n})" if r.n else "—")
        lines.append(f"{metric:<14}" + "".join(f"{c:>28}" for c in cells))
    lines.append("Kendall tau-b between each metric and the mean human rating per item; 95% bootstrap interval over items.")
    return "\n".join(lines)


def _n(v: float) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.3f}"


def plot_agreement(rows: list[Agreement], path: str | Path) -> Path | None:
    rows = [r for r in rows if r.n and math.isfinite(r.tau)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(r.metric for r in rows))
    aspects = list(dict.fromkeys(r.aspect for r in rows))
    width = 0.8 / len(aspects)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(metrics) + 2), 3.6), dpi=100)
    by = {(r.metric, r.aspect): r for r in rows}
    for k, aspect in enumerate(aspects):
        xs, taus, errs = [], [], [[], []]
        for m, metric in enumerate(metrics):
            r = by.get((metric, aspect))
            if r is None:
                continue
            xs.append(m + k * width)
            taus.append(r.tau)
            lo, hi = r.ci95
            errs[0].append(max(0.0, r.tau - lo) if math.isfinite(lo) else 0.0)
            errs[1].append(max(0.0, hi - r.tau) if math.isfinite(hi) else 0.0)
        ax.bar(xs, taus, width, yerr=errs, capsize=2, label=aspect)
    ax.set_xticks([m + width * (len(aspects) - 1) / 2 for m in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=30, ha="right")
    ax.axhline(0.0, color="#444", linewidth=0.8)
    ax.set_ylabel("Kendall tau with humans")
    ax.set_title("Agreement with human ratings (95% bootstrap CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
