"""``likeness bench``: personalize, generate, evaluate, in a run folder that survives being killed.

Run folder::

    RUN/run.json                  configuration + digest (a folder made by another config is refused)
    RUN/results.sqlite            items ledger + metric results (SQLite, WAL; written by the main process only)
    RUN/ranks/<host>-<rank>/      each process's own store (results.sqlite) and images/, merged at the end
    RUN/identities/astronaut/0.png  the bundled identity, when no dataset is given
    RUN/artifacts/<identity>-<ref>/  one personalization artifact per (identity, reference photo)
    RUN/images/<identity>/<item_id>.png + .json   canonical layout with sidecars

Steps, each resumable: (1) personalize every (identity, reference) pair that still has pending
items and no finished artifact, (2) generate the pending items, (3) evaluate the generated images
that have no results yet. Steps 1 and 2 run as a pipeline, person by person: an artifact is renamed
to its final name as soon as it is trained (so a kill loses at most the person being trained, and a
resumed run trains only the missing ones), and that person's images are generated right away, so
the first image comes after the first person, not the last; they are scored right after (step 3 for
that person, into the rank store, with the metrics' models loaded once per run), and step 3 proper only
scores what is left (an earlier run's unscored images). With one process the rank alternates
(train person k, generate and score person k's items); with several, each rank's personalization child
trains its next person while the rank generates (see :meth:`Runner.produce`). Summaries (intervals,
set-level values, the penalty) are computed once, over the merged store, at the end.
Under ``accelerate launch`` (one machine or several) each rank takes its share (plan position
modulo world size) and writes only its own rank store and image folder; the main process merges
them into the run's store when the run ends, and at the start of a resumed run (a dead node's
finished items count). Seeds come from item ids, so the split and the order change nothing.
One run per folder: the main process holds ``RUN/run.lock`` (:mod:`likeness.bench.runlock`).
A failure inside one item or one artifact is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from likeness.bench.failures import failure_reason
from likeness.bench.personalize_worker import train_unit
from likeness.bench.plan import RunConfig, RunConfigError, WorkItem, bind_run_folder, make_plan, record_runtime, shard
from likeness.bench.rankstore import MERGED_META, STORE_NAME, RankStore, host_name, merge_rank_stores, rank_folder
from likeness.bench.runlock import RunLock, RunLockedError, check_lock, unwritable
from likeness.bench.runstore import DONE, FAILED, FINAL, RunStore
from likeness.data.identities import Identity, load_identities
from likeness.data.layout import write_sidecar
from likeness.data.names import index_by_name, name_key

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
    timeline: dict[str, float] = field(default_factory=dict)  # phase -> seconds since this process started
    model_errors: list[str] = field(default_factory=list)  # text-image models that could not be loaded

    def describe(self) -> str:
        total = sum(self.counts.values())
        lines = [f"run {self.run_dir}: {self.counts.get(DONE, 0)}/{total} items done, {self.counts.get(FAILED, 0)} failed"]
        for f in self.failures[:10]:
            lines.append(f"  failed {f['item_id']}: {f['reason']}")
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more (see `likeness report`)")
        if any("[Errno 28]" in (f["reason"] or "") for f in self.failures):
            lines.append("  the disk was full: free some space, then rerun with --retry-failed (finished work is kept)")
        from likeness.bench.evaluate import model_error_lines

        return "\n".join(lines + model_error_lines(self.model_errors))


def builtin_identities(run_dir: Path) -> list[Identity]:
    """The bundled identity: the public-domain astronaut photo from scikit-image, saved in the run folder."""
    from PIL import Image
    from skimage import data

    photo = run_dir / "identities" / BUILTIN_IDENTITY / "0.png"
    if not photo.exists():
        photo.parent.mkdir(parents=True, exist_ok=True)
        tmp = photo.with_name(f".{host_name()}-{os.getpid()}.tmp.png")  # every rank may write it; the rename is atomic
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


def process_start() -> float:
    """When this process started (epoch seconds): the timeline counts interpreter start and imports too."""
    try:
        import psutil  # accelerate's dependency

        return psutil.Process().create_time()
    except Exception:
        return time.time()


def _start_worker(config: RunConfig):
    """Fork the personalization worker of a sharded run; None (spawn one when needed) where fork is
    unavailable, or once this process has joined the group (a later run of ``--method a,b``): a child
    forked then would inherit the group's state, and its training loop would wait on the other ranks."""
    import torch.distributed

    from likeness.bench.personalize_worker import ForkedWorker, preload
    from likeness.methods import get_method

    if not ForkedWorker.available() or os.environ.get("LIKENESS_SPAWN_WORKER") or torch.distributed.is_initialized():
        return None
    get_method(config.method)  # its module too: the child inherits everything imported so far
    preload()
    return ForkedWorker()


