"""``likeness bench --processes N``: N ranks on one machine without a launcher.

``accelerate launch`` starts a launcher interpreter that imports torch (~1.4 CPU s), then N fresh
interpreters that each import torch, diffusers and likeness again, and waits ~1 s at exit: on a
short job this costs more than sharding saves (2 ranks were 0.77x of 1 process on the smoke run).
Here the ``likeness bench`` process itself imports everything a rank needs once, then forks N - 1
children; each process sets the environment a launcher would (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and runs the same
:class:`~likeness.bench.runner.Runner`, which joins the usual gloo group. Items, seeds and pixels are
those of any other launch (the plan does not depend on how ranks were started).

Fork must happen before CUDA is initialised and before any thread pool starts; nothing before
:func:`start` touches either. Several machines still use ``accelerate launch`` (docs/bench.md).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """``--processes`` cannot be used here (already launched, no fork, bad count)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalRanks:
    """This process's place among the forked ranks. Rank 0 is the original process."""

    rank: int
    world: int
    children: list[int] = field(default_factory=list)  # rank k's pid at index k - 1 (rank 0 only)
    codes: dict[int, int] = field(default_factory=dict)  # pid -> exit code, once reaped

    def lost(self) -> str:
        """Which forked ranks have already ended badly (killed, crashed), in words; "" when none."""
        for pid in self.children:
            if pid not in self.codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self.codes[pid] = os.waitstatus_to_exitcode(status)
        return "; ".join(f"rank {k} (pid {pid}) " + (f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
                         for k, pid in enumerate(self.children, 1) if (code := self.codes.get(pid, 0)) != 0)

    def finish(self, code: int, crashed: bool = False) -> int:
        """A forked rank exits here with ``code`` (its traceback first when it ``crashed``); rank 0 waits
        for every child and returns the worst code. When rank 0 itself failed, children still blocked on
        it get 10 s, then are terminated."""
        if self.rank != 0:
            if crashed:
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        deadline = time.monotonic() + 10 if code else None
        for pid in self.children:
            if pid not in self.codes:
                self.codes[pid] = _wait(pid, deadline)
        return max([code] + [1 if c < 0 else c for c in self.codes.values()])


def _wait(pid: int, deadline: float | None) -> int:
    """The child's exit code (negative: the signal that ended it), terminating it after ``deadline``."""
    while True:
        done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
            return -signal.SIGTERM
        time.sleep(0.05)


def start(processes: int, method: str) -> LocalRanks:
    """Import what every rank needs, then fork ``processes - 1`` ranks; returns in every process."""
    if processes < 1:
        raise LaunchError(f"--processes must be at least 1, got {processes}")
    if processes == 1:
        return LocalRanks(0, 1)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise LaunchError("--processes cannot be combined with accelerate launch (this process is already one of "
                          f"{os.environ['WORLD_SIZE']} ranks); use one or the other")
    if not hasattr(os, "fork"):
        raise LaunchError("--processes needs fork (Linux, macOS); use accelerate launch --num_processes N instead")
    from likeness.bench.personalize_worker import preload
    from likeness.methods import get_method

    get_method(method)  # its module too: the ranks inherit everything imported here
    preload()
    port = _free_port()
    sys.stdout.flush()  # else text still buffered here would be printed once by every rank
    sys.stderr.flush()
    children: list[int] = []
    rank = 0
    for k in range(1, processes):
        pid = os.fork()
        if pid == 0:
            rank, children = k, []
            break
        children.append(pid)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(processes), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    return LocalRanks(rank, processes, children)
