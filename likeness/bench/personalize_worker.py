"""Personalization in a child process, for sharded runs.

Under ``accelerate launch`` every rank belongs to one process group, and a training loop started
by one rank alone (its ``Accelerator`` sees the group) would wait forever for the others, or, if
all ranks trained together, make an artifact that depends on the number of processes. So each rank
trains its artifacts in a child process that has no distributed environment: the artifact is then
the same as in a one-process run, and a crash while training fails that artifact's items instead
of killing the rank.

Protocol: ``python -m likeness.bench.personalize_worker SPEC.json``; SPEC holds ``method``,
``method_module`` (imported first, so methods registered outside likeness work too), ``base_model``,
``options`` and ``units`` (``identity``, ``photo``, ``work``, ``final``). The child trains the units in
order; each one is trained into ``work`` and, once finished, renamed to ``final`` at once (atomic,
:func:`keep_artifact`), so a kill loses at most the unit being trained. One JSON line per unit on
stdout, as soon as it is done: ``{"work": ..., "error": null | "reason"}``. The rank collects the
results of a few units at a time (:meth:`ForkedWorker.collect`) and generates their images while the
child trains the next ones.

How long each unit's personalization took (``method.personalize``: loading, then training or, for tuning-free
methods, encoding the photo) is kept in the run folder, ``timings/<unit>.json`` (not in the artifact, which is
shared as it is; :func:`personalize_seconds` reads them): the report, the leaderboard and the demo show it per person.

Starting that child costs an interpreter and the diffusers imports again (~6 s here, as much as a
whole smoke run's work), so on Linux a rank instead forks its worker (:class:`ForkedWorker`) right
after its own imports and *before* it joins the process group: the child inherits the imported
modules (and methods registered by the launching script), drops the distributed environment and
waits for work. The spawned child above stays as the fallback where ``fork`` is unavailable.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# Variables that make torch.distributed / accelerate join a process group.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                   "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")
RESULT_PREFIX = "likeness-unit-result "


def child_environment(env: dict[str, str], gpus: int | None = None) -> dict[str, str]:
    """The rank's environment without the distributed variables. The rank's own GPU stays the child's
    only visible one (its LOCAL_RANK-th, modulo the GPUs: more ranks than GPUs share them round-robin, as the
    runtime plan places the rank itself), so the ranks of one machine do not all train on GPU 0.
    ``gpus``: how many the machine has (default: asked of torch, which does not initialise CUDA for it)."""
    local_rank = env.get("LOCAL_RANK")
    child = {k: v for k, v in env.items() if k not in DISTRIBUTED_ENV}
    if local_rank is not None and local_rank.isdigit():
        visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        index = int(local_rank)
        if visible:
            child["CUDA_VISIBLE_DEVICES"] = visible[index % len(visible)]
        else:
            if gpus is None:
                import torch

                gpus = torch.cuda.device_count()
            child["CUDA_VISIBLE_DEVICES"] = str(index % gpus) if gpus else local_rank
    return child


def keep_artifact(work: str | Path, final: str | Path) -> None:
    """Move a finished artifact from its work folder to its final name at once (one atomic rename), so
    a final folder exists only when complete and a kill right after keeps it. An artifact another
    process kept first (same unit, same seeds) is left as it is and this copy dropped."""
    from likeness.methods.base import MANIFEST_NAME

    work, final = Path(work), Path(final)
    if not (work / MANIFEST_NAME).is_file():
        raise RuntimeError(f"{work}: personalization returned without writing {MANIFEST_NAME}")
    try:
        os.replace(work, final)
    except OSError:
        if not (final / MANIFEST_NAME).is_file():
            raise
        shutil.rmtree(work, ignore_errors=True)
        return
    try:  # the rename itself survives a power cut too
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


TIMINGS = "timings"  # RUN/timings/<unit>.json: {"seconds": how long the unit's personalization took}


def _timing_file(final: str | Path) -> Path:
    """Where the personalization time of the artifact ``RUN/artifacts/<unit>`` is kept: ``RUN/timings/<unit>.json``."""
    final = Path(final)
    return final.parent.parent / TIMINGS / f"{final.name}.json"


def personalize_seconds(run_dir: str | Path) -> dict[str, float]:
    """``{unit: seconds}`` of the run's finished artifacts whose personalization time was recorded (artifacts made
    before it was: left out)."""
    from likeness.methods.base import MANIFEST_NAME

    seconds = {}
    artifacts = Path(run_dir) / "artifacts"
    for folder in sorted(artifacts.iterdir()) if artifacts.is_dir() else []:
        record = _timing_file(folder)
        if (folder / MANIFEST_NAME).is_file() and record.is_file():
            try:
                seconds[folder.name] = float(json.loads(record.read_text(encoding="utf-8"))["seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged record: no time shown, nothing else lost
    return seconds


def train_unit(method, unit: dict, base_model: str, options: dict) -> str | None:
    """Train one unit into its work folder and keep it under its final name; None, or the failure reason
    (the work folder is then removed)."""
    from likeness.bench.failures import failure_reason
    from likeness.data.identities import Identity

    try:
        person = Identity(name=unit["identity"], photos=[Path(unit["photo"])])
        started = time.perf_counter()
        method.personalize([person], unit["work"], base_model, **options)
        seconds = time.perf_counter() - started
        keep_artifact(unit["work"], unit["final"])
        record = _timing_file(unit["final"])
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"seconds": round(seconds, 3)}), encoding="utf-8")
        return None
    except Exception as exc:  # the runner fails the unit's items with this reason; the run goes on
        shutil.rmtree(unit["work"], ignore_errors=True)
        return failure_reason(exc)


def _units(spec: dict):
    """Train every unit of ``spec``; yields ``(work folder, None | failure reason)`` after each."""
    from likeness.methods import get_method
    from likeness.models.runtime import current_plan

    method = get_method(spec["method"])
    plan = current_plan(**spec.get("runtime", {}))  # in this child: its one visible GPU, or the CPU
    for unit in spec["units"]:
        yield unit["work"], train_unit(method, unit, spec["base_model"], {**spec["options"], "plan": plan})


def _die_with_parent() -> None:
    """Linux: this child gets SIGKILL when the rank that started it dies, so a killed run leaves no
    training process behind (still writing into the run folder the next run has taken over)."""
    try:
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)
    except Exception:
        pass


def method_source(method) -> dict:
    """How a child finds a method's registration: its module, or its file when it is the launched script."""
    module = type(method).__module__
    path = getattr(sys.modules.get(module), "__file__", None)
    return {"method_module": module, "method_file": path if module == "__main__" else None}


