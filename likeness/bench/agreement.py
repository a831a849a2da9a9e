"""Human agreement: Kendall's tau between each metric and human ratings, as in Stellar's agreement table, and
pairwise accuracy for studies that release preferences. docs/judge.md describes every format.

Ratings file: CSV with a header, or JSON (a list of objects / JSON lines). Three forms, detected from the columns:

1. **Scores, long** (Stellar's table; the plain image, rater, aspect, score CSV most studies release): one row per
   judgement. Columns: the image (``item_id``, ``image``, ``image_id`` or ``item``), the rating (``rating`` or
   ``score``), optional ``aspect`` (default ``overall``) and ``rater``::

       image,rater,aspect,score
       astronaut-0-t0001-s123,r1,overall,4

2. **Scores, wide**: the image column, optional ``rater``, and one numeric column per aspect
   (``image,rater,overall,objects``).
3. **Pairwise preferences**: ``image_a``, ``image_b``, ``winner`` (``a``, ``b``, ``tie``, or the winning image's
   id), optional ``aspect`` and ``rater``: one row per judgement.

An image is named by its id in the results (the canonical ``<identity>-<photo>-<prompt>-s<seed>``, or a Stellar
``save_name``); a path or file name is reduced to its stem (``images/ann/ann-0-t0001-s1.png`` -> ``ann-0-t0001-s1``).
Aspects ``overall``, ``objects``, ``relations`` come first (other names are kept as they are). Ratings are any
number, higher = better; several raters of one (image, aspect) are averaged.

Per metric and aspect: Kendall tau-b over the images that have both a rating and a metric value, with a 95%
bootstrap interval over images. For preferences: pairwise accuracy, the fraction of (rater, pair) judgements with a
winner in which the metric ranks the winner higher (a metric tie counts one half), with a 95% bootstrap interval over
judgements; and tau-b between the metric and each image's human win rate ((wins + ties / 2) / comparisons).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from likeness.bench.store import ResultsStore
from likeness.metrics.stats import bootstrap_ci, kendall_tau, kendall_tau_ci

ASPECTS = ("overall", "objects", "relations")
IMAGE_COLUMNS = ("item_id", "image", "image_id", "item")
RATING_COLUMNS = ("rating", "score")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class RatingsError(ValueError):
    """A ratings file that cannot be used; the message names the file and the row."""


@dataclass
class Preference:
    aspect: str
    a: str
    b: str
    winner: str  # "a", "b" or "tie"
    rater: str = ""


@dataclass
class HumanRatings:
    """What a ratings file holds: mean scores (aspect -> image -> mean) and/or pairwise preferences."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    preferences: list[Preference] = field(default_factory=list)
    form: str = "scores"  # scores | wide | pairwise

    def aspects(self) -> list[str]:
        names = set(self.scores) | {p.aspect for p in self.preferences}
        return [a for a in ASPECTS if a in names] + sorted(a for a in names if a not in ASPECTS)


def image_key(value) -> str:
    """An image's id: a path or file name is reduced to its stem."""
    name = str(value).strip().replace("\\", "/").rsplit("/", 1)[-1]
    return Path(name).stem if name.lower().endswith(IMAGE_SUFFIXES) else name


