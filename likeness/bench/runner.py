"""``likeness bench``: personalize, generate, evaluate, in a run folder that survives being killed.

Run folder::

    RUN/run.json                  configuration + digest (a folder made by another config is refused)
    RUN/results.sqlite            items ledger + metric results (SQLite, WAL; shared by all processes)
    RUN/identities/astronaut/0.png  the bundled identity, when no dataset is given
    RUN/artifacts/<identity>-<ref>/  one personalization artifact per (identity, reference photo)
    RUN/images/<identity>/<item_id>.png + .json   canonical layout with sidecars

Steps, each resumable: (1) personalize every (identity, reference) pair that still has pending
items, (2) generate the pending items, (3) evaluate the generated images that have no results yet.
Under ``accelerate launch`` each rank takes its share (plan position modulo world size) and all
ranks write into the same SQLite file; seeds come from item ids, so the split changes nothing.
A failure inside one item or one artifact is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from likeness.bench.failures import failure_reason
from likeness.bench.plan import RunConfig, WorkItem, bind_run_folder, make_plan, shard
from likeness.bench.runstore import DONE, FAILED, RunStore
from likeness.data.identities import Identity, load_identities
from likeness.data.layout import write_sidecar
from likeness.data.names import name_key

STORE_FILE = "results.sqlite"
BUILTIN = "builtin"
BUILTIN_IDENTITY = "astronaut"
SUMMARY_KEY = "metric_summaries"  # meta key: {metric: summary dict from Metric.summarize}


@dataclass
class RunSummary:
    run_dir: Path
    counts: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)  # wall + time inside each kind of work
    failures: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        total = sum(self.counts.values())
        lines = [f"run {self.run_dir}: {self.counts.get(DONE, 0)}/{total} items done, {self.counts.get(FAILED, 0)} failed"]
        for f in self.failures[:10]:
            lines.append(f"  failed {f['item_id']}: {f['reason']}")
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more (see `likeness report`)")
        return "\n".join(lines)


def builtin_identities(run_dir: Path) -> list[Identity]:
    """The bundled identity: the public-domain astronaut photo from scikit-image, saved in the run folder."""
    from PIL import Image
    from skimage import data

    photo = run_dir / "identities" / BUILTIN_IDENTITY / "0.png"
    if not photo.exists():
        photo.parent.mkdir(parents=True, exist_ok=True)
        tmp = photo.with_name(f".{os.getpid()}.tmp.png")  # every rank may write it; the rename is atomic
        Image.fromarray(data.astronaut()).save(tmp)
        tmp.replace(photo)
    return [Identity(name=BUILTIN_IDENTITY, photos=[photo])]


def resolve_identities(config: RunConfig, run_dir: Path) -> list[Identity]:
    if config.identities == BUILTIN:
        return builtin_identities(run_dir)
    return load_identities(config.identities)


def check_metrics(names: list[str]) -> None:
    from likeness.metrics import METRICS

    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known metrics: {', '.join(METRICS.names())}")


def _unit(item: WorkItem) -> str:
    """The artifact an item needs: one per (identity, reference photo), as Stellar personalizes from one photo."""
    return f"{name_key(item.identity)}-{name_key(item.reference.stem)}"


class Runner:
    """One process's view of a run. Create it on every rank; :meth:`run` does the whole job."""

    def __init__(self, config: RunConfig, run_dir: str | Path, *, progress: bool = True, retry_failed: bool = False,
                 state=None, batch_size: int | None = None, models=None):
        from accelerate import PartialState

        self.config = config
        self.run_dir = Path(run_dir)
        self.state = state if state is not None else PartialState(cpu=True)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.progress = progress
        self.retry_failed = retry_failed
        # Images per pipeline call; pixels do not depend on it (one generator per image), so it is
        # not part of the run's configuration. Default: 1 on CPU, 4 on a GPU.
        self.batch_size = batch_size or default_batch_size()
        self.models = models  # VisionModels for the text-image metrics (None: env vars / defaults)
        self.seconds: dict[str, float] = defaultdict(float)

    # -- setup ------------------------------------------------------------------------------------

    def prepare(self) -> list[WorkItem]:
        """Plan, bind the folder to the config, register items. Every rank plans the same items."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Bad input raises here on every rank alike, before any barrier a failed rank would never reach.
        self.identities = resolve_identities(self.config, self.run_dir)
        self.plan = make_plan(self.config, self.identities)
        # Every rank checks (so all fail alike); only the main one writes.
        bind_run_folder(self.run_dir, self.config, write=self.state.is_main_process)
        if self.state.is_main_process:
            store = RunStore(self.run_dir / STORE_FILE)
            store.add_items(self.plan)
            store.reset_interrupted()
            if self.retry_failed:
                store.retry_failed()
            store.close()
            self._remove_partial_files()
        self.state.wait_for_everyone()
        self.store = RunStore(self.run_dir / STORE_FILE)
        return self.plan

    def _remove_partial_files(self) -> None:
        """Half-written images and artifacts of a killed process (their items are pending again)."""
        for tmp in (self.run_dir / "images").glob("*/*.png.tmp"):
            tmp.unlink(missing_ok=True)
        for tmp in (self.run_dir / "artifacts").glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def _bar(self, iterable, desc: str, total: int | None = None):
        label = f"{desc} [rank {self.rank}/{self.world}]" if self.world > 1 else desc
        return tqdm(iterable, desc=label, total=total, disable=not self.progress, position=self.rank, leave=True)

    # -- step 1: personalization ------------------------------------------------------------------

    def artifact_dir(self, unit: str) -> Path:
        return self.run_dir / "artifacts" / unit

    def personalize(self, method) -> None:
        """Make the missing artifacts, round-robin over ranks; a failed one fails its items with the reason.

        With one process, training runs here; with several, each rank trains in a child process
        outside the process group (see :mod:`likeness.bench.personalize_worker`), so an artifact is
        the same whatever the number of processes.
        """
        pending = self.store.pending_ids()
        units: dict[str, WorkItem] = {}
        for item in self.plan:
            if item.item_id in pending:
                units.setdefault(_unit(item), item)
        names = sorted(units)
        mine = [u for k, u in enumerate(names) if k % self.world == self.rank and not self.artifact_dir(u).is_dir()]
        work = {u: self.artifact_dir(u).parent / f".tmp-{u}-{os.getpid()}" for u in mine}
        for folder in work.values():
            shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        if self.world == 1:
            errors = {}
            for unit in self._bar(mine, "personalize"):
                item = units[unit]
                try:
                    method.personalize([Identity(item.identity, [item.reference])], work[unit], self.config.base_model,
                                       **{**self.config.method_options, "progress": self.progress})
                    errors[unit] = None
                except Exception as exc:  # one bad photo must not stop the run
                    errors[unit] = failure_reason(exc)
        elif mine:
            from likeness.bench.personalize_worker import run_units

            spec = self.run_dir / "artifacts" / f".spec-rank{self.rank}.json"
            spec.parent.mkdir(parents=True, exist_ok=True)
            spec.write_text(json.dumps({
                "method": self.config.method, "method_module": type(method).__module__,
                "base_model": self.config.base_model, "options": {**self.config.method_options, "progress": self.progress},
                "units": [{"identity": units[u].identity, "photo": str(units[u].reference), "work": str(work[u])} for u in mine],
            }), encoding="utf-8")
            by_work = run_units(spec)
            errors = {u: by_work[str(work[u])] for u in mine}
        else:
            errors = {}
        for unit, error in errors.items():
            if error is None:
                work[unit].replace(self.artifact_dir(unit))  # atomic: an artifact folder exists only when complete
                continue
            shutil.rmtree(work[unit], ignore_errors=True)
            for it in self.plan:
                if _unit(it) == unit and it.item_id in pending:
                    self.store.finish(it.item_id, FAILED, f"personalization failed: {error}")
        self.seconds["personalize"] += time.perf_counter() - started
        self.state.wait_for_everyone()

    # -- step 2: generation -----------------------------------------------------------------------

    def image_path(self, item: WorkItem) -> Path:
        return self.run_dir / "images" / name_key(item.identity) / f"{item.item_id}.png"

    def generate(self, method) -> None:
        pending = self.store.pending_ids()
        mine = [item for item in shard(self.plan, self.rank, self.world) if item.item_id in pending]
        by_unit: dict[str, list[WorkItem]] = defaultdict(list)
        for item in mine:
            by_unit[_unit(item)].append(item)
        bar = self._bar(None, "generate", total=len(mine))
        for unit, items in sorted(by_unit.items()):
            started = time.perf_counter()
            try:
                personalized = method.load(self.artifact_dir(unit))
            except Exception as exc:
                for item in items:
                    self.store.finish(item.item_id, FAILED, f"cannot load artifact: {failure_reason(exc)}")
                bar.update(len(items))
                continue
            finally:
                self.seconds["load"] += time.perf_counter() - started
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                self._generate_batch(personalized, chunk)
                bar.update(len(chunk))
        bar.close()
        self.state.wait_for_everyone()

    def _generate_batch(self, personalized, items: list[WorkItem]) -> None:
        """One pipeline call for ``items`` (same artifact), each image from its own seed's generator."""
        for item in items:
            self.store.start(item.item_id, self.rank)
        started = time.perf_counter()
        try:
            images = personalized.generate(
                [item.prompt.prompts for item in items],
                [item.seed for item in items],
                identity=items[0].identity,
                num_inference_steps=self.config.steps,
                guidance_scale=self.config.guidance,
                height=self.config.resolution,
                width=self.config.resolution,
                batch_size=len(items),
            )
        except Exception as exc:  # the items fail with the reason; the run goes on
            for item in items:
                self.store.finish(item.item_id, FAILED, f"generation failed: {failure_reason(exc)}")
            if os.environ.get("LIKENESS_DEBUG"):
                traceback.print_exc()
            return
        seconds = (time.perf_counter() - started) / len(items)
        self.seconds["generate"] += seconds * len(items)
        for item, image in zip(items, images):
            self._save_one(personalized, item, image, seconds)

    def _save_one(self, personalized, item: WorkItem, image, seconds: float) -> None:
        try:
            path = self.image_path(item)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".png.tmp")  # not *.png, so readers never pick up a partial file
            image.save(tmp, format="PNG")
            tmp.replace(path)  # a killed write never leaves a half image under the final name
            meta = item.sidecar(self.config)
            meta["prompt"] = personalized.prompt(item.prompt.prompts, item.identity)
            meta.update(steps=self.config.steps, guidance=self.config.guidance, artifact=f"artifacts/{_unit(item)}")
            write_sidecar(path, meta)
        except Exception as exc:  # the item fails with its reason; the run goes on
            self.store.finish(item.item_id, FAILED, f"generation failed: {failure_reason(exc)}")
            if os.environ.get("LIKENESS_DEBUG"):
                traceback.print_exc()
            return
        self.store.finish(item.item_id, DONE, seconds=seconds)

    # -- step 3: evaluation -----------------------------------------------------------------------

    def evaluate(self) -> None:
        """Score generated images that have no results yet (ranks split the work, one store), then
        the main process summarises every metric over the whole store (set-level values such as APS)."""
        if not self.config.metrics:
            return
        from likeness.bench.evaluate import evaluate_run_items

        done = {r["item_id"] for r in self.store.items(DONE)}
        mine = [item for item in shard(self.plan, self.rank, self.world) if item.item_id in done]
        options = dict(identities=self.identities, metrics=self.config.metrics, store_path=self.run_dir / STORE_FILE,
                       face_backend=self.config.face_backend, models=self.models)
        started = time.perf_counter()
        report = evaluate_run_items([self.image_path(item) for item in mine], progress=self.progress, **options)
        self.seconds["evaluate"] += time.perf_counter() - started
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            if self.world > 1:  # the summaries above saw only part of the rows: redo them over the whole store
                report = evaluate_run_items([], progress=False, **options)
            self.store.set_meta(SUMMARY_KEY, {s["metric"]: s for s in report.summaries})
            self.store.set_meta("face_protocol", report.face_protocol)
        self.state.wait_for_everyone()

    # -- all together -----------------------------------------------------------------------------

    def run(self) -> RunSummary:
        from likeness.methods import get_method

        started = time.perf_counter()
        method = get_method(self.config.method)  # unknown method: clear error before any work
        check_metrics(self.config.metrics)
        self.prepare()
        self.personalize(method)
        self.generate(method)
        self.evaluate()
        self.seconds["wall"] = time.perf_counter() - started
        summary = RunSummary(self.run_dir, self.store.counts(), dict(self.seconds), self.store.items(FAILED))
        self.store.close()
        return summary


def default_batch_size() -> int:
    import torch

    return 4 if torch.cuda.is_available() else 1


def run_bench(config: RunConfig, run_dir: str | Path, *, progress: bool = True, retry_failed: bool = False,
              batch_size: int | None = None) -> RunSummary:
    """Run (or continue) a benchmark in ``run_dir``. Call it on every rank under ``accelerate launch``."""
    return Runner(config, run_dir, progress=progress, retry_failed=retry_failed, batch_size=batch_size).run()
