"""A leaderboard a reader can trust: each method's mean with a 95% bootstrap interval over items, and for
every pair of methods a paired test on the items both scored (same identity, photo, prompt and seed, so the
same item id), so a reader sees which differences are real."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from likeness.bench.agreement import metric_values
from likeness.metrics.stats import bootstrap_ci, paired_test


def compare(runs: dict[str, str | Path]) -> dict:
    """``runs``: label -> run folder or store. Returns {"means": [...], "pairs": [...]}."""
    values = {label: metric_values(path) for label, path in runs.items()}
    metrics = sorted({m for v in values.values() for m in v})
    means, pairs = [], []
    labels = list(runs)
    for metric in metrics:
        for label in labels:
            v = values[label].get(metric, {})
            if v:
                data = list(v.values())
                lo, hi = bootstrap_ci(data)
                means.append({"metric": metric, "method": label, "mean": sum(data) / len(data), "ci_low": lo, "ci_high": hi, "n": len(data)})
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                va, vb = values[a].get(metric, {}), values[b].get(metric, {})
                shared = sorted(set(va) & set(vb))
                if not shared:
                    continue
                test = paired_test([va[k] for k in shared], [vb[k] for k in shared])
                pairs.append({"metric": metric, "a": a, "b": b, **test})
    return {"means": means, "pairs": pairs}


def format_comparison(result: dict) -> str:
    lines = [f"{'metric':<14} {'method':<20} {'mean':>8} {'95% CI':>19} {'n':>6}"]
    for m in result["means"]:
        lines.append(f"{m['metric']:<14} {m['method']:<20} {m['mean']:>8.3f} [{_n(m['ci_low'])}, {_n(m['ci_high'])}]".ljust(64)
                     + f" {m['n']:>6}")
    if result["pairs"]:
        lines.append("")
        lines.append(f"{'metric':<14} {'A - B':<32} {'diff':>8} {'95% CI':>19} {'p':>7} {'n':>6}")
        for p in result["pairs"]:
            lines.append(f"{p['metric']:<14} {(p['a'] + ' - ' + p['b'])[:32]:<32} {p['mean_diff']:>8.3f} "
                         f"[{_n(p['ci95'][0])}, {_n(p['ci95'][1])}] {p['p_value']:>7.4f} {p['n']:>6}")
        lines.append("paired on the items both methods scored; p: two-sided sign-flip permutation test of the mean difference.")
    return "\n".join(lines)


def write_csv(result: dict, path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        w.writerow(["kind", "metric", "method_a", "method_b", "value", "ci_low", "ci_high", "p_value", "n"])
        for m in result["means"]:
            w.writerow(["mean", m["metric"], m["method"], "", m["mean"], m["ci_low"], m["ci_high"], "", m["n"]])
        for p in result["pairs"]:
            w.writerow(["paired_diff", p["metric"], p["a"], p["b"], p["mean_diff"], *p["ci95"], p["p_value"], p["n"]])
    return path


def _n(v) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.3f}"
