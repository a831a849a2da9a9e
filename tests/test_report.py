"""The HTML report of a bench run: leaderboard, protocol, plots, image grids; rendered in Chromium when present."""

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench_helpers import one_torch_thread, small_config  # noqa: F401 (autouse fixture)
from likeness.bench.report import build_report, read_results
from likeness.bench.runner import run_bench
from likeness.cli import main as cli_main
from likeness.methods.base import Personalized

CHROMIUM = Path("/usr/bin/chromium")


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables, self.cells = [], {}, []
        self._table = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []

    def handle_data(self, data):
        if self._table and data.strip():
            self.tables[self._table].append(data.strip())

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """A run where one item's "generated" image is the reference photo itself (a real face, IPS near 1)
    and the rest are tiny-model noise (no face, IPS 0), scored with the real dlib metrics."""
    run = tmp_path_factory.mktemp("report") / "run"
    real = Personalized.generate

    def copy_reference_for_juggling(self, prompts, seeds, **kw):
        if "juggling" in prompts[0]:
            return [Image.open(run / "identities" / "astronaut" / "0.png").convert("RGB").resize((256, 256))]
        return real(self, prompts, seeds, **kw)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the autouse one-thread fixture applies
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Personalized, "generate", copy_reference_for_juggling)
        # Text-image metrics on the tiny vision-language models, chosen through the environment variables.
        for env, model in [("LIKENESS_CLIP_MODEL", "likeness/tiny-clip"), ("LIKENESS_OWLVIT_MODEL", "likeness/tiny-owlvit"),
                           ("LIKENESS_VLM_MODEL", "likeness/tiny-blip-vqa"), ("LIKENESS_AESTHETIC_CLIP_MODEL", "likeness/tiny-clip"),
                           ("LIKENESS_AESTHETIC_MODEL", "likeness/tiny-aesthetic"), ("LIKENESS_HPS_MODEL", "likeness/tiny-hps"),
                           ("LIKENESS_IMAGEREWARD_MODEL", "likeness/tiny-imagereward"), ("HF_HUB_OFFLINE", "1")]:
            mp.setenv(env, model)
        metrics = ["ips", "sis", "aps", "clip-t", "clip-i", "clip-n", "goa", "rfs", "aesthetic", "hpsv2", "imagereward"]
        run_bench(small_config(prompt_limit=4, metrics=metrics), run, progress=False)
    torch.set_num_threads(threads)
    return run


def test_report_shows_leaderboard_protocol_plots_and_grids(scored_run):
    page, text = build_report(scored_run)
    results = read_results(scored_run)
    ips = {i["prompt_id"]: i["scores"]["IPS"] for i in results.items}
    assert ips["t0001"][0] > 0.5 and ips["t0001"][1] == "ok"  # the copied photo: same person
    assert all(ips[p] == (0.0, "no_face") for p in ("t0000", "t0002", "t0003"))
    assert results.totals["IPS"] == pytest.approx(ips["t0001"][0] / 4)
    goa = [i["scores"]["GOA"] for i in results.items]
    assert all(status == "ok" and 0 <= value <= 1 for value, status in goa)  # the open prompts all have detectables
    assert results.totals["GOA"] == pytest.approx(sum(v for v, _ in goa) / 4)
    assert results.totals["RFS"] is not None and results.totals["CP-CLIP"] is None and results.totals["TI-CLIP"] is None

    html = page.read_text()
    parsed = _Collect()
    parsed.feed(html)
    row = parsed.tables["leaderboard"]
    header = ["Method", "IPS", "APS", "SIS", "GOA", "RFS", "CLIP-T", "CLIP-I", "CP-CLIP", "TI-CLIP", "PickScore", "Aesthetic",
              "HPSv2", "ImageReward", "images"]
    assert row[:len(header)] == header
    values = dict(zip(header, row[len(header):]))
    assert values["IPS"] == f"{results.totals['IPS']:.3f}" and values["GOA"] == f"{results.totals['GOA']:.3f}"
    assert values["CLIP-T"] == f"{results.totals['CLIP-T']:.3f}" and values["CP-CLIP"] == values["PickScore"] == "—"
    # HPSv2 and ImageReward from the tiny checkpoints in their published layouts: columns filled.
    assert values["HPSv2"] == f"{results.totals['HPSV2']:.3f}" and values["ImageReward"] == f"{results.totals['IMAGEREWARD']:.3f}"
    assert "hpsv2/v1+likeness/tiny-hps" in page.read_text() and "imagereward/v1+likeness/tiny-imagereward" in page.read_text()
    # Confidence intervals and the exploitation penalty, with how many images were zeroed.
    intervals = parsed.tables["intervals"]
    assert "95% CI (bootstrap over items)" in intervals and "GOA" in intervals and "CLIP-T" in intervals
    penalty = parsed.tables["penalty"]
    assert penalty[:6] == ["metric", "raw", "penalised", "zeroed", "unjudged", "std(CLIP-N)"] and penalty[6] == "IPS"
    assert re.fullmatch(r"\d of 4", penalty[9])
    assert "goa/v1+likeness/tiny-owlvit" in html and "rfs/open-vqa-v1+likeness/tiny-blip-vqa" in html
    import csv

    exported = {r["metric"]: r for r in csv.DictReader(open(page.parent / "leaderboard.csv"))}
    assert float(exported["GOA"]["value"]) == pytest.approx(results.totals["GOA"])
    assert float(exported["GOA"]["ci_low"]) <= results.totals["GOA"] <= float(exported["GOA"]["ci_high"])
    assert exported["IPS-PENALISED"]["zeroed"] != ""
    assert "ips/v1+dlib" in html and "face protocol" in html  # the protocol is printed
    assert (page.parent / "categories.png").stat().st_size > 1000 and "categories" in parsed.tables
    # Every image the page shows exists: 1 plot + 1 reference thumbnail + 4 generated images.
    assert len(parsed.images) == 6
    assert all((page.parent / src).resolve().is_file() for src in parsed.images)
    assert re.search(r"t0001: \{\} juggling[^<]*<br><b>IPS 0\.\d{3} · APS", html)  # per-image scores below
    lines = text.splitlines()
    assert lines[1].split() == header[1:-1] and lines[2].split()[8:10] == ["—", "—"]  # CP-CLIP, TI-CLIP
    assert any(line.startswith("IPS with the exploitation penalty:") and "images zeroed" in line for line in lines)
    assert "IPS: ips/v1+dlib" in text and any(line.startswith("faces: dlib-") for line in lines)  # protocol printed