def use_local_gpu() -> None:
    """With several ranks on a machine, "cuda" means this rank's GPU (the LOCAL_RANK-th), as for its
    personalization child, instead of every rank generating on GPU 0."""
    import torch

    local = os.environ.get("LOCAL_RANK", "")
    if local.isdigit() and torch.cuda.is_available():
        torch.cuda.set_device(int(local) % torch.cuda.device_count())


def _unit(item: WorkItem) -> str:
    """The artifact an item needs: one per (identity, reference photo), as Stellar personalizes from one photo."""
    return f"{name_key(item.identity)}-{name_key(item.reference.stem)}"


def may_personalize(config: RunConfig, run_dir: Path, rank: int, world: int) -> bool:
    """Whether ``rank`` can be given an artifact to train (units go round-robin in name order): with
    fewer artifacts than ranks (the smoke run has one) the others need no personalization worker, whose
    fork and preload would only take CPU from the rank that trains. Unsure (bad input): True."""
    try:
        plan = make_plan(replace(config), resolve_identities(config, run_dir))
    except Exception:  # prepare() raises it on every rank alike
        return True
    return rank < len({_unit(item) for item in plan})


class Runner:
    """One process's view of a run. Create it on every rank; :meth:`run` does the whole job."""

    def __init__(self, config: RunConfig, run_dir: str | Path, *, progress: bool = True, retry_failed: bool = False,
                 state=None, batch_size: int | None = None, models=None):
        self._t0 = process_start()
        self.timeline: dict[str, float] = {"init": round(time.time() - self._t0, 3)}
        from accelerate import PartialState

        self.config = config
        self.run_dir = Path(run_dir)
        self._worker = None
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if state is None and world > 1 and may_personalize(config, self.run_dir, int(os.environ.get("RANK", "0")), world):
            self._worker = _start_worker(config)  # before the process group exists: see personalize_worker
            self._mark("forked")
        # The ranks' process group (gloo: it carries the run's bookkeeping, not tensors). Models run where the
        # runtime plan says: training no longer takes its device from accelerate's process state.
        self.state = state if state is not None else PartialState(cpu=True)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        if self.world > 1:
            use_local_gpu()
        from likeness.models.runtime import current_plan

        self.runtime = current_plan(**config.runtime)  # after the worker's fork: it may initialise CUDA
        self.rank_dir = rank_folder(self.run_dir, self.rank)
        self._mark("joined")
        self.progress = progress
        self.retry_failed = retry_failed
        # Images per pipeline call; pixels do not depend on it (one generator per image), so it is
        # not part of the run's configuration. Default: 1 on CPU, 4 on a GPU.
        self.batch_size = batch_size or default_batch_size(self.runtime)
        self.models = models  # VisionModels for the text-image metrics (None: env vars / defaults)
        self.seconds: dict[str, float] = defaultdict(float)
        self.failed_units: dict[str, str] = {}  # unit -> why its personalization failed (all ranks know all)
        self.model_errors: list[str] = []  # this rank's evaluation: models that could not be loaded
        self._evaluator = None  # the metrics, built on first use and kept for the whole run (models load once)
        self._score_early = True  # False once scoring as images are made has failed: the rest waits for evaluate()
        self.made: set[str] = set()  # items this process generated (DONE in its rank store)
        self.scored: set[str] = set()  # items this process scored
        self.lock: RunLock | None = None  # the folder's lock, held by the main process during run()

    # -- setup ------------------------------------------------------------------------------------

    def _mark(self, phase: str) -> None:
        self.timeline[phase] = round(time.time() - self._t0, 3)

    def prepare(self) -> list[WorkItem]:
        """Lock the folder, plan, bind the folder to the config, register items, merge what earlier runs'
        ranks finished.

        Every rank plans the same items; only the main process takes the folder's lock and opens the
        run's store, and sends the other ranks the lock's run id, what is left to do (item id -> attempts
        so far), which done items lack scores and which artifacts are already finished.
        """
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # e.g. a read-only disk
            raise unwritable(self.run_dir, exc) from None
        lock = None
        if self.state.is_main_process:  # before anything is written: a second run must not touch the first
            try:
                self.lock = RunLock.acquire(self.run_dir)
                lock = {"run_id": self.lock.run_id}
            except RunConfigError as exc:
                lock = {"error": str(exc), "type": type(exc).__name__}
        lock = self._broadcast(lock)
        if "error" in lock:  # every rank stops here, alike
            raise (RunLockedError if lock["type"] == "RunLockedError" else RunConfigError)(lock["error"])
        if self.lock is None:
            check_lock(self.run_dir, lock["run_id"])
        self.run_id = lock["run_id"]
        # Bad input raises here on every rank alike, before any collective a failed rank would never reach.
        self.identities = resolve_identities(self.config, self.run_dir)
        self.plan = make_plan(self.config, self.identities)
        # Every rank checks (so all fail alike); only the main one writes.
        bind_run_folder(self.run_dir, self.config, write=self.state.is_main_process)
        work = None
        if self.state.is_main_process:
            try:
                work = self._main_prepare()
            except (RunConfigError, ValueError) as exc:  # e.g. a rank store of another configuration
                work = {"error": str(exc), "type": type(exc).__name__}
        work = self._broadcast(work)
        if "error" in work:
            raise (RunConfigError if work["type"] == "RunConfigError" else ValueError)(work["error"])
        if self.state.is_main_process:  # only once the run is accepted: a refused one leaves the folder as it was
            record_runtime(self.run_dir, {**self.runtime.to_dict(), "ranks": self.world})
        self.attempts: dict[str, int] = work["pending"]
        self.unscored: set[str] = set(work["unscored"])
        self.finished_artifacts: set[str] = set(work["artifacts"])
        self.store = RankStore(self.rank_dir / STORE_NAME)
        self.store.bind(self.config.digest(), rank=self.rank, world=self.world, host=host_name(), pid=os.getpid(),
                        started=self._t0, run_id=self.run_id)
        self._mark("prepared")
        return self.plan

    def _main_prepare(self) -> dict:
        store = RunStore(self.run_dir / STORE_FILE)
        try:
            store.add_items(self.plan)
            # Ranks of earlier runs (a killed process, a dead node): their finished items count.
            self.merged = merge_rank_stores(self.run_dir, store, self.config.digest(), consume=True)
            store.reset_interrupted()
            if self.retry_failed:
                store.retry_failed()
            rows = store.items()
            unscored: set[str] = set()
            if self.config.metrics:
                from likeness.bench.evaluate import protocol_names

                done = {r["item_id"] for r in rows if r["status"] == DONE}
                # Scored under the metric's current protocol: rows of an older one are rescored, not kept.
                try:
                    cache = self._face_cache() if self._face_metrics() else None
                    protocols = protocol_names(self.config.metrics, cache.backend if cache else None, cache,
                                               self.identities, self.models)
                except Exception as exc:  # e.g. face models missing: evaluation records that per item later
                    import logging

                    logging.getLogger(__name__).warning("cannot name the metrics' protocols (%s); stored rows count "
                                                        "as scored", exc)
                    protocols = {}
                scored = set.intersection(*(store.done_items(m, protocols.get(m)) for m in self.config.metrics))
                unscored = done - scored
        finally:
            store.close()
        self._remove_partial_files()
        return {"pending": {r["item_id"]: r["attempts"] for r in rows if r["status"] not in FINAL},
                "unscored": sorted(unscored), "artifacts": self._finished_artifacts()}

    def _finished_artifacts(self) -> list[str]:
        """The artifacts already trained (their folder holds the manifest). Folders are renamed into place
        only when complete; one without a manifest (damaged by hand, or by an older version) is removed."""
        from likeness.methods.base import MANIFEST_NAME

        root = self.run_dir / "artifacts"
        finished = []
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            if (folder / MANIFEST_NAME).is_file():
                finished.append(folder.name)
            else:
                print(f"likeness bench: {folder} is not a finished artifact (no {MANIFEST_NAME}); removing it, "
                      "its person is trained again", file=sys.stderr)
                shutil.rmtree(folder, ignore_errors=True)
        return finished

    def _broadcast(self, obj):
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def _gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def _remove_partial_files(self) -> None:
        """Half-written images and half-trained artifacts of a killed process (their items are pending
        again). No other run can be writing them: this one holds the folder's lock."""
        for pattern in ("*/*.png.tmp", "*/.*.tmp"):
            for tmp in (self.run_dir / "images").glob(pattern):
                tmp.unlink(missing_ok=True)
        for tmp in (self.run_dir / "artifacts").glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def _bar(self, iterable, desc: str, total: int | None = None):
        """A progress bar; its time left is the whole run's (rate averaged since the start, training included)."""
        label = f"{desc} [rank {self.rank}/{self.world}]" if self.world > 1 else desc
        return tqdm(iterable, desc=label, total=total, disable=not self.progress, position=self.rank, leave=True,
                    smoothing=0)

    # -- steps 1 and 2: personalization and generation, person by person ------------------------------

    def artifact_dir(self, unit: str) -> Path:
        return self.run_dir / "artifacts" / unit

    def schedule(self) -> list[list[str]]:
        """The order artifacts become ready: first those already finished (their images can start at
        once), then rounds of one unit per rank; every rank computes the same rounds. Units to train go
        round-robin over ranks in name order (``self.owner``)."""
        units: dict[str, WorkItem] = {}
        for item in self.plan:
            if item.item_id in self.attempts:
                units.setdefault(_unit(item), item)
        self.units = units
        names = sorted(units)
        ready = [u for u in names if u in self.finished_artifacts]
        todo = [u for u in names if u not in self.finished_artifacts]
        self.owner = {u: k % self.world for k, u in enumerate(todo)}
        rounds = [todo[k:k + self.world] for k in range(0, len(todo), self.world)]
        return ([ready] if ready else []) + rounds

    def _spec_unit(self, unit: str) -> dict:
        item = self.units[unit]
        work = self.artifact_dir(unit).parent / f".tmp-{unit}-{os.getpid()}"
        return {"identity": item.identity, "photo": str(item.reference), "work": str(work),
                "final": str(self.artifact_dir(unit))}

    def produce(self, method) -> None:
        """Personalize the missing artifacts and generate this rank's pending items, one round at a time.

        Each artifact is renamed into place as soon as it is trained; then every rank learns which of
        the round's artifacts failed (one small collective per round) and generates (then scores) its
        items of the round's people, while (with several ranks) its personalization child already trains
        its next person. With one process, training runs here, between the rounds' generation: "train person k,
        generate person k's items" (two processes on one device would compete for its memory; ranks
        have their own). Pixels do not depend on the order: every image has its own seeded generator.
        """
        rounds = self.schedule()
        mine = [item for item in shard(self.plan, self.rank, self.world) if item.item_id in self.attempts]
        by_unit: dict[str, list[WorkItem]] = defaultdict(list)
        for item in mine:
            by_unit[_unit(item)].append(item)
        training = [self._spec_unit(u) for r in rounds for u in r if self.owner.get(u) == self.rank]
        options = {**self.config.method_options, "progress": self.progress}
        if self.world > 1:
            self._start_training(method, training, options)
        if not rounds:
            self._mark("personalized")
        note = _ProgressNote(len(self.units))
        bar = self._bar(None, "generate", total=len(mine))
        for k, batch in enumerate(rounds):
            trained = [u for u in batch if u in self.owner]
            errors = self._train_round([u for u in trained if self.owner[u] == self.rank], method, options)
            if trained and self.world > 1:
                errors = {u: e for part in self._gather(errors) for u, e in part.items()}
            self.failed_units.update({u: e for u, e in errors.items() if e is not None})
            if k == len(rounds) - 1:
                self._mark("personalized")
            nxt = rounds[k + 1] if k + 1 < len(rounds) else []
            bar.set_postfix_str(note.ready(len(batch), nxt), refresh=True)
            for unit in batch:
                self._generate_unit(method, unit, by_unit.get(unit, []), bar)
                if self._score_items(by_unit.get(unit, [])):
                    bar.set_postfix_str(note.scored(len(self.scored)), refresh=True)
        bar.close()
        self._stop_worker()
        self._mark("generated")

    def _start_training(self, method, units: list[dict], options: dict) -> None:
        """A sharded rank: its personalization child starts on all of its units (results read round by round)."""
        if units:
            from likeness.bench.personalize_worker import SpawnedWorker, method_source

            spec = {"method": self.config.method, **method_source(method), "base_model": self.config.base_model,
                    "options": options, "runtime": self.config.runtime, "units": units}
            if self._worker is None:
                self._worker = SpawnedWorker(self.rank_dir / "personalize.json")
            self._worker.submit(spec)
        elif self._worker is None:  # no worker was forked: generation's imports, while others train
            from likeness.bench.personalize_worker import preload

            preload()
        self._prewarm()  # while the worker (or other ranks) train

    def _train_round(self, units: list[str], method, options: dict) -> dict[str, str | None]:
        """This rank's units of one round, kept under their final names: {unit: None | failure reason}."""
        if not units:
            return {}
        started = time.perf_counter()
        specs = {u: self._spec_unit(u) for u in units}
        if self.world == 1:
            errors = {}
            for unit, spec in specs.items():
                shutil.rmtree(spec["work"], ignore_errors=True)
                errors[unit] = train_unit(method, spec, self.config.base_model, {**options, "plan": self.runtime})
        else:
            by_work = self._worker.collect([spec["work"] for spec in specs.values()])
            errors = {u: by_work[spec["work"]] for u, spec in specs.items()}
            for unit, error in errors.items():  # a child killed right after keeping an artifact: it is there
                if error is not None and self._artifact_finished(unit):
                    errors[unit] = None
        self.seconds["personalize"] += time.perf_counter() - started
        if "first_artifact" not in self.timeline and any(e is None for e in errors.values()):
            self._mark("first_artifact")
        return errors

    def _artifact_finished(self, unit: str) -> bool:
        from likeness.methods.base import MANIFEST_NAME

        return (self.artifact_dir(unit) / MANIFEST_NAME).is_file()

    def _generate_unit(self, method, unit: str, items: list[WorkItem], bar) -> None:
        """This rank's pending items of one person (their artifact is ready, or failed)."""
        if not items:
            return
        if unit in self.failed_units:
            for item in items:
                self.store.begin(item, self.rank, self.attempts[item.item_id])
                self.store.finish(item.item_id, FAILED, f"personalization failed: {self.failed_units[unit]}")
            bar.update(len(items))
            return
        started = time.perf_counter()
        try:
            quantized = {} if self.config.quantize in (None, "none") else {"quantize": self.config.quantize}
            personalized = method.load(self.artifact_dir(unit), plan=self.runtime, **quantized)
        except Exception as exc:
            for item in items:
                self.store.begin(item, self.rank, self.attempts[item.item_id])
                self.store.finish(item.item_id, FAILED, f"cannot load artifact: {failure_reason(exc)}")
            bar.update(len(items))
            return
        finally:
            self.seconds["load"] += time.perf_counter() - started
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            self._generate_batch(personalized, chunk)
            if "first_image" not in self.timeline:
                self._mark("first_image")
            bar.update(len(chunk))

    # -- step 2: generation -----------------------------------------------------------------------

    def image_path(self, item: WorkItem) -> Path:
        """Where the item's image is once merged into the run folder."""
        return self.run_dir / "images" / name_key(item.identity) / f"{item.item_id}.png"

    def rank_image_path(self, item: WorkItem) -> Path:
        """Where this rank writes it (its own folder; merged into :meth:`image_path` at the end)."""
        return self.rank_dir / "images" / name_key(item.identity) / f"{item.item_id}.png"

    def _generate_batch(self, personalized, items: list[WorkItem]) -> None:
        """One pipeline call for ``items`` (same artifact), each image from its own seed's generator."""
        for item in items:
            self.store.begin(item, self.rank, self.attempts[item.item_id] + 1)
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
            path = self.rank_image_path(item)
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
        self.made.add(item.item_id)

    # -- step 3: evaluation -----------------------------------------------------------------------

    def evaluate(self) -> None:
        """Score this rank's images that have no results yet: those :meth:`produce` could not score as they
        were made, and those an earlier run made but did not score. Set-level values (APS) and intervals are
        summarised once, over the merged store, by :meth:`finish`."""
        if not self.config.metrics:
            return
        made_now = {r["item_id"] for r in self.store.items(DONE)}
        todo = (made_now | self.unscored) - self.scored
        mine = [item for item in shard(self.plan, self.rank, self.world) if item.item_id in todo]
        self._score_early = False  # whatever fails now fails the run, as before
        if mine:
            self._score(mine, paths={i.item_id: self.rank_image_path(i) if i.item_id in made_now else self.image_path(i)
                                     for i in mine}, progress=self.progress)
        if self.scored:
            self._mark("evaluated")

    def _score_items(self, items: list[WorkItem]) -> bool:
        """Score one person's images right after they are made (called by :meth:`produce`), into the rank
        store: each batch's rows are committed as they are computed, so a kill keeps them and a resumed run
        does not score them again. The metrics' models stay loaded from one person to the next. An error
        here (e.g. face models missing) leaves the images to :meth:`evaluate`, which reports it as before."""
        items = [i for i in items if i.item_id in self.made and i.item_id not in self.scored]
        if not (self.config.metrics and items and self._score_early):
            return False
        try:
            self._score(items, paths={i.item_id: self.rank_image_path(i) for i in items}, progress=False)
        except Exception as exc:
            import logging

            self._score_early = False
            logging.getLogger(__name__).warning("cannot score images as they are made (%s); they are scored after "
                                                "generation", failure_reason(exc))
            return False
        if "first_score" not in self.timeline:
            self._mark("first_score")
        return True

    def _score(self, items: list[WorkItem], paths: dict[str, Path], progress: bool) -> None:
        from likeness.bench.evaluate import Evaluator
        from likeness.data.layout import read_canonical_item

        started = time.perf_counter()
        try:
            if self._evaluator is None:
                self._evaluator = Evaluator(self.config.metrics, self.identities, self.config.face_backend,
                                            cache=self._face_cache() if self._face_metrics() else None, models=self.models)
            by_name = index_by_name(self.identities)
            report = self._evaluator.score([read_canonical_item(paths[i.item_id], by_name) for i in items], self.store,
                                           progress=progress)
        finally:
            self.seconds["evaluate"] += time.perf_counter() - started
        self.scored.update(i.item_id for i in items)
        self.model_errors += [e for e in report.model_errors if e not in self.model_errors]

    def _prewarm(self) -> None:
        """Load the face models and analyse this rank's reference photos now, while it would only wait
        for training: evaluation needs them later. Errors are left to evaluation, which records them."""
        if not self._face_metrics():
            return
        try:
            cache = self._face_cache()
            names = {item.identity for item in shard(self.plan, self.rank, self.world) if item.item_id in self.attempts}
            for identity in self.identities:
                if identity.name in names:
                    for photo in identity.photos:
                        cache.get(photo)
        except Exception:
            pass
        self._mark("prewarmed")

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _face_metrics(self) -> bool:
        """Whether a face metric is asked for (the text-image metrics need no face backend)."""
        from likeness.bench.evaluate import is_vision_language

        return any(not is_vision_language(name) for name in self.config.metrics)

    def _face_cache(self):
        if getattr(self, "_cache", None) is None:
            from likeness.faces import FaceCache, get_backend

            self._cache = FaceCache(get_backend(self.config.face_backend, **self.config.face_options()), None)
        return self._cache

    def finish(self) -> tuple[dict[str, int], list[dict]]:
        """Close this rank's store; the main process merges every rank store into the run's store
        (moving the images into RUN/images) and summarises every metric over it. Returns the item
        counts and failed items (the whole run's on the main process, this rank's on the others)."""
        self.store.set_meta("timeline", self.timeline)
        counts, failures = self.store.counts(), self.store.items(FAILED)
        self.store.close()
        self.state.wait_for_everyone()  # every rank store is complete and closed
        if not self.state.is_main_process:
            return counts, failures
        store = RunStore(self.run_dir / STORE_FILE)
        try:
            self.merged = merge_rank_stores(self.run_dir, store, self.config.digest(), consume=True)
            if self.config.metrics:
                from likeness.bench.evaluate import score_items

                started = time.perf_counter()
                report = score_items([], self.identities, store, self.config.metrics, self.config.face_backend,
                                     cache=self._face_cache() if self._face_metrics() else None, progress=False,
                                     models=self.models)
                store.set_meta(SUMMARY_KEY, {s["metric"]: s for s in report.summaries})
                store.set_meta("face_protocol", report.face_protocol)
                self.seconds["evaluate"] += time.perf_counter() - started
            self._mark("merged")
            merged = store.get_meta(MERGED_META, {}) or {}
            if self.rank_dir.name in merged:  # the main rank's timeline goes on past its own store
                merged[self.rank_dir.name]["timeline"] = dict(self.timeline)
                store.set_meta(MERGED_META, merged)
            return store.counts(), store.items(FAILED)
        finally:
            store.close()

    # -- all together -----------------------------------------------------------------------------

    def run(self) -> RunSummary:
        from likeness.methods import get_method

        started = time.perf_counter()
        method = get_method(self.config.method)  # unknown method: clear error before any work
        check_metrics(self.config.metrics)
        self._mark("method")
        try:
            try:
                self.prepare()
                self.produce(method)
            finally:
                self._stop_worker()
            self.evaluate()
            counts, failures = self.finish()
        finally:
            if self.lock is not None:  # after the merge: the folder is complete and consistent
                self.lock.release()
                self.lock = None
        self.seconds["wall"] = time.perf_counter() - started
        return RunSummary(self.run_dir, counts, dict(self.seconds), failures, dict(self.timeline), self.model_errors)


