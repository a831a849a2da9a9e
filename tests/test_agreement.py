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


def _values(rng, items):
    human = {i: int(rng.integers(0, 5)) for i in items}
    return human, {i: human[i] + rng.normal(scale=1.5) for i in items}


def test_plain_and_wide_score_files_match_scipy(tmp_path, capsys):
    """image,rater,aspect,score with image paths (as public studies release them), and one column per aspect."""
    from likeness.bench.agreement import agreement, read_human

    rng = np.random.default_rng(1)
    items = [f"ann-0-t{k:04d}-s1" for k in range(25)]
    human, judge = _values(rng, items)
    _store(tmp_path / "results.sqlite", {"judge-identity": judge})
    plain = tmp_path / "plain.csv"
    with open(plain, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["image", "rater", "aspect", "score"])
        for i in items:
            w.writerow([f"images/ann/{i}.png", "r1", "identity", human[i] - 1])
            w.writerow([f"images/ann/{i}.png", "r2", "identity", human[i] + 1])  # mean = human[i]
    wide = tmp_path / "wide.csv"
    with open(wide, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["image_id", "rater", "identity", "prompt"])
        for i in items:
            w.writerow([i, "r1", human[i], ""])  # an empty cell is no rating
    expected = stats.kendalltau([judge[i] for i in items], [human[i] for i in items]).statistic
    for path, form in ((plain, "scores"), (wide, "wide")):
        ratings = read_human(path)
        assert ratings.form == form and ratings.scores["identity"][items[3]] == human[items[3]]
        (row,) = agreement(ratings, {"judge-identity": judge}, samples=100)
        assert (row.aspect, row.n) == ("identity", 25) and row.tau == pytest.approx(expected, abs=1e-12)
        assert row.ci95[0] <= expected <= row.ci95[1]
    assert main(["agreement", "--ratings", str(plain), "--results", str(tmp_path), "--bootstrap", "100"]) == 0
    assert "judge-identity" in capsys.readouterr().out


def test_pairwise_preferences_accuracy_and_tau_on_win_rates(tmp_path, capsys):
    from likeness.bench.agreement import RatingsError, agreement, read_human, win_rates

    rng = np.random.default_rng(2)
    items = [f"i{k}" for k in range(12)]
    human, metric = _values(rng, items)
    metric[items[1]] = metric[items[0]]  # a metric tie
    prefs = tmp_path / "pairs.csv"
    judged = []
    with open(prefs, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["image_a", "image_b", "winner", "aspect", "rater"])
        for k in range(40):
            a, b = rng.choice(items, size=2, replace=False)
            winner = "tie" if human[a] == human[b] else ("a" if human[a] > human[b] else b)  # by letter or by id
            w.writerow([a, b, winner, "overall", f"r{k % 3}"])
            judged.append((a, b, "tie" if winner == "tie" else a if winner == "a" else b))
        w.writerow([items[0], items[1], "a", "overall", "r9"])  # the pair the metric ties: counts 1/2
        judged.append((items[0], items[1], items[0]))
    ratings = read_human(prefs)
    assert ratings.form == "pairwise" and len(ratings.preferences) == 41
    (row,) = agreement(ratings, {"m": metric}, samples=100)
    # Pairwise accuracy computed independently: winner ranked higher = 1, a metric tie = 1/2, human ties left out.
    hits = [1.0 if metric[w] > metric[b if w == a else a] else 0.5 if metric[a] == metric[b] else 0.0
            for a, b, w in judged if w != "tie"]
    assert row.pairs == len(hits) and row.accuracy == pytest.approx(np.mean(hits), abs=1e-12)
    assert row.accuracy_ci95[0] <= row.accuracy <= row.accuracy_ci95[1]
    rates = win_rates(ratings.preferences)["overall"]
    shown = sorted(rates)
    assert row.n == len(shown) and row.tau == pytest.approx(
        stats.kendalltau([metric[i] for i in shown], [rates[i] for i in shown]).statistic, abs=1e-12)
    assert main(["agreement", "--ratings", str(prefs), "--results", str(_store_path(tmp_path, metric)),
                 "--csv", str(tmp_path / "p.csv"), "--bootstrap", "100"]) == 0
    assert "pairs agreeing" in capsys.readouterr().out
    (out_row,) = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert float(out_row["pairs_agreeing"]) == pytest.approx(row.accuracy) and int(out_row["pairs"]) == row.pairs
    bad = tmp_path / "badpairs.csv"
    bad.write_text("image_a,image_b,winner\nx,y,z\n")
    with pytest.raises(RatingsError, match="badpairs.csv: row 2: winner 'z'"):
        read_human(bad)


def _store_path(tmp_path, metric):
    path = tmp_path / "pairs.sqlite"
    _store(path, {"m": metric})
    return path
