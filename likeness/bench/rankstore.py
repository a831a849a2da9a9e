"""Per-rank stores: every process of a run writes its own SQLite file and image folder; they are
merged into the run's store.

Across machines the run folder sits on a shared (network) filesystem, where SQLite's write-ahead log
is documented not to work, and two hosts writing one file can lose results or corrupt it. So no
SQLite file is written by two processes: rank r writes ``RUN/ranks/<host>-<r>/results.sqlite``
(rollback journal, the mode SQLite supports on network filesystems with working locks) and
``RUN/ranks/<host>-<r>/images/``; only the main process (and ``likeness report``) writes
``RUN/results.sqlite``.

:func:`merge_rank_stores` brings into the run's store, for every item a rank finished, its final
ledger row, its metric rows and its image + sidecar. It only fills items that are not final there
yet, and a metric row only replaces an older one, so merging is idempotent: merging the same rank
store twice changes nothing, and every item ends exactly once. Every rank store's configuration
digest is checked first; a rank store made under another configuration is refused, naming its folder.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from likeness.bench.plan import RunConfigError
from likeness.bench.runstore import DONE, FINAL, RUNNING, RunStore
from likeness.bench.store import StoreCorruptError, check_integrity
from likeness.data.names import name_key

RANKS_DIR = "ranks"
STORE_NAME = "results.sqlite"
RANK_META = "rank"  # {"digest", "rank", "world", "host", "pid"}: who wrote the rank store, for which config
TIMELINE_META = "timeline"  # {phase: seconds since the process started}: where a rank's time went
MERGED_META = "rank_stores"  # in the run's store: {rank folder: {"rank", "host", "world", "timeline", ...}}


def host_name() -> str:
    """This machine's name, safe as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"


def rank_folder(run_dir: str | Path, rank: int) -> Path:
    """``RUN/ranks/<host>-<rank>``: global ranks are unique within a launch, host names tell machines apart."""
    return Path(run_dir) / RANKS_DIR / f"{host_name()}-{rank}"


def rank_store_paths(run_dir: str | Path) -> list[Path]:
    return sorted((Path(run_dir) / RANKS_DIR).glob(f"*/{STORE_NAME}"))


class RankStore(RunStore):
    """One rank's ledger rows and metric rows. Only its own process writes it."""

    # A rollback journal (not WAL) works on network filesystems; PERSIST keeps the journal file between
    # commits instead of deleting it: ~2 ms per commit here instead of ~18 ms (no directory update).
    journal_mode = "PERSIST"

    def bind(self, digest: str, **info) -> None:
        """Record which configuration this store belongs to; a store of another one is refused."""
        old = self.get_meta(RANK_META)
        if old and old.get("digest") != digest:
            raise RunConfigError(f"{self.path.parent}: rank store of another configuration (digest {old.get('digest')}, "
                                 f"this run {digest}); move it out of the run folder")
        self.set_meta(RANK_META, {**info, "digest": digest})

    def begin(self, item, rank: int, attempts: int) -> None:
        """The item is being made by this rank; ``attempts`` counts every try, earlier runs included."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO items(item_id, position, identity, reference, prompt_id, seed, status, rank, attempts,"
                " started_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (item.item_id, item.position, item.identity, str(item.reference), item.prompt.prompt_id, item.seed,
                 RUNNING, rank, attempts, time.time()),
            )

    def mark(self, phase: str, since: float) -> None:
        """Add ``phase`` to the timeline: seconds from ``since`` (the process start) to now."""
        timeline = self.get_meta(TIMELINE_META, {}) or {}
        timeline[phase] = round(time.time() - since, 3)
        self.set_meta(TIMELINE_META, timeline)


@dataclass
class MergeReport:
    rank_stores: int = 0
    items: int = 0  # items that became final in the run's store
    results: int = 0  # metric rows inserted or updated
    missing_images: list[str] = field(default_factory=list)  # done in a rank store, image gone: left pending


def _rows(db: sqlite3.Connection, query: str, args=()) -> list[dict]:
    cur = db.execute(query, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _meta(db: sqlite3.Connection, key: str):
    import json

    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # a store whose tables are not created yet
        return None
    return json.loads(row[0]) if row else None


def _protocols(db: sqlite3.Connection) -> list[tuple]:
    """(digest, protocol JSON) rows of a rank store; none in a store written before protocols were stored once."""
    try:
        return db.execute("SELECT digest, protocol FROM protocols").fetchall()
    except sqlite3.OperationalError:
        return []


def _open(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, timeout=30)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        check_integrity(db, path)  # a damaged rank store is named, not merged half-read
        return db
    except StoreCorruptError:
        raise
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{path}: not a usable rank store ({exc})") from None


def _bring(src: Path, dst: Path, move: bool) -> None:
    """Put ``src`` at ``dst`` atomically: moved when the rank folder is being consumed, else hard-linked
    (or copied), so a rank that is still running keeps its file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if move:
        try:
            os.replace(src, dst)
            return
        except OSError:  # another filesystem: copy below
            pass
    tmp = dst.with_name(f".{dst.name}.{host_name()}-{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _bring_image(folder: Path, run_dir: Path, row: dict, move: bool) -> bool:
    """Image + sidecar of a done item into ``RUN/images``; False when the rank's image is gone."""
    for suffix in (".png", ".json"):
        name = f"{row['item_id']}{suffix}"
        key = name_key(row["identity"])  # the folders are keys (likeness.data.names), the ledger keeps the name
        src, dst = folder / "images" / key / name, run_dir / "images" / key / name
        try:
            _bring(src, dst, move)
        except FileNotFoundError:
            if not dst.exists():  # (brought by an earlier merge that stopped before its ledger update)
                return False
    return True


def recorded_digest(run_dir: str | Path) -> str:
    """The configuration digest in ``RUN/run.json`` (what every rank store must carry)."""
    import json

    from likeness.bench.plan import CONFIG_FILE, load_run_config

    load_run_config(run_dir)  # a clear error for a missing or malformed run.json
    return json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))["digest"]


