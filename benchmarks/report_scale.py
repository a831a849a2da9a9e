"""The report of a Stellar-size run: 400 people x 50 prompts = 20,000 images.

Builds a synthetic run folder (run.json, results.sqlite with items and IPS/SIS/APS rows under real-size
protocol records, one PNG + sidecar per item, one reference photo per person; no model runs), then times
``likeness report`` on it twice: the first report writes every thumbnail, the second reuses them. Prints
the wall time, peak memory (RSS of this process), the size of index.html, of the largest image page and
of all pages together, the thumbnails' total size, and what a browser fetches to open the first page and
one image page. Images are small (``--side``, default 64 px) to keep the build fast; a thumbnail is at
most 160 px whatever the image size, so the pages a browser loads do not grow with it.

Also the statistics every summary computes at that scale: peak memory (tracemalloc) and time of a 95%
bootstrap interval (2,000 resamples) and a paired test (10,000 sign flips) over 4,000 and 20,000 values,
drawn in blocks (likeness.metrics.stats), against what one (samples, n) block would hold.

And one metric's summary as a run's end computes it (its rows read from a results store, mean, std, interval)
over 4,000 and 20,000 stored rows.

Run:  flock /tmp/likeness-heavy.lock python benchmarks/report_scale.py [--people 400 --prompts 50 --side 64]
      [--summaries-only]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ("animals", "objects", "scenes", "actions", "styles")


def make_synthetic_run(run_dir: Path, people: int, prompts: int, side: int = 64, seed: int = 0,
                       metrics: tuple[str, ...] = ("ips", "sis", "aps"), method: str = "textual-inversion") -> Path:
    """A run folder as ``likeness bench`` leaves it, with noise images: what ``likeness report`` reads."""
    from likeness.bench.plan import RunConfig, bind_run_folder
    from likeness.bench.runner import STORE_FILE, SUMMARY_KEY
    from likeness.bench.runstore import DONE, RunStore
    from likeness.data.names import name_key
    from likeness.metrics.base import Score
    from likeness.metrics.stats import bootstrap_ci

    rng = np.random.default_rng(seed)
    config = RunConfig(method=method, base_model="likeness/tiny-sd", identities="synthetic",
                       prompt_limit=prompts, resolution=side, metrics=list(metrics))
    bind_run_folder(run_dir, config)
    face = {"name": "dlib-hog-r128-cal/v1", "detector": "dlib HOG frontal face detector, upsample 1",
            "aligner": "dlib 5-point shape predictor, 150x150 chip, padding 0.25",
            "embedder": "dlib ResNet-34 128-d descriptor (face_recognition_models 0.3.0)",
            "no_face": "the image scores 0 and counts as no_face"}
    protocols = {m: {"name": f"{m}/v1+{face['name']}", "metric": m, "face": face,
                     "definition": f"{m.upper()}: synthetic benchmark rows with the size of a real protocol record; " * 3}
                 for m in metrics}
    store = RunStore(run_dir / STORE_FILE)
    values: dict[str, list[float]] = {m: [] for m in protocols}
    position = 0
    for p in range(people):
        identity = f"person_{p:04d}"
        key = name_key(identity)
        reference = run_dir / "identities" / key / "0.png"
        reference.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side * 2, side * 2, 3), dtype=np.uint8)).save(reference)
        folder = run_dir / "images" / key
        folder.mkdir(parents=True, exist_ok=True)
        items, rows = [], []
        for q in range(prompts):
            item_id = f"{key}-t{q:04d}-s0"
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{item_id}.png")
            category = CATEGORIES[q % len(CATEGORIES)]
            (folder / f"{item_id}.json").write_text(json.dumps(
                {"item_id": item_id, "identity": identity, "reference": str(reference), "prompt_id": f"t{q:04d}",
                 "prompt_template": f"{{}} in synthetic scene number {q}", "categories": [category]}), encoding="utf-8")
            items.append((item_id, position, identity, str(reference), f"t{q:04d}", q, DONE, 0, 1, 0.5, 0.0, 0.0))
            position += 1
            for metric, protocol in protocols.items():
                value = float(rng.random())
                values[metric].append(value)
                rows.append(Score(item_id, metric, value, "ok", 1, protocol, {"raw_cosine": value}))
        with store.db:
            store.db.executemany("INSERT INTO items(item_id, position, identity, reference, prompt_id, seed, status, rank,"
                                 " attempts, seconds, started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", items)
        store.put(rows)
    store.set_meta(SUMMARY_KEY, {m: {"metric": m, "value": float(np.mean(v)), "ci95": list(bootstrap_ci(v)),
                                     "count": len(v), "statuses": {"ok": len(v)}, "protocol": protocols[m]["name"]}
                                 for m, v in values.items()})
    store.close()
    return run_dir


def _size(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def _first_view(page: Path) -> int:
    """Bytes a browser fetches to open ``page``: the HTML and every image it shows (all, lazily or not)."""
    import re

    text = page.read_text(encoding="utf-8")
    images = [page.parent / src for src in re.findall(r"<img[^>]*src='([^']+)'", text)]
    return len(text.encode()) + _size(p for p in images if p.is_file())


def statistics_memory(sizes=(4_000, 20_000)) -> None:
    import tracemalloc

    from likeness.metrics.stats import BOOTSTRAP_SAMPLES, bootstrap_ci, paired_test

    rng = np.random.default_rng(0)
    for n in sizes:
        a, b = rng.random(n), rng.random(n)
        tracemalloc.start()
        started = time.perf_counter()
        bootstrap_ci(a)
        paired_test(a, b)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # one block: int64 indices + gathered float64 values (interval), float64 signs + products (paired test)
        one_block = max(BOOTSTRAP_SAMPLES * n * 16, 10_000 * n * 16)
        print(f"statistics over {n} values: bootstrap CI + paired test {seconds:.1f} s, peak {peak / 2**20:.1f} MiB "
              f"(as one block: {one_block / 2**20:.0f} MiB)")


def summary_memory(sizes=(4_000, 20_000)) -> None:
    """What a run's end (and ``evaluate`` / a resumed ``bench``) spends on one metric's summary: its rows read
    from a results store, then the flat mean / std and the bootstrap interval (likeness.metrics.base)."""
    import tracemalloc

    from likeness.bench.store import ResultsStore
    from likeness.metrics.base import Metric, Score

    class Rows(Metric):
        name = "clip-t"

    metric = Rows()
    rng = np.random.default_rng(1)
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp, ResultsStore(Path(tmp) / "results.sqlite") as store:
            store.put([Score(f"person_{i // 50:04d}-0-t{i % 50:04d}-s0", metric.name, float(v), "ok", None, metric.protocol,
                             {"raw_cosine": float(v)}) for i, v in enumerate(rng.random(n))])
            tracemalloc.start()
            started = time.perf_counter()
            summary = metric.summarize(store.scores(metric.name, metric.protocol["name"]))
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        print(f"summary of {n} stored rows (read + mean/std + 95% CI): {seconds:.1f} s, peak {peak / 2**20:.1f} MiB "
              f"(count {summary['count']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=400)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--side", type=int, default=64, help="generated image size in px (default: %(default)s)")
    parser.add_argument("--summaries-only", action="store_true", help="only the statistics and summary memory")
    args = parser.parse_args()
    from likeness.bench.report import build_report

    statistics_memory()
    summary_memory()
    if args.summaries_only:
        return
    with tempfile.TemporaryDirectory(prefix="likeness-report-scale-") as tmp:
        run = Path(tmp) / "run"
        started = time.perf_counter()
        make_synthetic_run(run, args.people, args.prompts, args.side)
        built = time.perf_counter() - started
        n = args.people * args.prompts
        print(f"synthetic run: {args.people} people x {args.prompts} prompts = {n} images of {args.side} px "
              f"(built in {built:.1f} s); results.sqlite {(run / 'results.sqlite').stat().st_size / 1e6:.1f} MB")
        for label in ("first report (writes thumbnails)", "second report (thumbnails reused)"):
            started = time.perf_counter()
            page, _ = build_report(run)
            seconds = time.perf_counter() - started
            pages = sorted((page.parent / "pages").glob("*.html"))
            thumbs = list((page.parent / "thumbs").rglob("*.jpg"))
            print(f"{label}: {seconds:.1f} s, {n / seconds:.0f} images/s")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (build + both reports)")
        print(f"index.html {page.stat().st_size / 1e3:.1f} kB, {len(pages)} image pages "
              f"(largest {max(p.stat().st_size for p in pages) / 1e3:.1f} kB, all {_size(pages) / 1e6:.1f} MB), "
              f"{len(thumbs)} thumbnails {_size(thumbs) / 1e6:.1f} MB")
        print(f"a browser opening index.html fetches {_first_view(page) / 1e3:.0f} kB; "
              f"an image page {_first_view(pages[0]) / 1e3:.0f} kB (HTML + every thumbnail on it)")


if __name__ == "__main__":
    main()