def _rows(path: Path) -> tuple[list, int]:
    """The file's rows (dicts) and the number of the first data row (for messages)."""
    if not path.is_file():
        raise RatingsError(f"{path}: ratings file does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".json", ".jsonl"):
        try:
            rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise RatingsError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        return rows, 1
    return list(csv.DictReader(text.splitlines())), 2


def _number(path: Path, n: int, value) -> float:
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise RatingsError(f"{path}: row {n}: rating {value!r} is not a number") from None
    if not math.isfinite(rating):
        raise RatingsError(f"{path}: row {n}: rating {value!r} is not finite")
    return rating


def read_human(path: str | Path) -> HumanRatings:
    """Any of the three forms (see the module docstring), detected from the columns of the first row."""
    path = Path(path)
    rows, first = _rows(path)
    if not rows:
        raise RatingsError(f"{path}: no ratings")
    columns = {str(k).strip().lower() for k in rows[0]} if isinstance(rows[0], dict) else set()
    if {"image_a", "image_b"} <= columns:
        return _read_pairs(path, rows, first)
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    rating_col = next((c for c in RATING_COLUMNS if c in columns), None)
    wide = [c for c in columns if c not in (image_col, "rater", "aspect")] if image_col and not rating_col else []
    if image_col is None or (rating_col is None and not wide):
        raise RatingsError(f"{path}: row {first} needs an image column ({' / '.join(IMAGE_COLUMNS)}) and a rating "
                           f"({' / '.join(RATING_COLUMNS)}) or one column per aspect, or image_a, image_b, winner "
                           f"(got columns {sorted(columns)})")
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for n, raw in enumerate(rows, start=first):
        row = {str(k).strip().lower(): v for k, v in raw.items()} if isinstance(raw, dict) else {}
        if not row.get(image_col):
            raise RatingsError(f"{path}: row {n} has no {image_col} (got {raw!r})")
        if wide:
            for aspect in wide:
                if row.get(aspect) not in (None, ""):
                    sums[aspect][image_key(row[image_col])].append(_number(path, n, row[aspect]))
        else:
            if row.get(rating_col) in (None, ""):
                raise RatingsError(f"{path}: row {n} has no {rating_col} (got {raw!r})")
            aspect = str(row.get("aspect") or "overall").strip().lower()
            sums[aspect][image_key(row[image_col])].append(_number(path, n, row[rating_col]))
    if not sums:
        raise RatingsError(f"{path}: no ratings")
    scores = {aspect: {item: float(np.mean(v)) for item, v in items.items()} for aspect, items in sums.items()}
    return HumanRatings(scores=scores, form="wide" if wide else "scores")


def _read_pairs(path: Path, rows: list, first: int) -> HumanRatings:
    prefs = []
    for n, raw in enumerate(rows, start=first):
        row = {str(k).strip().lower(): v for k, v in raw.items()} if isinstance(raw, dict) else {}
        a, b = image_key(row.get("image_a") or ""), image_key(row.get("image_b") or "")
        winner = str(row.get("winner") or "").strip()
        if not a or not b or not winner:
            raise RatingsError(f"{path}: row {n} needs image_a, image_b and winner (got {raw!r})")
        choice = {"a": "a", "image_a": "a", "b": "b", "image_b": "b", "tie": "tie", "=": "tie", "none": "tie"}.get(winner.lower())
        if choice is None:
            choice = "a" if image_key(winner) == a else "b" if image_key(winner) == b else None
        if choice is None:
            raise RatingsError(f"{path}: row {n}: winner {winner!r} is neither a, b, tie nor one of the two images")
        prefs.append(Preference(str(row.get("aspect") or "overall").strip().lower(), a, b, choice, str(row.get("rater") or "")))
    return HumanRatings(preferences=prefs, form="pairwise")


def read_ratings(path: str | Path) -> dict[str, dict[str, float]]:
    """aspect -> item_id -> mean rating (score forms; a preferences file gives each image's win rate)."""
    human = read_human(path)
    return human.scores or win_rates(human.preferences)


def win_rates(preferences: list[Preference]) -> dict[str, dict[str, float]]:
    """aspect -> image -> (wins + ties / 2) / comparisons: the per-image score derived from preferences."""
    won: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in preferences:
        share = 0.5 if p.winner == "tie" else 1.0 if p.winner == "a" else 0.0
        won[p.aspect][p.a].append(share)
        won[p.aspect][p.b].append(1.0 - share)
    return {aspect: {item: float(np.mean(v)) for item, v in items.items()} for aspect, items in won.items()}


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
    # Pairwise preferences only: the fraction of judged pairs the metric orders as humans did, its interval, pairs.
    accuracy: float | None = None
    accuracy_ci95: tuple[float, float] | None = None
    pairs: int = 0


def pairwise_accuracy(preferences: list[Preference], values: dict[str, float]) -> tuple[float, tuple[float, float], int]:
    """Over judgements with a winner whose two images have metric values: 1 when the metric ranks the winner higher,
    1/2 on a metric tie, 0 otherwise; the mean, its 95% bootstrap interval over judgements, and their count."""
    hits = []
    for p in preferences:
        if p.winner == "tie" or p.a not in values or p.b not in values:
            continue
        diff = values[p.a] - values[p.b] if p.winner == "a" else values[p.b] - values[p.a]
        hits.append(1.0 if diff > 0 else 0.5 if diff == 0 else 0.0)
    if not hits:
        return float("nan"), (float("nan"), float("nan")), 0
    return float(np.mean(hits)), bootstrap_ci(hits), len(hits)


def agreement(ratings, values: dict[str, dict[str, float]], samples: int = 1000) -> list[Agreement]:
    """Per metric and aspect. ``ratings``: aspect -> item -> mean rating, or :class:`HumanRatings` (preferences add
    pairwise accuracy; their tau is on the derived win rates)."""
    human = ratings if isinstance(ratings, HumanRatings) else HumanRatings(scores=ratings)
    scores = human.scores or win_rates(human.preferences)
    by_aspect: dict[str, list[Preference]] = defaultdict(list)
    for p in human.preferences:
        by_aspect[p.aspect].append(p)
    out = []
    for metric in sorted(values):
        for aspect in human.aspects():
            items = sorted(set(scores.get(aspect, {})) & set(values[metric]))
            x = [values[metric][i] for i in items]
            y = [scores[aspect][i] for i in items]
            tau = kendall_tau(x, y) if len(items) >= 2 else float("nan")
            row = Agreement(metric, aspect, tau, kendall_tau_ci(x, y, samples=samples), len(items))
            if by_aspect.get(aspect):
                row.accuracy, row.accuracy_ci95, row.pairs = pairwise_accuracy(by_aspect[aspect], values[metric])
            out.append(row)
    return out


def format_agreement(rows: list[Agreement]) -> str:
    aspects = list(dict.fromkeys(r.aspect for r in rows))
    pairwise = any(r.pairs for r in rows)
    width = max([14] + [len(r.metric) + 1 for r in rows])
    cells_per = [f"{'tau [95% CI] (n)':>28}"] + ([f"{'pairs agreeing [95% CI] (n)':>30}"] if pairwise else [])
    lines = [f"{'metric':<{width}}" + "".join(f"{a:>{28 + (30 if pairwise else 0)}}" for a in aspects),
             f"{'':<{width}}" + "".join("".join(cells_per) for _ in aspects)]
    by = {(r.metric, r.aspect): r for r in rows}
    for metric in dict.fromkeys(r.metric for r in rows):
        cells = []
        for a in aspects:
            r = by[(metric, a)]
            cells.append(f"{_n(r.tau)} [{_n(r.ci95[0])}, {_n(r.ci95[1])}] ({r.n})" if r.n else "—")
            if pairwise:
                lo, hi = r.accuracy_ci95 or (float("nan"), float("nan"))
                cells[-1] = f"{cells[-1]:>28}" + (f"{_n(r.accuracy)} [{_n(lo)}, {_n(hi)}] ({r.pairs})" if r.pairs else "—").rjust(30)
        lines.append(f"{metric:<{width}}" + "".join(c if pairwise else f"{c:>28}" for c in cells))
    lines.append("Kendall tau-b between each metric and the mean human rating per item; 95% bootstrap interval over items.")
    if pairwise:
        lines.append("Preferences: tau against each image's human win rate; pairs agreeing = share of judged pairs (ties "
                     "left out) the metric orders as the rater did, a metric tie counting 1/2; interval over judgements.")
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
