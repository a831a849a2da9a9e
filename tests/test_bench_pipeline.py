"""Issue 21: every finished artifact is kept at once, images start after the first person, one run per
folder (a second run refused with exit code 2, a dead run's lock taken over), bad disks are messages."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench_helpers import GATED, one_torch_thread, small_config  # noqa: F401 (autouse fixture)
from likeness.bench.plan import RunConfigError
from likeness.bench.runlock import LOCK_FILE, RunLockedError, read_lock
from likeness.bench.runner import builtin_identities, run_bench
from likeness.bench.runstore import DONE, FAILED
from likeness.cli import main as cli_main

HELPERS = Path(__file__).with_name("bench_helpers.py")
REPO = Path(__file__).resolve().parents[1]
PEOPLE = ("alice", "bob", "carol")


def _people(root: Path) -> Path:
    """Three people (the astronaut photo, flipped and rotated), one photo each."""
    photo = Image.open(builtin_identities(root / "src")[0].photos[0]).convert("RGB")
    variants = (photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.transpose(Image.Transpose.ROTATE_180))
    for name, image in zip(PEOPLE, variants):
        (root / "people" / name).mkdir(parents=True)
        image.resize((64, 64)).save(root / "people" / name / "0.png")
    return root / "people"


def _args(run: Path, people: Path) -> list[str]:
    return ["bench", "--method", GATED, "--identities", str(people), "--limit", "2", "--steps", "2", "--resolution", "32",
            "--out", str(run), "--metrics", "", "--quiet", "--no-report"]


def _start(run: Path, people: Path, tmp: Path, hold: str, *extra: str) -> subprocess.Popen:
    """``likeness bench`` in its own process (as a user starts it), held while training ``hold``."""
    env = dict(os.environ, PYTHONPATH=f"{HELPERS.parent}{os.pathsep}{REPO}", OMP_NUM_THREADS="1", TQDM_DISABLE="1",
               LIKENESS_TEST_LOG=str(tmp / "trained.log"), LIKENESS_TEST_HOLD=hold, LIKENESS_TEST_GATE=str(tmp / "gate"))
    code = "import sys, bench_helpers; from likeness.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *_args(run, people), *extra], env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trained(tmp: Path) -> list[str]:
    log = tmp / "trained.log"
    return log.read_text().split() if log.exists() else []


def _wait_for_hold(proc: subprocess.Popen, tmp: Path, hold: str) -> None:
    deadline = time.monotonic() + 240
    while hold not in _trained(tmp) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hold in _trained(tmp) and proc.poll() is None, proc.communicate(timeout=30) if proc.poll() is not None else "timeout"
    time.sleep(0.2)  # the held person's folder gets its first file


def _finished(run: Path) -> set[str]:
    return {p.parent.name for p in (run / "artifacts").glob("*/likeness.json")}


def _snapshot(run: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(run)), p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file())


def _pixels(run: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((run / "images").glob("*/*.png"))}


def test_images_start_early_a_second_run_is_refused_and_a_killed_run_resumes_without_retraining(tmp_path, capsys):
    people = _people(tmp_path)
    # 1. A run held while it trains carol, the last person.
    first, ftmp = tmp_path / "first", tmp_path / "t1"
    ftmp.mkdir()
    proc = _start(first, people, ftmp, hold="carol")
    try:
        _wait_for_hold(proc, ftmp, "carol")
        # Images start early: alice's and bob's are already made, and their artifacts kept under their final names.
        assert _finished(first) == {"alice-0", "bob-0"}
        made = sorted(p.stem.split("-")[0] for p in first.rglob("*.png") if "images" in p.parts)
        assert made == ["alice", "alice", "bob", "bob"]
        assert read_lock(first)["pid"] == proc.pid
        # 2. A second run on the same folder: one message, exit code 2, nothing of the first touched.
        before = _snapshot(first)
        assert cli_main(_args(first, people)) == 2
        err = capsys.readouterr().err
        assert f"is in use by the run of pid {proc.pid} on host" in err and "one run per folder" in err
        assert err.count("likeness bench:") == 1 and "Traceback" not in err
        assert _snapshot(first) == before
        (ftmp / "gate").touch()  # the first run goes on and finishes
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "6/6 items done, 0 failed" in out
    assert _trained(ftmp) == list(PEOPLE) and read_lock(first) is None  # released: the file is emptied

    # 3. The same run SIGKILLed while it trains carol: alice and bob stay trained; the resume takes the dead
    # run's lock over (said once), discards carol's half-written folder and trains carol alone.
    second, stmp = tmp_path / "second", tmp_path / "t2"
    stmp.mkdir()
    proc = _start(second, people, stmp, hold="carol")
    try:
        _wait_for_hold(proc, stmp, "carol")
        assert [p.name for p in (second / "artifacts").glob(".tmp-carol-0-*")]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _finished(second) == {"alice-0", "bob-0"} and read_lock(second)["pid"] == proc.pid
    os.environ["LIKENESS_TEST_LOG"] = str(stmp / "trained.log")
    try:
        assert cli_main(_args(second, people)) == 0
    finally:
        del os.environ["LIKENESS_TEST_LOG"]
    captured = capsys.readouterr()
    assert f"was left locked by the run of pid {proc.pid} on host" in captured.err and "taking the lock over" in captured.err
    assert "6/6 items done, 0 failed" in captured.out
    assert _trained(stmp) == list(PEOPLE) + ["carol"]  # nothing trained twice but the one being trained
    assert _finished(second) == {"alice-0", "bob-0", "carol-0"} and not list((second / "artifacts").glob(".*"))
    assert read_lock(second) is None
    # Same pixels as the uninterrupted run (each image's generator is seeded from its item id).
    a, b = _pixels(first), _pixels(second)
    assert len(a) == 6 and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_two_processes_go_round_by_round_with_the_one_process_results(tmp_path, capsys):
    """``--processes 2`` on three people: two rounds (one person per rank, then one), each rank's child
    trains while the rank generates; ledger and pixels equal a one-process run's, nobody trained twice."""
    import sqlite3

    people = _people(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli_main(_args(one, people)) == 0
    proc = _start(two, people, tmp_path, "nobody", "--processes", "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "6/6 items done, 0 failed" in out, err[-3000:]
    assert sorted(_trained(tmp_path)) == list(PEOPLE)
    query = "SELECT item_id, status, reason FROM items ORDER BY position"
    with sqlite3.connect(one / "results.sqlite") as db1, sqlite3.connect(two / "results.sqlite") as db2:
        assert {r for (r,) in db2.execute("SELECT DISTINCT rank FROM items")} == {0, 1}
        assert db1.execute(query).fetchall() == db2.execute(query).fetchall()
        timeline = json.loads(db2.execute("SELECT value FROM meta WHERE key='rank_stores'").fetchone()[0])
    rank0 = next(e["timeline"] for e in timeline.values() if e["rank"] == 0)
    assert rank0["first_image"] < rank0["personalized"]  # rank 0 generated before the last round was trained
    a, b = _pixels(one), _pixels(two)
    assert len(a) == 6 and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_lock_of_another_host_or_a_live_run_is_refused_and_a_dead_ones_taken_over(tmp_path):
    config = small_config(prompt_limit=1)
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_FILE
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": "2026-12-06 10:00:00 UTC"}))
    with pytest.raises(RunLockedError, match=r"locked by the run of pid 1 on host elsewhere .*another machine.*delete .*run.lock"):
        run_bench(config, run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing else written
    # A holder on this host whose process is gone: taken over.
    from likeness.bench.rankstore import host_name

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": host_name(), "pid": dead.pid, "started": 0, "time": "earlier"}))
    said = []
    from likeness.bench.runlock import RunLock

    held = RunLock.acquire(run, say=said.append)
    assert said and f"left locked by the run of pid {dead.pid}" in said[0] and held.took_over["pid"] == dead.pid
    assert read_lock(run)["pid"] == os.getpid()
    # While it is held (another open file: the kernel's lock), every other run is refused, in this process too.
    with pytest.raises(RunLockedError, match=f"in use by the run of pid {os.getpid()}"):
        run_bench(config, run, progress=False)
    held.release()
    assert read_lock(run) is None
    assert run_bench(config, run, progress=False).counts == {DONE: 1}


def test_read_only_folder_and_full_disk_while_training(tmp_path, capsys, monkeypatch):
    people = _people(tmp_path)
    run = tmp_path / "run"
    log = tmp_path / "trained.log"
    monkeypatch.setenv("LIKENESS_TEST_LOG", str(log))
    config = small_config(identities=str(people), method=GATED, prompt_limit=2)
    # A full disk while bob trains: bob's items fail with the reason, alice and carol are kept and finish.
    from bench_helpers import GatedPlain

    real = GatedPlain.personalize

    def full_disk(self, identities, out_dir, base_model, **kw):
        if identities[0].name == "bob":
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "partial.safetensors").write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, identities, out_dir, base_model, **kw)

    monkeypatch.setattr(GatedPlain, "personalize", full_disk)
    summary = run_bench(config, run, progress=False)
    assert summary.counts == {DONE: 4, FAILED: 2}
    assert {f["reason"] for f in summary.failures} == {"personalization failed: OSError: [Errno 28] No space left on device"}
    assert "free some space, then rerun with --retry-failed" in summary.describe()
    assert {p.parent.name for p in (run / "artifacts").glob("*/likeness.json")} == {"alice-0", "carol-0"}
    assert not list((run / "artifacts").glob(".*"))  # bob's partial folder is gone
    monkeypatch.setattr(GatedPlain, "personalize", real)
    log.unlink()
    assert run_bench(config, run, progress=False, retry_failed=True).counts == {DONE: 6}
    assert log.read_text().split() == ["bob"]  # only the missing artifact is trained
    # The run folder on a read-only disk: one message naming the folder, exit code 2, nothing changed.
    before = _snapshot(run)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(RunConfigError, match=r"cannot write the run folder \(Read-only file system\); .*writable --out"):
        run_bench(config, run, progress=False)
    capsys.readouterr()
    assert cli_main(["bench", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"likeness bench: {run}: cannot write the run folder (Read-only file system)")
    assert "Traceback" not in err
    monkeypatch.setattr(os, "open", real_open)
    assert _snapshot(run) == before
