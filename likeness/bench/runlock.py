"""One run per folder: ``RUN/run.lock``.

The main process of a run holds an exclusive ``flock`` on ``RUN/run.lock`` for the whole run and
writes into it who holds it (host, pid, process start time, when, a run id). The other ranks of the
same run receive that run id from the main process and check that the lock file names it. So a
second ``likeness bench`` on the same folder is refused before it writes anything there, with the
holder's host and pid in the message.

The kernel drops a ``flock`` when its process dies, however it dies, so a run killed with SIGKILL
leaves only the file's text behind: the next run on the same host finds the lock free, says whose
lock it takes over, and goes on. A lock written by another host cannot be checked from here (its
process may be alive): it is refused with how to clear it. On a filesystem without ``flock`` the
file's text decides alone: a holder on this host whose pid is gone (or now belongs to a process
started at another time) is taken over; a live one is refused.

A finished run empties the file (it is never deleted: deleting a lock file while another process
waits on it would let two runs hold two different files).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from likeness.bench.plan import RunConfigError
from likeness.bench.rankstore import host_name

LOCK_FILE = "run.lock"


class RunLockedError(RunConfigError):
    """The run folder is in use by another run (or the lock cannot be checked)."""


def _process_start(pid: int) -> float | None:
    """When ``pid`` started (epoch seconds); None when no such process."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return float("nan")  # alive, start time unknown


def holder_alive(info: dict) -> bool:
    """Whether the process named by a lock record (on this host) is still the one that wrote it."""
    started = _process_start(int(info.get("pid", -1)))
    if started is None:
        return False
    recorded = info.get("started")
    if recorded is None or started != started:  # unknown start time: a live pid counts as the holder
        return True
    return abs(started - float(recorded)) < 2.0  # else the pid was reused by another process


def describe_holder(info: dict | None) -> str:
    if not info:
        return "another run (starting)"
    since = info.get("time", "?")
    return f"the run of pid {info.get('pid', '?')} on host {info.get('host', '?')} (since {since})"


def read_lock(run_dir: str | Path) -> dict | None:
    """The lock record of ``run_dir`` (None: free, missing or unreadable)."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _read_fd(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", "replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return {"unreadable": text[:200]}


def unwritable(run_dir: Path, exc: OSError) -> RunConfigError:
    """A clear refusal for a run folder that cannot be written (read-only disk, permissions, full disk)."""
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        fix = "free some space on that disk, or choose another --out"
    else:
        fix = "a run writes its images, artifacts and results there: choose a writable --out"
    return RunConfigError(f"{run_dir}: cannot write the run folder ({why}); {fix}")


@dataclass
class RunLock:
    """The lock held by the main process of a run; :meth:`release` when the run ends."""

    path: Path
    fd: int
    info: dict
    took_over: dict | None = None  # the dead holder's record, when its lock was taken over

    @classmethod
    def acquire(cls, run_dir: str | Path, *, say=None) -> "RunLock":
        """Take ``run_dir``'s lock or raise :class:`RunLockedError` (held) / :class:`RunConfigError`
        (the folder cannot be written). ``say``: where the take-over message goes (default stderr)."""
        run_dir = Path(run_dir)
        path = run_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise unwritable(run_dir, exc) from None
        try:
            return cls._take(run_dir, path, fd, say)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _take(cls, run_dir: Path, path: Path, fd: int, say) -> "RunLock":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            raise RunLockedError(cls._refusal(run_dir, _read_fd(fd))) from None
        except OSError:  # no flock on this filesystem: the record alone decides below
            flocked = False
        old = _read_fd(fd)
        if old:
            same_host = old.get("host") == host_name()
            if not same_host:
                raise RunLockedError(
                    f"{run_dir} is locked by {describe_holder(old)}, another machine, which this one cannot check. "
                    f"If that run is no longer going, delete {path} and run again; else wait for it or use another --out")
            if not flocked and holder_alive(old):
                raise RunLockedError(cls._refusal(run_dir, old))
            message = (f"likeness bench: {run_dir} was left locked by {describe_holder(old)}, which is no longer "
                       "running (killed?); taking the lock over, its finished work is kept")
            if say is None:
                print(message, file=sys.stderr, flush=True)
            else:
                say(message)
        info = {"host": host_name(), "pid": os.getpid(), "started": _own_start(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "run_id": uuid.uuid4().hex,
                "command": " ".join(sys.argv)[:500]}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(info).encode("utf-8"))
            os.fsync(fd)
        except OSError as exc:
            raise unwritable(run_dir, exc) from None
        return cls(path, fd, info, old or None)

    @staticmethod
    def _refusal(run_dir: Path, holder: dict | None) -> str:
        return (f"{run_dir} is in use by {describe_holder(holder)}: one run per folder. Wait for it to finish "
                "(or stop it), or use another --out")

    @property
    def run_id(self) -> str:
        return self.info["run_id"]

    def release(self) -> None:
        """Empty the record and drop the lock (the file stays; see the module docstring)."""
        if self.fd < 0:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:  # e.g. the disk went read-only: the next run on this host takes it over
            pass
        try:
            os.close(self.fd)  # drops the flock
        finally:
            self.fd = -1


def _own_start() -> float:
    started = _process_start(os.getpid())
    return started if started is not None and started == started else time.time()


def check_lock(run_dir: str | Path, run_id: str) -> None:
    """On the other ranks of a run: the folder's lock must be the one their main process took."""
    info = read_lock(run_dir)
    if not info or info.get("run_id") != run_id:
        raise RunLockedError(f"{run_dir}: its lock ({LOCK_FILE}) is held by {describe_holder(info)}, not by this run's "
                             "main process; one run per folder")
