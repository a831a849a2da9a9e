"""Bootstrap intervals and paired tests drawn in blocks: the same numbers as one (samples, n) draw, memory flat in n."""

import tracemalloc

import numpy as np
import pytest

from likeness.metrics import stats
from likeness.metrics.stats import bootstrap_ci, paired_test


def _one_block_ci(values, samples=2000, seed=0, level=0.95):
    """The interval as computed before blocks: one (samples, n) index matrix."""
    values = np.asarray(values, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, values.size, size=(samples, values.size))
    means = values[draws].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _one_block_p(d, samples=10000, seed=0):
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(samples, d.size))
    return float(np.mean(np.abs((signs * d).mean(axis=1)) >= abs(d.mean()) - 1e-12))


@pytest.mark.parametrize("chunk", [stats.CHUNK_ELEMENTS, 1000, 1])
def test_blocks_give_the_numbers_of_one_draw(monkeypatch, chunk):
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", chunk)  # 1000 over 333 values: 3 rows a block; 1: one row a block
    rng = np.random.default_rng(7)
    a, b = rng.random(333), rng.random(333) * 0.9  # odd n: blocks end mid-way through a 64-bit draw
    # Same stream, same order, same per-row computation: equal, not close.
    assert bootstrap_ci(a) == _one_block_ci(a)
    assert bootstrap_ci(a, samples=101, seed=3) == _one_block_ci(a, samples=101, seed=3)
    test = paired_test(a, b, samples=2000)
    assert test["p_value"] == _one_block_p(a - b, samples=2000)
    assert test["ci95"] == list(_one_block_ci(a - b))
    small = paired_test(a[:10], b[:10])  # exact sign-flip enumeration below 17 items: unchanged
    assert small["n"] == 10 and 0 < small["p_value"] <= 1


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_number_of_values(monkeypatch):
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 1 << 16)  # small blocks keep the test fast; the bound scales with it
    rng = np.random.default_rng(0)
    small, large = rng.random(2_000), rng.random(20_000)
    peaks = {n: _peak(lambda v=v: (bootstrap_ci(v, samples=500), paired_test(v, v[::-1], samples=500)))
             for n, v in ((2_000, small), (20_000, large))}
    # One (500, 20000) block would be 80 MB of indices and 80 MB of gathered values; blocks hold ~0.5 MB each,
    # plus O(n) copies of the values themselves (20,000 x 8 bytes a copy).
    assert peaks[20_000] < 4 * 2**20, peaks
    assert peaks[20_000] < 2 * peaks[2_000] + 1 * 2**20, peaks
