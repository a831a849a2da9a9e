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
    # The metrics the run asked for, in Stellar's order; none it did not ask for (no CP-CLIP, TI-CLIP, PickScore).
    header = ["Method", "IPS", "APS", "SIS", "GOA", "RFS", "CLIP-T", "CLIP-I", "Aesthetic", "HPSv2", "ImageReward", "images"]
    assert row[:len(header)] == header
    values = dict(zip(header, row[len(header):]))
    assert values["IPS"] == f"{results.totals['IPS']:.3f}" and values["GOA"] == f"{results.totals['GOA']:.3f}"
    assert values["CLIP-T"] == f"{results.totals['CLIP-T']:.3f}" and "—" not in values.values()
    # HPSv2 and ImageReward from the tiny checkpoints in their published layouts: columns filled.
    assert values["HPSv2"] == f"{results.totals['HPSV2']:.3f}" and values["ImageReward"] == f"{results.totals['IMAGEREWARD']:.3f}"
    assert "hpsv2/v1+likeness/tiny-hps" in page.read_text() and "imagereward/v1+likeness/tiny-imagereward" in page.read_text()
    # Confidence intervals and the exploitation penalty, with how many images were zeroed.
    intervals = parsed.tables["intervals"]
    assert "95% CI (bootstrap over items)" in intervals and "GOA" in intervals and "CLIP-T" in intervals
    penalty = parsed.tables["penalty"]
    assert penalty[:6] == ["metric", "raw", "penalised", "zeroed", "unjudged", "std(CLIP-N)"] and penalty[6] == "IPS"
    assert re.fullmatch(r"\d of 4", penalty[9])
    assert "goa/v2+likeness/tiny-owlvit" in html and "rfs/open-vqa-v1+likeness/tiny-blip-vqa" in html
    import csv

    exported = {r["metric"]: r for r in csv.DictReader(open(page.parent / "leaderboard.csv"))}
    assert float(exported["GOA"]["value"]) == pytest.approx(results.totals["GOA"])
    assert float(exported["GOA"]["ci_low"]) <= results.totals["GOA"] <= float(exported["GOA"]["ci_high"])
    assert exported["IPS-PENALISED"]["zeroed"] != ""
    assert "ips/v1+dlib" in html and "face protocol" in html  # the protocol is printed
    assert (page.parent / "categories.png").stat().st_size > 1000 and "categories" in parsed.tables
    # The first page shows the plot and links to the identity's image page: 1 reference + 4 generated thumbnails.
    assert parsed.images == ["categories.png"] and "pages" in parsed.tables
    grid = page.parent / "pages" / "astronaut.html"
    assert "href='pages/astronaut.html'" in html
    parsed = _Collect()
    parsed.feed(grid.read_text())
    assert len(parsed.images) == 5 and all((grid.parent / src).resolve().is_file() for src in parsed.images)
    assert re.search(r"t0001: \{\} juggling[^<]*<br><b>IPS 0\.\d{3} · APS", grid.read_text())  # per-image scores below
    lines = text.splitlines()
    assert lines[1].split() == header[1:-1] and "—" not in lines[2].split()
    assert any(line.startswith("IPS with the exploitation penalty:") and "images zeroed" in line for line in lines)
    assert "IPS: ips/v1+dlib" in text and any(line.startswith("faces: dlib-") for line in lines)  # protocol printed


