"""The runner's ledger of work items: an ``items`` table added to the run's results store.

One row per planned item. An item moves pending -> running -> done | failed, and the final move
happens at most once (the UPDATE only matches an item that is not final yet), so every item ends
exactly once however many processes share the file and however often the run is killed and resumed.
An item left ``running`` by a killed process is set back to ``pending`` when the run restarts.
"""

from __future__ import annotations

import time

from likeness.bench.store import ResultsStore

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
FINAL = (DONE, FAILED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    identity TEXT NOT NULL,
    reference TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    reason TEXT,
    rank INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    seconds REAL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS items_status ON items(status);
"""


class RunStore(ResultsStore):
    """The results store plus the ``items`` table. Each process opens its own connection to the file."""

    def _create(self) -> None:
        super()._create()
        with self.db:
            self.db.executescript(SCHEMA)

    def add_items(self, items) -> int:
        """Insert planned items not yet known (re-planning a resumed run adds nothing)."""
        with self.db:
            cur = self.db.executemany(
                "INSERT OR IGNORE INTO items(item_id, position, identity, reference, prompt_id, seed) VALUES (?,?,?,?,?,?)",
                [(i.item_id, i.position, i.identity, str(i.reference), i.prompt.prompt_id, i.seed) for i in items],
            )
        return cur.rowcount

    def reset_interrupted(self) -> int:
        """Items a killed process left ``running`` go back to ``pending``. Call once, before workers start."""
        with self.db:
            return self.db.execute("UPDATE items SET status=?, rank=NULL WHERE status=?", (PENDING, RUNNING)).rowcount

    def retry_failed(self) -> int:
        """Failed items become pending again: only on the user's request (e.g. after freeing disk space)."""
        with self.db:
            return self.db.execute("UPDATE items SET status=?, reason=NULL, rank=NULL WHERE status=?", (PENDING, FAILED)).rowcount

    def pending_ids(self, ids: list[str] | None = None) -> set[str]:
        rows = self.db.execute("SELECT item_id FROM items WHERE status NOT IN (?,?)", FINAL).fetchall()
        pending = {r[0] for r in rows}
        return pending if ids is None else pending & set(ids)

    def start(self, item_id: str, rank: int) -> None:
        with self.db:
            self.db.execute(
                "UPDATE items SET status=?, rank=?, attempts=attempts+1, started_at=? WHERE item_id=? AND status NOT IN (?,?)",
                (RUNNING, rank, time.time(), item_id, *FINAL),
            )

    def finish(self, item_id: str, status: str, reason: str = "", seconds: float | None = None) -> bool:
        """Record the final state once. Returns False when the item was already final (nothing changed)."""
        if status not in FINAL:
            raise ValueError(f"final status must be one of {FINAL}, got {status!r}")
        with self.db:
            cur = self.db.execute(
                "UPDATE items SET status=?, reason=?, seconds=?, finished_at=? WHERE item_id=? AND status NOT IN (?,?)",
                (status, reason or None, seconds, time.time(), item_id, *FINAL),
            )
        return cur.rowcount == 1

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())

    def items(self, status: str | None = None) -> list[dict]:
        query = "SELECT * FROM items" + (" WHERE status=?" if status else "") + " ORDER BY position"
        cur = self.db.execute(query, (status,) if status else ())
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
