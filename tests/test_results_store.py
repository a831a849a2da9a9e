"""ResultsStore: idempotent rows, resume bookkeeping per protocol, CSV export, clear errors."""

from __future__ import annotations

import csv
import sqlite3

import pytest

from likeness.bench.store import ResultsStore
from likeness.metrics.base import Score

PROTOCOL = {"name": "ips/v1+face-a/v1"}


def test_rows_are_replaced_not_duplicated_and_survive_reopening(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.put(Score("a", "ips", 0.1, "ok", 1, PROTOCOL, {"raw_cosine": 0.9}))
        store.put([Score("a", "ips", 0.4, "ok", 2, PROTOCOL), Score("b", "ips", 0.0, "no_face", 0, PROTOCOL)])
        store.set_meta("run", {"k": 1})
    with ResultsStore(path) as store:
        rows = store.scores("ips")
        assert [(r.item_id, r.value, r.status, r.n_faces) for r in rows] == [("a", 0.4, "ok", 2), ("b", 0.0, "no_face", 0)]
        assert store.get_meta("run") == {"k": 1} and store.get_meta("absent", 5) == 5
        assert store.metrics() == ["ips"]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_done_depends_on_protocol_and_failed_rows_are_retried(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put([Score("a", "ips", 0.5, "ok", 1, PROTOCOL), Score("b", "ips", None, "failed", 1, PROTOCOL)])
        assert store.done("a", "ips", "ips/v1+face-a/v1") and not store.done("a", "ips", "ips/v1+face-b/v1")
        assert not store.done("b", "ips") and not store.done("a", "sis")
        assert store.done_items("ips") == {"a"}


def test_csv_export_keeps_unscored_rows(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put([Score("a", "ips", 0.25, "ok", 1, PROTOCOL, {"x": 1}), Score("b", "ips", None, "unreadable", None, PROTOCOL)])
        exported = store.export_csv(tmp_path / "rows.csv")
    with open(exported, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["item_id"], r["value"], r["status"], r["protocol"]) for r in rows] == [
        ("a", "0.25", "ok", "ips/v1+face-a/v1"), ("b", "", "unreadable", "ips/v1+face-a/v1")]


def test_a_file_that_is_not_a_database_is_named(tmp_path):
    bogus = tmp_path / "not.sqlite"
    bogus.write_text("this is text, not SQLite " * 100)
    with pytest.raises(ValueError, match="not.sqlite: not a usable results database"):
        ResultsStore(bogus)


BIG_PROTOCOL = {"name": "ips/v1+dlib-hog-r128-cal/v1", "metric": "ips", "definition": "cosine of ArcFace-style " * 20,
                "face": {"detector": "HOG", "aligner": "5 points", "embedder": "ResNet-34 128-d"}}


def _old_store(path, scores):
    """A store as written before protocols were stored once: the protocol JSON inline in every row."""
    import json

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE results (item_id TEXT NOT NULL, metric TEXT NOT NULL, value REAL, status TEXT NOT NULL, "
               "n_faces INTEGER, protocol TEXT NOT NULL, detail TEXT NOT NULL, created_at REAL NOT NULL, "
               "PRIMARY KEY (item_id, metric))")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.executemany("INSERT INTO results VALUES (?,?,?,?,?,?,?,?)",
                   [(s.item_id, s.metric, s.value, s.status, s.n_faces, json.dumps(s.protocol, sort_keys=True),
                     json.dumps(s.detail, sort_keys=True), 1.0) for s in scores])
    db.commit()
    db.close()


def test_protocols_are_stored_once_and_old_stores_still_read_and_export_the_same(tmp_path):
    other = {**BIG_PROTOCOL, "name": "sis/v1+dlib-hog-r128-cal/v1", "metric": "sis"}
    scores = [Score(f"i{k:03d}", metric, k / 100, "ok" if k % 7 else "no_face", 1, dict(protocol), {"k": k})
              for k in range(60) for metric, protocol in (("ips", BIG_PROTOCOL), ("sis", other))]
    _old_store(tmp_path / "old.sqlite", scores)
    with ResultsStore(tmp_path / "new.sqlite") as new:
        new.put(scores[:50])
        new.put(scores[50:])  # a second batch: its protocols are already there
        assert new.db.execute("SELECT COUNT(*) FROM protocols").fetchone()[0] == 2
        per_row = new.db.execute("SELECT MAX(length(protocol)) FROM results").fetchone()[0]
        assert per_row == 16  # a digest, not the ~600-byte JSON
    with ResultsStore(tmp_path / "old.sqlite") as old, ResultsStore(tmp_path / "new.sqlite") as new:
        assert old.scores() == new.scores() == sorted(scores, key=lambda s: (s.item_id, s.metric))
        assert old.done_items("ips", BIG_PROTOCOL["name"]) == new.done_items("ips", BIG_PROTOCOL["name"])
        for store, name in ((old, "old"), (new, "new")):
            store.export_csv(tmp_path / f"{name}.csv")
            store.export_parquet(tmp_path / f"{name}.parquet")
        # A resumed run on an old store adds rows by digest beside the inline ones: both read.
        old.put(Score("z", "ips", 0.5, "ok", 1, BIG_PROTOCOL))
        assert old.scores("ips")[-1].protocol == BIG_PROTOCOL and old.scores("ips")[0].protocol == BIG_PROTOCOL
    assert (tmp_path / "old.csv").read_bytes() == (tmp_path / "new.csv").read_bytes()
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "old.parquet").equals(pq.read_table(tmp_path / "new.parquet"))