class _ProgressNote:
    """What the generate bar says beside its count: people whose artifact is ready, and who is next."""

    def __init__(self, people: int):
        self.people, self.done, self.following, self.n_scored = people, 0, [], 0

    def ready(self, n: int, following: list[str]) -> str:
        self.done, self.following = self.done + n, following
        return self.text()

    def scored(self, n: int) -> str:
        self.n_scored = n
        return self.text()

    def text(self) -> str:
        text = f"people {self.done}/{self.people} ready"
        if self.n_scored:
            text += f", {self.n_scored} images scored"
        if self.following:
            text += ", next: " + ", ".join(self.following[:3]) + (" ..." if len(self.following) > 3 else "")
        return text


def default_batch_size(plan=None) -> int:
    """4 images per call on a GPU, 1 on the CPU (the runtime plan's device; without one, whether CUDA exists)."""
    if plan is not None:
        return 4 if plan.device_type == "cuda" else 1
    import torch

    return 4 if torch.cuda.is_available() else 1


def run_bench(config: RunConfig, run_dir: str | Path, *, progress: bool = True, retry_failed: bool = False,
              batch_size: int | None = None, models=None) -> RunSummary:
    """Run (or continue) a benchmark in ``run_dir``. Call it on every rank under ``accelerate launch``.
    ``models``: the text-image metrics' VisionModels (None: environment variables / defaults)."""
    return Runner(config, run_dir, progress=progress, retry_failed=retry_failed, batch_size=batch_size, models=models).run()
