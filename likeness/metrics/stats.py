"""Statistics a reader needs to trust a leaderboard: bootstrap intervals, paired tests, Kendall's tau.

Everything is seeded (default seed 0), so the same scores always print the same interval.

Resamples are drawn in blocks of rows (at most ``CHUNK_ELEMENTS`` draws at a time), so memory stays flat in
the number of values (a ``(2000, 20000)`` index matrix would be 320 MB, gathered values as much again). The
blocks consume the generator's stream in the same order as one ``(samples, n)`` draw would, and each
row's statistic is the same computation, so the numbers are those of the one-block version.
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
CHUNK_ELEMENTS = 1 << 20  # draws per block: 8 MB of int64 indices (+ as much of gathered values)


def _blocks(rows: int, n: int):
    """Row counts of consecutive blocks covering ``rows`` rows of ``n`` draws each, at most ``CHUNK_ELEMENTS``
    draws per block (at least one row)."""
    step = max(1, CHUNK_ELEMENTS // max(1, n))
    for start in range(0, rows, step):
        yield min(step, rows - start)


def bootstrap_ci(values, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                 statistic=np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over items (resampled with replacement). NaN when
    there are fewer than two values."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.concatenate([statistic(values[rng.integers(0, values.size, size=(rows, values.size))], axis=1)
                            for rows in _blocks(samples, values.size)])
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def paired_test(a, b, samples: int = 10000, seed: int = BOOTSTRAP_SEED) -> dict:
    """Two methods scored on the same items: mean difference a - b, its 95% bootstrap interval, and the
    two-sided p-value of a sign-flip permutation test (exact for n <= 16, Monte Carlo beyond)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = int(d.size)
    if n == 0:
        return {"n": 0, "mean_diff": float("nan"), "ci95": [float("nan")] * 2, "p_value": float("nan")}
    observed = abs(d.mean())
    if n <= 16:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        p = float(np.mean(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12))
    else:
        rng = np.random.default_rng(seed)
        extreme = sum(int(np.count_nonzero(np.abs((rng.choice([-1.0, 1.0], size=(rows, n)) * d).mean(axis=1))
                                           >= observed - 1e-12)) for rows in _blocks(samples, n))
        p = extreme / samples
    return {"n": n, "mean_diff": float(d.mean()), "ci95": list(bootstrap_ci(d, seed=seed)), "p_value": p}


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (ties in either variable corrected for), the statistic Stellar reports for human
    agreement. O(n^2): agreement studies have hundreds to a few thousand ratings."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size != y.size:
        raise ValueError(f"kendall_tau: {x.size} values vs {y.size}")
    n = x.size
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float(np.sum(dx * dy))
    pairs = n * (n - 1) / 2
    tied_x, tied_y = float(np.sum(dx == 0)), float(np.sum(dy == 0))
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return concordant_minus_discordant / denominator if denominator > 0 else float("nan")


def kendall_tau_ci(x, y, level: float = 0.95, samples: int = 1000, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Bootstrap interval of tau over rated items (pairs resampled together)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(samples):
        pick = rng.integers(0, x.size, size=x.size)
        t = kendall_tau(x[pick], y[pick])
        if np.isfinite(t):
            taus.append(t)
    if not taus:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(taus, alpha)), float(np.quantile(taus, 1 - alpha))
