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
