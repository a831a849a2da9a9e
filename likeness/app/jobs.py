"""Running methods for the demo: one ``likeness bench`` child process per method, watched and cancellable.

Each method runs as ``python -m likeness bench`` in its own process group, writing a normal run
folder. That keeps the demo's web process small and responsive, lets a visitor cancel (or close
the tab) without leaving a training process behind (the whole group is killed), and means what the
demo made can be resumed and reported with the ordinary commands. Progress comes from the child's
progress bars (tqdm lines on stderr): stage, items done, estimated time left.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# tqdm's default bar: "training:  45%|████▌     | 9/20 [00:03<00:04,  2.61it/s]"
_BAR = re.compile(r"(?P<desc>[A-Za-z][\w -]*?)(?: \[rank [^\]]*\])?:\s+\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
                  r"\s*\[(?P<elapsed>[\d:]+)<(?P<left>[\d:?]+)")
# The runner's own bars, in order ("training" is the loop inside "personalize"; tuning-free methods
# only encode there). Other bars (weight loading, ...) are not stages and are ignored.
STAGES = ("personalize", "training", "generating", "generate", "evaluate")
PERSONALIZE_STAGES = ("personalize", "training")


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


@dataclass
class Progress:
    """What a running method is doing, as the page shows it."""

    method: str
    state: str = "queued"  # queued | running | done | failed | cancelled
    stage: str = ""
    done: int = 0
    total: int = 0
    eta_s: float | None = None
    personalize_s: float | None = None  # from the first personalize bar to the first generate bar
    message: str = ""
    started: float = field(default_factory=time.monotonic)

    def describe(self) -> str:
        text = f"**{self.method}**: {self.state}"
        if self.state == "running" and self.stage:
            text += f", {self.stage} {self.done}/{self.total}"
            if self.eta_s is not None:
                text += f", about {self.eta_s:.0f} s left"
        if self.personalize_s is not None:
            text += f" (personalization {self.personalize_s:.1f} s)"
        if self.message:
            text += f": {self.message}"
        return text


def bench_command(run_dir: Path, method: str, *, base_model: str, identities: Path, prompts: Path, seeds: int,
                  base_seed: int, steps: int | None, train_steps: int | None, metrics: list[str],
                  options: dict | None = None) -> list[str]:
    """The ``likeness bench`` command line the demo runs for one method (also what a user would type); ``options``:
    method options (the weights files found), as ``--method-option KEY=JSON``."""
    command = [sys.executable, "-m", "likeness", "bench", "--out", str(run_dir), "--method", method,
               "--base-model", base_model, "--identities", str(identities), "--prompts", str(prompts),
               "--limit", "0", "--seeds", str(seeds), "--base-seed", str(base_seed), "--no-report"]
    if steps:
        command += ["--steps", str(steps)]
    if train_steps:
        command += ["--train-steps", str(train_steps)]
    if metrics:
        command += ["--metrics", ",".join(metrics)]
    for key, value in (options or {}).items():
        command += ["--method-option", f"{key}={json.dumps(value)}"]
    return command


class MethodProcess:
    """One child ``likeness bench`` run; :meth:`wait` follows its progress bars, :meth:`kill` ends its group."""

    def __init__(self, command: list[str], progress: Progress, env: dict | None = None):
        self.command = command
        self.progress = progress
        self.stderr_tail: list[str] = []
        self._personalize_started: float | None = None
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,  # its own group: kill() takes all of it
        )
        progress.state, progress.started = "running", time.monotonic()
        self._stdout: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=lambda: self._stdout.extend(
            self.proc.stdout.read().decode("utf-8", "replace").splitlines()), daemon=True)
        self._out_reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stderr(self) -> None:
        buffer = b""
        while True:
            chunk = self.proc.stderr.read1(4096) if hasattr(self.proc.stderr, "read1") else self.proc.stderr.read(4096)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            for line in lines:
                self._line(line.decode("utf-8", "replace").strip())
        self._line(buffer.decode("utf-8", "replace").strip())

    def _line(self, line: str) -> None:
        if not line:
            return
        match = _BAR.search(line)
        if match is None:
            self.stderr_tail = (self.stderr_tail + [line])[-20:]
            return
        p = self.progress
        stage = match["desc"].strip()
        if stage not in STAGES:
            return
        now = time.monotonic()
        if stage in PERSONALIZE_STAGES and self._personalize_started is None:
            self._personalize_started = now
        elif stage not in PERSONALIZE_STAGES and p.personalize_s is None and self._personalize_started is not None:
            p.personalize_s = now - self._personalize_started
        p.stage, p.done, p.total = stage, int(match["n"]), int(match["total"])
        p.eta_s = _seconds(match["left"])

    def poll(self) -> int | None:
        return self.proc.poll()

    def finish(self) -> None:
        """After the process ended: final state and, on failure, the child's own last error line."""
        self._reader.join(timeout=5)
        self._out_reader.join(timeout=5)
        p = self.progress
        if p.state == "cancelled":
            return
        if self.proc.returncode == 0:
            p.state, p.eta_s = "done", 0.0
            failed = [line for line in self._stdout if line.strip().startswith("failed ")]
            if failed:
                p.message = "; ".join(line.strip() for line in failed[:3])
        else:
            p.state = "failed"
            errors = [line for line in self.stderr_tail if "likeness bench:" in line or "Error" in line]
            p.message = (errors or self.stderr_tail or [f"exit code {self.proc.returncode}"])[-1][:400]

    def kill(self, grace_s: float = 5.0) -> None:
        """End the child and everything it started (SIGTERM, then SIGKILL after ``grace_s``)."""
        if self.proc.poll() is not None:
            return
        self.progress.state = "cancelled"
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=grace_s)
                return
            except subprocess.TimeoutExpired:
                continue


