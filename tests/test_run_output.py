"""Runs that behave: --quiet silences every bar (training's too), -v logs, --batch-size keeps pixels,
Parquet export has the CSV's columns."""

from __future__ import annotations

import csv
import logging
import os

import numpy as np
import pytest
from PIL import Image

from bench_helpers import PLAIN, one_torch_thread  # noqa: F401 (autouse fixture)
from likeness.cli import main

BAR_MARKS = ("it/s]", "s/it]", "%|")


@pytest.fixture
def restore_bars():
    yield
    os.environ.pop("TQDM_DISABLE", None)
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.enable_progress_bar()
    transformers.utils.logging.enable_progress_bar()


def test_quiet_silences_every_progress_bar_including_training(tmp_path, capfd, tiny_models, restore_bars):
    args = ["bench", "--method", "textual-inversion", "--train-steps", "2", "--limit", "1", "--metrics", "", "--no-report"]
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    loud = capfd.readouterr().err
    assert "training" in loud and any(mark in loud for mark in BAR_MARKS)  # the check can fail
    assert main([*args, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capfd.readouterr()
    assert not any(mark in captured.err for mark in BAR_MARKS), captured.err[-2000:]
    assert "training" not in captured.err and "1/1 items done" in captured.out


def test_verbose_logs_through_logging(tmp_path, capfd, tiny_models):
    photo = tmp_path / "people" / "a" / "0.png"
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(photo)
    args = ["evaluate", str(tmp_path / "people"), str(tmp_path / "people"), "--store", str(tmp_path / "r.sqlite"),
            "--metrics", "ips"]
    try:
        for extra, shown in (([], False), (["-v"], True), (["-v", "--quiet"], False)):
            assert main([*args, *extra]) == 0
            err = capfd.readouterr().err
            assert ("INFO likeness.bench.evaluate: evaluating 1 inputs" in err) == shown, (extra, err[-1500:])
    finally:
        logging.getLogger("likeness").setLevel(logging.NOTSET)
        os.environ.pop("TQDM_DISABLE", None)


def _pixels(run):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((run / "images").glob("*/*.png"))}


def test_batch_size_changes_nothing_in_the_pixels(tmp_path, tiny_models):
    base = ["bench", "--method", PLAIN, "--limit", "5", "--metrics", "", "--no-report", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "one"), "--batch-size", "1"]) == 0
    assert main([*base, "--out", str(tmp_path / "three"), "--batch-size", "3"]) == 0  # batches of 3 + 2
    one, three = _pixels(tmp_path / "one"), _pixels(tmp_path / "three")
    assert len(one) == 5 and one.keys() == three.keys()
    assert all(np.array_equal(one[k], three[k]) for k in one)
    os.environ.pop("TQDM_DISABLE", None)


def test_parquet_export_has_the_csv_columns_and_rows(tmp_path, astronaut_path):
    import pyarrow.parquet as pq

    from likeness.bench.store import EXPORT_COLUMNS, ResultsStore
    from likeness.metrics import Score

    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put([Score("a-0", "ips", 0.5, "ok", 1, {"name": "ips/v1"}, {"raw": 0.9}),
                   Score("b-0", "ips", None, "image_missing", None, {"name": "ips/v1"}, {"problem": "b.png: missing"})])
        store.export_csv(tmp_path / "r.csv")
        store.export_parquet(tmp_path / "r.parquet")
    table = pq.read_table(tmp_path / "r.parquet")
    with open(tmp_path / "r.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(table.column_names) == EXPORT_COLUMNS == tuple(rows[0].keys())
    assert table.num_rows == len(rows) == 2
    parquet = table.to_pylist()
    assert parquet[0]["value"] == 0.5 and parquet[1]["value"] is None and parquet[1]["n_faces"] is None
    assert [r["item_id"] for r in parquet] == [r["item_id"] for r in rows]
    assert parquet[1]["detail"] == rows[1]["detail"] and rows[1]["value"] == ""
