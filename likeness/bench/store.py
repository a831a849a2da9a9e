"""Results store: one SQLite file (WAL mode), one row per (item_id, metric).

WAL lets a reader (a notebook, ``likeness report``) open the file while an evaluation writes to it,
and every write is a committed transaction, so a crash loses at most the item in flight. Writes
are idempotent (a re-run replaces a row, never duplicates it), and :meth:`ResultsStore.done`
lets a re-run skip what is finished. Extend it by adding tables in :meth:`_create` (the benchmark
runner adds ``items``).

Each protocol (a dict of a few hundred bytes: models, face protocol, definition) is stored once, in the
``protocols`` table keyed by its digest, and a row's ``protocol`` column holds that digest: a row is ~350
bytes instead of ~1,070. Rows written before (``protocol`` holding the JSON itself, which starts with
``{``) are read as they are, so old stores keep working, also with new rows added by a resumed run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

from likeness.metrics.base import Score


RESULT_COLUMNS = ("item_id", "metric", "value", "status", "n_faces", "protocol", "detail", "created_at")
# (the results' protocol column: the digest of a row in the protocols table, or, in rows of older stores, the JSON)
EXPORT_COLUMNS = ("item_id", "metric", "value", "status", "n_faces", "protocol", "detail")


class StoreCorruptError(ValueError):
    """A results file that SQLite cannot use; the message names it and says how to go on."""

    def __init__(self, path: Path, problem: str):
        self.path = path
        super().__init__(
            f"{path}: not a usable results database ({problem}). Move it aside (e.g. `mv {path} {path}.bad`) and "
            f"rerun: finished images are kept and their scores are recomputed; or pass another --store / --out")


def create_private(path: Path) -> bool:
    """Create ``path`` readable and writable by its owner only (0600; SQLite gives its -wal and -shm
    files the same mode), unless it exists. Returns whether it existed."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return False
    except FileExistsError:
        return True