def main(spec_path: str) -> int:
    if sys.platform.startswith("linux"):
        _die_with_parent()
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    if spec.get("method_file"):  # the method was registered by the script the rank runs
        loader = importlib.util.spec_from_file_location("likeness_launched_script", spec["method_file"])
        loader.loader.exec_module(importlib.util.module_from_spec(loader))
    else:
        importlib.import_module(spec["method_module"])
    for work, error in _units(spec):
        print(RESULT_PREFIX + json.dumps({"work": work, "error": error}), flush=True)
    return 0


def preload() -> None:
    """What personalization imports, loaded before forking so the worker starts warm (the rank needs
    the same modules anyway to generate and evaluate)."""
    import diffusers

    import likeness.faces  # noqa: F401
    import likeness.methods.preparation  # noqa: F401
    import likeness.methods.training  # noqa: F401

    diffusers.StableDiffusionPipeline, diffusers.StableDiffusionXLPipeline  # noqa: B018 (lazy imports)


def _serve(conn) -> None:
    _die_with_parent()
    env = child_environment(dict(os.environ))  # an Accelerator made here is a one-process one
    os.environ.clear()
    os.environ.update(env)
    while True:
        try:
            spec = conn.recv()
        except EOFError:
            return
        if spec is None:
            return
        for work, error in _units(spec):
            conn.send((work, error))
        conn.send(None)


class _Worker:
    """Results of the submitted units, collected a few at a time while the child trains the rest."""

    def __init__(self):
        self.results: dict[str, str | None] = {}
        self.ended = False  # the child sent everything, or is gone

    def _receive(self) -> tuple[str, str | None] | None:
        """The next unit's result; None once the child has nothing more to say."""
        raise NotImplementedError

    def _exit_code(self):
        raise NotImplementedError

    def collect(self, works) -> dict[str, str | None]:
        """Wait for the units whose work folders are ``works`` (a spec, or a list of folders):
        {work folder: None on success, else the reason}. A child that died fails what it had not done."""
        if isinstance(works, dict):
            works = [u["work"] for u in works["units"]]
        works = [str(w) for w in works]
        while not self.ended and any(w not in self.results for w in works):
            message = self._receive()
            if message is None:
                self.ended = True
            else:
                self.results[message[0]] = message[1]
        return {w: self.results[w] if w in self.results else
                f"personalization process exited with code {self._exit_code()} before finishing" for w in works}

    def run(self, spec: dict) -> dict[str, str | None]:
        self.submit(spec)
        return self.collect(spec)


class ForkedWorker(_Worker):
    """A personalization child forked before the process group exists (see the module docstring)."""

    def __init__(self):
        super().__init__()
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), name="likeness-personalize", daemon=True)
        self.proc.start()
        child.close()

    @staticmethod
    def available() -> bool:
        return "fork" in multiprocessing.get_all_start_methods() and sys.platform.startswith("linux")

    def submit(self, spec: dict) -> None:
        """Start training ``spec``'s units in the child; the rank is free meanwhile (see :meth:`collect`)."""
        self.ended = False
        try:
            self.conn.send(spec)
        except (OSError, ValueError):  # the child is gone: collect() reports it per unit
            self.ended = True

    def _receive(self):
        try:
            return self.conn.recv()  # (work, error); None after the spec's last unit
        except (EOFError, OSError):  # the child died (out of memory, a crash in native code)
            self.proc.join(5)
            return None

    def _exit_code(self):
        return self.proc.exitcode

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()


class SpawnedWorker(_Worker):
    """The fallback where fork is unavailable: ``python -m likeness.bench.personalize_worker SPEC``, its
    result lines read as they come."""

    def __init__(self, spec_path: str | Path, python: str = sys.executable):
        super().__init__()
        self.spec_path, self.python, self.proc = Path(spec_path), python, None

    def submit(self, spec: dict) -> None:
        self.spec_path.parent.mkdir(parents=True, exist_ok=True)
        self.spec_path.write_text(json.dumps(spec), encoding="utf-8")
        env = child_environment(dict(os.environ))
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the parent's imports resolve alike
        self.ended = False
        self.proc = subprocess.Popen([self.python, "-m", "likeness.bench.personalize_worker", str(self.spec_path)],
                                     env=env, stdout=subprocess.PIPE, stderr=None, text=True)

    def _receive(self):
        for line in self.proc.stdout:
            if line.startswith(RESULT_PREFIX):
                record = json.loads(line[len(RESULT_PREFIX):])
                return record["work"], record["error"]
        self.proc.wait()
        return None

    def _exit_code(self):
        return None if self.proc is None else self.proc.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