def test_report_cli_and_bad_run_folder(scored_run, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert cli_main(["report", str(scored_run), "--out", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    parsed = _Collect()
    parsed.feed((out / "index.html").read_text())
    assert all((out / src).resolve().is_file() for src in parsed.images)  # links work from another folder
    assert cli_main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a likeness run folder" in capsys.readouterr().err


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) not installed")
def test_report_renders_in_headless_chromium(scored_run, tmp_path):
    page, _ = build_report(scored_run)
    # A copy of the page that records, after load, how many images decoded and how many tables exist.
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace(
        "</body>",
        "<script>window.addEventListener('load',()=>{document.body.setAttribute('data-images',"
        "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length);"
        "document.body.setAttribute('data-tables',document.querySelectorAll('table').length)})</script></body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([str(CHROMIUM), *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert 'data-images="6"' in dom.stdout, dom.stderr[-2000:]
    assert 'data-tables="4"' in dom.stdout  # leaderboard, intervals, penalty, categories (no failures in this run)
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = Image.open(shot).convert("L")
    assert pixels.getextrema()[0] < 100  # text and images drawn, not a blank page
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_agreement_table_equals_scipy(tmp_path):
    """The report's agreement section: per metric and aspect, Kendall tau-b with its interval, equal to scipy."""
    import numpy as np
    from scipy import stats

    from likeness.bench.report import RunResults, agreement_table

    rng = np.random.default_rng(4)
    ids = [f"ann-0-t{k:04d}-s1" for k in range(15)]
    human = {i: int(rng.integers(1, 6)) for i in ids}
    ips = {i: human[i] + float(rng.normal()) for i in ids}
    items = [{"item_id": i, "scores": {"IPS": (ips[i], "ok"), "GOA": (None, "no_detectables")}} for i in ids]
    results = RunResults(tmp_path, {}, items, {}, {})
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("image,rater,aspect,score\n" + "".join(f"{i}.png,r1,overall,{human[i]}\n" for i in ids))
    html_rows = "".join(agreement_table(results, ratings, samples=100))
    parsed = _Collect()
    parsed.feed(html_rows)
    cells = parsed.tables["agreement"]
    expected = stats.kendalltau([ips[i] for i in ids], [human[i] for i in ids]).statistic
    assert cells[:2] == ["metric", "overall: tau [95% CI] (n)"] and cells[2] == "IPS"
    assert re.fullmatch(rf"{expected:.3f} \[-?\d\.\d{{3}}, -?\d\.\d{{3}}\] \(15\)", cells[3])
    assert "GOA" not in cells  # a metric with no value on any rated image has no row


def test_report_cli_with_ratings(scored_run, tmp_path, capsys):
    results = read_results(scored_run)
    ratings = tmp_path / "prefs.csv"
    ids = [i["item_id"] for i in results.items]
    ratings.write_text("image_a,image_b,winner\n" + "".join(f"{a},{b},a\n" for a, b in zip(ids, ids[1:])))
    assert cli_main(["report", str(scored_run), "--out", str(tmp_path / "r"), "--ratings", str(ratings)]) == 0
    parsed = _Collect()
    parsed.feed((tmp_path / "r" / "index.html").read_text())
    assert "overall: pairs agreeing (n)" in parsed.tables["agreement"] and "IPS" in parsed.tables["agreement"]
    assert cli_main(["report", str(scored_run), "--ratings", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: ratings file does not exist" in capsys.readouterr().err