def check_integrity(db: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA quick_check`` (structure and index consistency, O(size)) before a resumed run writes."""
    rows = db.execute("PRAGMA quick_check").fetchall()
    if [r[0] for r in rows] != ["ok"]:
        raise StoreCorruptError(path, "integrity check failed: " + "; ".join(str(r[0]) for r in rows[:3]))


class ResultsStore:
    # WAL: readers while one host writes. A store that another host may read uses a rollback journal (rankstore.py).
    journal_mode = "WAL"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = create_private(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            if existed:
                check_integrity(self.db, self.path)
            self.db.execute(f"PRAGMA journal_mode={self.journal_mode}")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._create()
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(self.path, str(exc)) from None

    def _create(self) -> None:
        with self.db:
            self.db.execute(
                """CREATE TABLE IF NOT EXISTS results (
                    item_id TEXT NOT NULL, metric TEXT NOT NULL, value REAL, status TEXT NOT NULL,
                    n_faces INTEGER, protocol TEXT NOT NULL, detail TEXT NOT NULL, created_at REAL NOT NULL,
                    PRIMARY KEY (item_id, metric))"""
            )
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS protocols (digest TEXT PRIMARY KEY, protocol TEXT NOT NULL)")
        self._protocols: dict[str, dict] = {}  # digest (or inline JSON) -> parsed protocol, shared by the rows read

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- results ---------------------------------------------------------------------------------

    def put(self, scores: list[Score] | Score) -> None:
        """Insert or replace rows, in one transaction (each new protocol stored once, the rows refer to it)."""
        scores = [scores] if isinstance(scores, Score) else scores
        now = time.time()
        texts: dict[int, str] = {}  # id(protocol dict) -> digest: a batch's rows mostly share one protocol object
        new: dict[str, str] = {}
        for s in scores:
            if id(s.protocol) not in texts:
                text = json.dumps(s.protocol, sort_keys=True)
                digest = protocol_digest(text)
                texts[id(s.protocol)] = digest
                if digest not in self._protocols:
                    new[digest] = text
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO protocols VALUES (?, ?)", list(new.items()))
            self.db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (s.item_id, s.metric, None if s.value is None else float(s.value), s.status, s.n_faces,
                     texts[id(s.protocol)], json.dumps(s.detail, sort_keys=True, default=_jsonable), now)
                    for s in scores
                ],
            )
        self._protocols.update((digest, json.loads(text)) for digest, text in new.items())

    def protocol(self, ref: str) -> dict:
        """The protocol a row's ``protocol`` column refers to (a digest, or the JSON itself in older rows).
        Parsed once per store; the rows read share the dict, so treat it as read-only."""
        found = self._protocols.get(ref)
        if found is None:
            if ref.startswith("{"):
                found = json.loads(ref)
            else:  # written since this connection last looked (another process): reload the table
                self._protocols.update((d, json.loads(t)) for d, t in self.db.execute("SELECT digest, protocol FROM protocols"))
                found = self._protocols.get(ref)
                if found is None:
                    raise StoreCorruptError(self.path, f"a result row refers to protocol {ref}, which is not in the store")
            self._protocols[ref] = found
        return found

    def done(self, item_id: str, metric: str, protocol_name: str | None = None) -> bool:
        return item_id in self.done_items(metric, protocol_name, item_ids=[item_id])

    def done_items(self, metric: str, protocol_name: str | None = None, item_ids: list[str] | None = None) -> set[str]:
        """Items with a stored row for ``metric`` (under ``protocol_name`` when given; rows under
        another protocol are stale and will be recomputed). ``failed`` and ``model_missing`` rows are never done."""
        query = "SELECT item_id, protocol FROM results WHERE metric = ? AND status NOT IN ('failed', 'model_missing')"
        args: list = [metric]
        if item_ids is not None:
            query += f" AND item_id IN ({','.join('?' * len(item_ids))})"
            args += item_ids
        return {
            item for item, protocol in self.db.execute(query, args)
            if protocol_name is None or self.protocol(protocol).get("name") == protocol_name
        }

    def iter_scores(self, metric: str | None = None, protocol_name: str | None = None):
        """The rows one at a time (by item id, then metric), for readers that need not hold them all."""
        query, args = "SELECT item_id, metric, value, status, n_faces, protocol, detail FROM results", []
        if metric is not None:
            query, args = query + " WHERE metric = ?", [metric]
        for item, name, value, status, n_faces, protocol, detail in self.db.execute(query + " ORDER BY item_id, metric", args):
            protocol = self.protocol(protocol)
            if protocol_name is None or protocol.get("name") == protocol_name:
                yield Score(item, name, value, status, n_faces, protocol, json.loads(detail))

    def scores(self, metric: str | None = None, protocol_name: str | None = None) -> list[Score]:
        return list(self.iter_scores(metric, protocol_name))

    def metrics(self) -> list[str]:
        return [m for (m,) in self.db.execute("SELECT DISTINCT metric FROM results ORDER BY metric")]

    def export_rows(self, metric: str | None = None):
        """The rows both exports write, in EXPORT_COLUMNS order (protocol reduced to its name; detail as JSON), one
        at a time."""
        for s in self.iter_scores(metric):
            yield (s.item_id, s.metric, s.value, s.status, s.n_faces, s.protocol.get("name", ""),
                   json.dumps(s.detail, sort_keys=True))

    def export_csv(self, path: str | Path, metric: str | None = None) -> Path:
        """Per-image rows as CSV (protocol reduced to its name; detail kept as JSON)."""
        path = Path(path)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(EXPORT_COLUMNS)
            for row in self.export_rows(metric):
                writer.writerow(["" if v is None else v for v in row])
        return path

    def export_parquet(self, path: str | Path, metric: str | None = None) -> Path:
        """The CSV's rows and columns as Parquet, typed (value float, n_faces int, missing = null)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        columns = list(zip(*self.export_rows(metric))) or [()] * len(EXPORT_COLUMNS)
        types = [pa.string(), pa.string(), pa.float64(), pa.string(), pa.int64(), pa.string(), pa.string()]
        table = pa.table({name: pa.array(list(values), type=kind) for name, values, kind in zip(EXPORT_COLUMNS, columns, types)})
        pq.write_table(table, path)
        return path

    # -- meta --------------------------------------------------------------------------------------

    def set_meta(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True, default=_jsonable)))

    def get_meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default


def protocol_digest(text: str) -> str:
    """The key of a protocol's canonical JSON (sorted keys) in the protocols table."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _jsonable(value):
    """numpy scalars/arrays and paths in details become plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