def check_rank_stores(run_dir: str | Path, digest: str) -> list[tuple[Path, dict | None]]:
    """Every rank store with its recorded info; raises RunConfigError naming a rank of another config."""
    found = []
    for path in rank_store_paths(run_dir):
        db = _open(path)
        try:
            info = _meta(db, RANK_META)
        finally:
            db.close()
        if info is not None and info.get("digest") != digest:
            raise RunConfigError(
                f"{path.parent}: rank store made with another configuration (digest {info.get('digest')}, run folder "
                f"{digest}); refusing to merge it. Move it out of {Path(run_dir) / RANKS_DIR} to continue."
            )
        found.append((path, info))
    return found


def merge_rank_stores(run_dir: str | Path, store: RunStore, digest: str, *, consume: bool = False) -> MergeReport:
    """Merge every ``RUN/ranks/*/results.sqlite`` into ``store`` (the run's store), idempotently.

    ``consume=True`` (only when no rank is running: at the start and the end of ``likeness bench``)
    moves images instead of linking them and deletes each rank folder once merged.
    """
    run_dir = Path(run_dir)
    report = MergeReport()
    stores = check_rank_stores(run_dir, digest)  # all checked before anything is merged
    known = {r["item_id"]: r["status"] for r in _rows(store.db, "SELECT item_id, status FROM items")}
    for path, info in stores:
        folder = path.parent
        if info is None:  # created but never bound: a rank that died at once
            if consume:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        db = _open(path)
        try:
            items = _rows(db, "SELECT * FROM items")
            results = _rows(db, "SELECT * FROM results")
            protocols = _protocols(db)
            timeline = _meta(db, TIMELINE_META) or {}
        except sqlite3.OperationalError as exc:
            raise ValueError(f"{path}: not a usable rank store ({exc})") from None
        finally:
            db.close()
        finals, attempts = [], []
        for row in items:
            attempts.append((row["attempts"], row["item_id"]))
            if row["status"] not in FINAL or known.get(row["item_id"], DONE) in FINAL:
                continue  # unfinished here, already final there, or not in the plan
            if row["status"] == DONE and not _bring_image(folder, run_dir, row, move=consume):
                report.missing_images.append(row["item_id"])
                continue
            finals.append(row)
        with store.db:
            store.db.executemany("UPDATE items SET attempts=MAX(attempts, ?) WHERE item_id=?", attempts)
            cur = store.db.executemany(
                "UPDATE items SET status=?, reason=?, rank=?, seconds=?, started_at=?, finished_at=?"
                " WHERE item_id=? AND status NOT IN (?,?)",
                [(r["status"], r["reason"], r["rank"], r["seconds"], r["started_at"], r["finished_at"], r["item_id"], *FINAL)
                 for r in finals],
            )
            report.items += max(cur.rowcount, 0)
            for r in finals:
                known[r["item_id"]] = r["status"]
            done = [r for r in results if known.get(r["item_id"]) == DONE]
            # The rows refer to their protocol by digest (store.py): bring the protocols along, before the rows.
            store.db.executemany("INSERT OR IGNORE INTO protocols(digest, protocol) VALUES (?, ?)", protocols)
            before = store.db.total_changes
            store.db.executemany(
                "INSERT INTO results(item_id, metric, value, status, n_faces, protocol, detail, created_at)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(item_id, metric) DO UPDATE SET value=excluded.value,"
                " status=excluded.status, n_faces=excluded.n_faces, protocol=excluded.protocol, detail=excluded.detail,"
                " created_at=excluded.created_at WHERE excluded.created_at > results.created_at",
                [(r["item_id"], r["metric"], r["value"], r["status"], r["n_faces"], r["protocol"], r["detail"], r["created_at"])
                 for r in done],
            )
            report.results += store.db.total_changes - before
        merged = store.get_meta(MERGED_META, {}) or {}
        entry = {**{k: v for k, v in info.items() if k != "digest"}, "timeline": timeline}
        if merged.get(folder.name) != entry:
            merged[folder.name] = entry
            store.set_meta(MERGED_META, merged)
        report.rank_stores += 1
        if consume:
            shutil.rmtree(folder, ignore_errors=True)
    return report
