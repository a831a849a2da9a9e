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
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

# Variables that make torch.distributed / accelerate join a process group.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                   "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")
RESULT_PREFIX = "likeness-unit-result "


def run_units(spec_path: str | Path, *, python: str = sys.executable) -> dict[str, str | None]:
    """Run the child; returns {work folder: None on success, else the failure reason}."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
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


def main(spec_path: str) -> int:
    from likeness.bench.failures import failure_reason
    from likeness.data.identities import Identity
    from likeness.methods import get_method

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    importlib.import_module(spec["method_module"])
    method = get_method(spec["method"])
    for unit in spec["units"]:
        error = None
        try:
            person = Identity(name=unit["identity"], photos=[Path(unit["photo"])])
            method.personalize([person], unit["work"], spec["base_model"], **spec["options"])
        except Exception as exc:  # reported to the parent, which fails the unit's items with this reason
            error = failure_reason(exc)
        print(RESULT_PREFIX + json.dumps({"work": unit["work"], "error": error}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