def test_report_cli_and_bad_run_folder(scored_run, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert cli_main(["report", str(scored_run), "--out", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    parsed = _Collect()
    parsed.feed((out / "pages" / "astronaut.html").read_text())
    assert all((out / "pages" / src).resolve().is_file() for src in parsed.images)  # links work from another folder
    assert cli_main(["report", str(tmp_path / "nothing")]) == 2
    assert "not a likeness run folder" in capsys.readouterr().err


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def chromium_load(page: Path, profile: Path) -> dict:
    """Open ``page`` (a copy of it beside it, with a probe script) in headless Chromium; after load: how many images
    decoded, how many there are, how many tables. The window is tall enough for lazy images of a test page."""
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(page.read_text().replace(
        "</body>",
        "<script>window.addEventListener('load',()=>{const b=document.body;b.setAttribute('data-images',"
        "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length);"
        "b.setAttribute('data-all',document.images.length);"
        "b.setAttribute('data-tables',document.querySelectorAll('table').length)})</script></body>"))
    try:
        dom = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,4000",
                              "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = {k: int(v) for k, v in re.findall(r'data-(images|all|tables)="(\d+)"', dom.stdout)}
    assert len(found) == 3, dom.stderr[-2000:]
    return found


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) not installed")
def test_report_renders_in_headless_chromium(scored_run, tmp_path):
    page, _ = build_report(scored_run)
    # leaderboard, intervals, penalty, categories, image pages (no failures in this run); the plot
    assert chromium_load(page, tmp_path / "profile") == {"images": 1, "all": 1, "tables": 5}
    # the identity's page: reference + 4 generated thumbnails, all decoded
    assert chromium_load(page.parent / "pages" / "astronaut.html", tmp_path / "profile") == {"images": 5, "all": 5, "tables": 0}
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1000,1400", page.as_uri()], capture_output=True, timeout=120)
    pixels = Image.open(shot).convert("L")
    assert pixels.getextrema()[0] < 100  # text and images drawn, not a blank page
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def _synthetic_run(folder: Path, people: int, prompts: int, **options) -> Path:
    """A run folder with noise images and stored scores (no model runs): benchmarks/report_scale.py's builder."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "report_scale.py"
    spec = importlib.util.spec_from_file_location("report_scale", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_synthetic_run(folder, people, prompts, side=32, **options)


def test_report_pages_thumbnails_written_once_and_linked(tmp_path, monkeypatch):
    import likeness.bench.report as report

    monkeypatch.setattr(report, "PER_PAGE", 3)  # 5 prompts: two pages per person
    run = _synthetic_run(tmp_path / "run", people=3, prompts=5)
    page, text = build_report(run)
    index = page.read_text()
    assert "<th>IPS</th><th>APS</th><th>SIS</th><th>images</th>" in index  # the three metrics asked for, no dashes
    pages = sorted((page.parent / "pages").glob("*.html"))
    assert [p.name for p in pages] == ["person_0000-2.html", "person_0000.html", "person_0001-2.html", "person_0001.html",
                                       "person_0002-2.html", "person_0002.html"]
    assert all(f"href='pages/{p.name}'" in index for p in pages)
    for p in pages:
        grid = p.read_text()
        parsed = _Collect()
        parsed.feed(grid)
        generated = re.findall(r"<img loading='lazy' src='([^']+)'", grid)
        assert len(generated) == (3 if "-2" not in p.name else 2) and len(parsed.images) == len(generated) + 1
        assert all((p.parent / src).resolve().is_file() for src in parsed.images)
        assert "href='../index.html'" in grid and grid.count("rel='next'") + grid.count("rel='prev'") >= 2
        for link in re.findall(r"<a href='(\.\./\.\./images/[^']+\.png)'>", grid):  # each thumbnail opens the full image
            assert (p.parent / link).resolve().is_file()
    thumbs = sorted((page.parent / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 15 and all(Image.open(t).format == "JPEG" and max(Image.open(t).size) <= 160 for t in thumbs)
    # A second report reuses every thumbnail; one whose image changed is made again.
    stamps = {t: t.stat().st_mtime_ns for t in thumbs}
    changed = run / "images" / "person_0001" / "person_0001-t0002-s0.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(changed)
    build_report(run)
    remade = [t for t in thumbs if t.stat().st_mtime_ns != stamps[t]]
    assert [t.name for t in remade] == ["person_0001-t0002-s0.jpg"]
    assert Image.open(remade[0]).convert("RGB").getpixel((5, 5))[0] > 200


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium) not installed")
def test_report_pages_load_in_headless_chromium(tmp_path, monkeypatch):
    import likeness.bench.report as report

    monkeypatch.setattr(report, "PER_PAGE", 3)
    run = _synthetic_run(tmp_path / "run", people=2, prompts=5)
    page, _ = build_report(run)
    # leaderboard, intervals, categories (its plot drawn), image pages
    assert chromium_load(page, tmp_path / "profile") == {"images": 1, "all": 1, "tables": 4}
    for grid in sorted((page.parent / "pages").glob("*.html")):
        loaded = chromium_load(grid, tmp_path / "profile")
        assert loaded["images"] == loaded["all"] == (4 if "-2" not in grid.name else 3), grid.name
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_leaderboard_shows_the_metrics_asked_for_not_thirteen_dashes(tmp_path):
    from likeness.bench.leaderboard import build_leaderboard

    runs = [_synthetic_run(tmp_path / m, people=1, prompts=2, metrics=("ips", "clip-t", "judge-overall"), method=m)
            for m in ("a", "b")]
    page, text = build_leaderboard(runs, tmp_path)
    lines = text.splitlines()
    assert lines[0].split() == ["method", "IPS", "CLIP-T", "JUDGE-OVERALL", "images", "failed"] and "—" not in text
    assert "<th>IPS</th><th>CLIP-T</th><th>Judge</th><th>images</th>" in page.read_text()
    _, summary = build_report(runs[0])
    assert summary.splitlines()[1].split() == ["IPS", "CLIP-T", "Judge"]


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


def test_a_full_disk_while_writing_the_report_is_a_message_and_the_results_stay(tmp_path, monkeypatch, capsys):
    """ENOSPC while the thumbnails are written: `likeness report` says what happened and how to finish, with exit
    code 1; the run's store is byte for byte what it was, and a report with space again succeeds."""
    import errno

    run = _synthetic_run(tmp_path / "run", people=2, prompts=2)
    before = (run / "results.sqlite").read_bytes()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as mp:
        mp.setattr(Image.Image, "save", full)
        assert cli_main(["report", str(run)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "results" in err and "run `likeness report` again" in err
    assert (run / "results.sqlite").read_bytes() == before
    assert cli_main(["report", str(run)]) == 0 and (run / "report" / "index.html").is_file()
