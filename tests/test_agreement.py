"""Human agreement (Kendall tau vs scipy), bootstrap intervals, paired tests, `likeness agreement` / `compare`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from likeness.bench.store import ResultsStore
from likeness.cli import main
from likeness.metrics.base import Score
from likeness.metrics.stats import bootstrap_ci, kendall_tau, paired_test


def test_kendall_tau_equals_scipy_with_and_without_ties():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=40), rng.normal(size=40)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    xt, yt = rng.integers(0, 4, size=50), rng.integers(1, 6, size=50)  # many ties, like 1-5 ratings
    assert kendall_tau(xt, yt) == pytest.approx(stats.kendalltau(xt, yt, variant="b").statistic, abs=1e-12)
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0 and kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert np.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))  # a constant has no order


def test_bootstrap_ci_and_paired_test():
    values = np.linspace(0, 1, 101)
    lo, hi = bootstrap_ci(values)
    assert lo < 0.5 < hi and bootstrap_ci(values) == (lo, hi)  # seeded: same interval every time
    assert hi - lo == pytest.approx(2 * 1.96 * values.std() / np.sqrt(101), rel=0.15)
    assert np.isnan(bootstrap_ci([0.3])[0])
    # Exact sign-flip test: 4 positive differences -> only the all-positive and all-negative flips are as extreme.
    result = paired_test([1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0, 1.5])
    assert result["n"] == 4 and result["mean_diff"] == pytest.approx(1.75) and result["p_value"] == pytest.approx(2 / 16)
    assert paired_test([1, 2, 3], [1, 2, 3])["p_value"] == 1.0


def _store(path, metric_values: dict[str, dict[str, float | None]]):
    with ResultsStore(path) as store:
        store.put([Score(item, metric, value, "ok" if value is not None else "no_detectables", None, {"name": f"{metric}/v1"}, {})
                   for metric, values in metric_values.items() for item, value in values.items()])


def test_agreement_cli_matches_scipy_and_writes_plot_and_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    items = [f"p-0-t{k:04d}-s1" for k in range(30)]
    human = {i: int(rng.integers(1, 6)) for i in items}
    goa = {i: human[i] / 5 + rng.normal(scale=0.3) for i in items}
    goa[items[0]] = None  # excluded (no detectables): not in the tau
    ips = {i: float(rng.random()) for i in items}
    _store(tmp_path / "results.sqlite", {"goa": goa, "ips": ips})
    ratings = tmp_path / "ratings.csv"
    with open(ratings, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["item_id", "aspect", "rating", "rater"])
        for i in items:
            w.writerow([i, "overall", human[i], "r1"])
            w.writerow([i, "overall", human[i], "r2"])  # a second rater, same judgement: the mean is unchanged
            w.writerow([i, "objects", 6 - human[i], "r1"])
    assert main(["agreement", "--ratings", str(ratings), "--results", str(tmp_path), "--plot", str(tmp_path / "a.png"),
                 "--csv", str(tmp_path / "a.csv"), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "objects" in out and "goa" in out
    rows = {(r["metric"], r["aspect"]): r for r in csv.DictReader(open(tmp_path / "a.csv"))}
    kept = items[1:]
    expected = stats.kendalltau([goa[i] for i in kept], [human[i] for i in kept]).statistic
    assert float(rows[("goa", "overall")]["tau"]) == pytest.approx(expected, abs=1e-12)
    assert int(rows[("goa", "overall")]["n"]) == 29 and float(rows[("goa", "objects")]["tau"]) == pytest.approx(-expected, abs=1e-12)
    assert float(rows[("goa", "overall")]["ci_low"]) <= expected <= float(rows[("goa", "overall")]["ci_high"])
    assert (tmp_path / "a.png").stat().st_size > 1000
    # JSON lines work too; a bad file is a clear error naming it.
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps({"item_id": i, "aspect": "relations", "rating": human[i]}) for i in items))
    assert main(["agreement", "--ratings", str(jsonl), "--results", str(tmp_path / "results.sqlite")]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,aspect,rating\nx,overall,great\n")
    assert main(["agreement", "--ratings", str(bad), "--results", str(tmp_path)]) == 2
    assert "bad.csv: row 2: rating 'great' is not a number" in capsys.readouterr().err


def test_compare_cli_paired_on_shared_items(tmp_path, capsys):
    items = [f"i{k}" for k in range(8)]
    a = {i: 0.5 + 0.01 * k for k, i in enumerate(items)}
    b = {i: a[i] - 0.1 for i in items[:6]}  # B scored 6 of the items, each 0.1 lower
    _store(tmp_path / "a.sqlite", {"ips": a})
    _store(tmp_path / "b.sqlite", {"ips": b})
    assert main(["compare", f"ti={tmp_path / 'a.sqlite'}", f"lora={tmp_path / 'b.sqlite'}", "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "ti - lora" in out
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    pair = next(r for r in rows if r["kind"] == "paired_diff")
    assert int(pair["n"]) == 6 and float(pair["value"]) == pytest.approx(0.1)
    assert float(pair["p_value"]) == pytest.approx(2 / 64)  # every flip but all-+ and all-- is less extreme
