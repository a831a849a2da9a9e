"""Personalization in a child process, for sharded runs.

Under ``accelerate launch`` every rank belongs to one process group, and a training loop started
by one rank alone (its ``Accelerator`` sees the group) would wait forever for the others, or, if
all ranks trained together, make an artifact that depends on the number of processes. So each rank
trains its artifacts in a child process that has no distributed environment: the artifact is then
the same as in a one-process run, and a crash while training fails that artifact's items instead
of killing the rank.

Protocol: ``python -m likeness.bench.personalize_worker SPEC.json``; SPEC holds ``method``,
``method_module`` (imported first, so methods registered outside likeness work too), ``base_model``,
``options`` and ``units`` (``identity``, ``photo``, ``work``). One JSON line per unit on stdout:
``{"work": ..., "error": null | "reason"}``.

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
import subprocess
import sys
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


def run_units(spec_path: str | Path, *, python: str = sys.executable) -> dict[str, str | None]:
    """Run the child; returns {work folder: None on success, else the failure reason}."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    env = child_environment(dict(os.environ))
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the parent's imports resolve alike
    proc = subprocess.run([python, "-m", "likeness.bench.personalize_worker", str(spec_path)], env=env,
                          stdout=subprocess.PIPE, stderr=None, text=True)
    results: dict[str, str | None] = {}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX):])
            results[record["work"]] = record["error"]
    for unit in spec["units"]:
        if unit["work"] not in results:
            results[unit["work"]] = f"personalization process exited with code {proc.returncode} before finishing"
    return results


def _units(spec: dict):
    """Train every unit of ``spec``; yields ``(work folder, None | failure reason)``."""
    from likeness.bench.failures import failure_reason
    from likeness.data.identities import Identity
    from likeness.methods import get_method

    from likeness.models.runtime import current_plan

    method = get_method(spec["method"])
    plan = current_plan(**spec.get("runtime", {}))  # in this child: its one visible GPU, or the CPU
    for unit in spec["units"]:
        error = None
        try:
            person = Identity(name=unit["identity"], photos=[Path(unit["photo"])])
            method.personalize([person], unit["work"], spec["base_model"], **{**spec["options"], "plan": plan})
        except Exception as exc:  # reported to the parent, which fails the unit's items with this reason
            error = failure_reason(exc)
        yield unit["work"], error


def method_source(method) -> dict:
    """How a child finds a method's registration: its module, or its file when it is the launched script."""
    module = type(method).__module__
    path = getattr(sys.modules.get(module), "__file__", None)
    return {"method_module": module, "method_file": path if module == "__main__" else None}


def main(spec_path: str) -> int:
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


class ForkedWorker:
    """A personalization child forked before the process group exists (see the module docstring)."""

    def __init__(self):
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
        try:
            self.conn.send(spec)
        except (OSError, ValueError):  # the child is gone: collect() reports it per unit
            pass

    def run(self, spec: dict) -> dict[str, str | None]:
        self.submit(spec)
        return self.collect(spec)

    def collect(self, spec: dict) -> dict[str, str | None]:
        """Wait for the units of the submitted ``spec``: {work folder: None on success, else the reason}."""
        results: dict[str, str | None] = {}
        try:
            while (message := self.conn.recv()) is not None:
                results[message[0]] = message[1]
        except (EOFError, OSError):  # the child died (out of memory, a crash in native code)
            self.proc.join(5)
        for unit in spec["units"]:
            if unit["work"] not in results:
                results[unit["work"]] = f"personalization process exited with code {self.proc.exitcode} before finishing"
        return results

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