BUSY = ("⚠️ your previous Run is still going (queued or running): wait for its results, or press Cancel "
        "first; one Run at a time per visitor")


def one_run_per_visitor(page_state):
    """For ``Demo.run(self, visitor, ...)``, a generator of ``page_state`` objects: a second Run from a
    visitor whose Run is still going (queued or running) gets ``page_state(BUSY)`` at once, and that
    first Run goes on untouched (both would write the same run folders). The claim ends with the
    generator, also when the page closes it (cancel, tab closed)."""

    def decorate(run):
        @functools.wraps(run)
        def wrapper(self, visitor: str, *args, **kwargs):
            if not self.jobs.claim(visitor):
                yield page_state(BUSY)
                return
            try:
                yield from run(self, visitor, *args, **kwargs)
            finally:
                self.jobs.unclaim(visitor)

        return wrapper

    return decorate


class JobRegistry:
    """The running child processes of every visitor, so a cancel or a closed tab can end them, a limit
    on how many methods run at once across all visitors (the machine is shared), and which visitors
    have a Run going (one each)."""

    def __init__(self, max_concurrent: int = 1):
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._running: dict[str, list[MethodProcess]] = {}
        self._cancelled: set[str] = set()
        self._active: set[str] = set()  # visitors with a Run between its start and its results

    def claim(self, visitor: str) -> bool:
        """Mark ``visitor``'s Run as going; False when one already is."""
        with self._lock:
            if visitor in self._active:
                return False
            self._active.add(visitor)
            return True

    def unclaim(self, visitor: str) -> None:
        with self._lock:
            self._active.discard(visitor)

    def active(self, visitor: str) -> bool:
        with self._lock:
            return visitor in self._active

    def start(self, visitor: str, command: list[str], progress: Progress) -> MethodProcess:
        process = MethodProcess(command, progress)
        with self._lock:
            self._running.setdefault(visitor, []).append(process)
        return process

    def done(self, visitor: str, process: MethodProcess) -> None:
        with self._lock:
            running = self._running.get(visitor, [])
            if process in running:
                running.remove(process)

    def cancel(self, visitor: str) -> int:
        """Kill every process of ``visitor``; later methods of its job will not start. Returns how many."""
        with self._lock:
            self._cancelled.add(visitor)
            processes = list(self._running.get(visitor, []))
        for process in processes:
            process.kill()
        return len(processes)

    def begin(self, visitor: str) -> None:
        with self._lock:
            self._cancelled.discard(visitor)

    def cancelled(self, visitor: str) -> bool:
        with self._lock:
            return visitor in self._cancelled

    def pids(self, visitor: str) -> list[int]:
        with self._lock:
            return [p.pid for p in self._running.get(visitor, [])]
