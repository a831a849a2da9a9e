"""``likeness bench``: personalize, generate, evaluate, in a run folder that survives being killed.

Run folder::

    RUN/run.json                  configuration + digest (a folder made by another config is refused)
    RUN/results.sqlite            items ledger + metric results (SQLite, WAL; written by the main process only)
    RUN/ranks/<host>-<rank>/      each process's own store (results.sqlite) and images/, merged at the end
    RUN/identities/astronaut/0.png  the bundled identity, when no dataset is given
    RUN/artifacts/<identity>-<ref>/  one personalization artifact per (identity, reference photo)
    RUN/images/<identity>/<item_id>.png + .json   canonical layout with sidecars

Steps, each resumable: (1) personalize every (identity, reference) pair that still has pending
items, (2) generate the pending items, (3) evaluate the generated images that have no results yet.
Under ``accelerate launch`` (one machine or several) each rank takes its share (plan position
modulo world size) and writes only its own rank store and image folder; the main process merges
them into the run's store when the run ends, and at the start of a resumed run (a dead node's
finished items count). Seeds come from item ids, so the split changes nothing.
A failure inside one item or one artifact is recorded with its reason; the run goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from likeness.bench.failures import failure_reason
from likeness.bench.plan import RunConfig, RunConfigError, WorkItem, bind_run_folder, make_plan, record_runtime, shard
from likeness.bench.rankstore import MERGED_META, STORE_NAME, RankStore, host_name, merge_rank_stores, rank_folder
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

    # -- setup ------------------------------------------------------------------------------------

    def _mark(self, phase: str) -> None:
        self.timeline[phase] = round(time.time() - self._t0, 3)

    def prepare(self) -> list[WorkItem]:
        """Plan, bind the folder to the config, register items, merge what earlier runs' ranks finished.

        Every rank plans the same items; only the main process opens the run's store, and sends the
        other ranks what is left to do (item id -> attempts so far) and which done items lack scores.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
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
        self.store = RankStore(self.rank_dir / STORE_NAME)
        self.store.bind(self.config.digest(), rank=self.rank, world=self.world, host=host_name(), pid=os.getpid(),
                        started=self._t0)
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
                done = {r["item_id"] for r in rows if r["status"] == DONE}
                scored = set.intersection(*(store.done_items(m) for m in self.config.metrics))
                unscored = done - scored
        finally:
            store.close()
        self._remove_partial_files()
        return {"pending": {r["item_id"]: r["attempts"] for r in rows if r["status"] not in FINAL},
                "unscored": sorted(unscored)}

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
        """Half-written images and artifacts of a killed process (their items are pending again)."""
        for pattern in ("*/*.png.tmp", "*/.*.tmp"):
            for tmp in (self.run_dir / "images").glob(pattern):
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
        pending = self.attempts
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
                                       **{**self.config.method_options, "progress": self.progress, "plan": self.runtime})
                    errors[unit] = None
                except Exception as exc:  # one bad photo must not stop the run
                    errors[unit] = failure_reason(exc)
        elif mine:
            from likeness.bench.personalize_worker import method_source, run_units

            spec = {"method": self.config.method, **method_source(method), "base_model": self.config.base_model,
                    "options": {**self.config.method_options, "progress": self.progress}, "runtime": self.config.runtime,
                    "units": [{"identity": units[u].identity, "photo": str(units[u].reference), "work": str(work[u])}
                              for u in mine]}
            if self._worker is not None:
                self._worker.submit(spec)
                self._prewarm()  # while the worker trains
                by_work = self._worker.collect(spec)
            else:
                path = self.rank_dir / "personalize.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(spec), encoding="utf-8")
                by_work = run_units(path)
            errors = {u: by_work[str(work[u])] for u in mine}
        else:
            errors = {}
            if self.world > 1:
                if self._worker is None:  # no worker was forked: generation's imports, while others train
                    from likeness.bench.personalize_worker import preload

                    preload()
                self._prewarm()  # while other ranks train
        self._stop_worker()
        for unit, error in errors.items():
            if error is None:
                work[unit].replace(self.artifact_dir(unit))  # atomic: an artifact folder exists only when complete
            else:
                shutil.rmtree(work[unit], ignore_errors=True)
        self.seconds["personalize"] += time.perf_counter() - started
        # Every rank learns every failure (also the wait until all artifacts exist); each fails its own items.
        self.failed_units = {u: e for part in self._gather(errors) for u, e in part.items() if e is not None}
        for it in shard(self.plan, self.rank, self.world):
            if it.item_id in pending and _unit(it) in self.failed_units:
                self.store.begin(it, self.rank, pending[it.item_id])
                self.store.finish(it.item_id, FAILED, f"personalization failed: {self.failed_units[_unit(it)]}")
        self._mark("personalized")

    # -- step 2: generation -----------------------------------------------------------------------

    def image_path(self, item: WorkItem) -> Path:
        """Where the item's image is once merged into the run folder."""
        return self.run_dir / "images" / name_key(item.identity) / f"{item.item_id}.png"

    def rank_image_path(self, item: WorkItem) -> Path:
        """Where this rank writes it (its own folder; merged into :meth:`image_path` at the end)."""
        return self.rank_dir / "images" / name_key(item.identity) / f"{item.item_id}.png"

    def generate(self, method) -> None:
        """This rank's pending items. No barrier after it: evaluation needs only this rank's own images."""
        mine = [item for item in shard(self.plan, self.rank, self.world)
                if item.item_id in self.attempts and _unit(item) not in self.failed_units]
        by_unit: dict[str, list[WorkItem]] = defaultdict(list)
        for item in mine:
            by_unit[_unit(item)].append(item)
        bar = self._bar(None, "generate", total=len(mine))
        for unit, items in sorted(by_unit.items()):
            started = time.perf_counter()
            try:
                personalized = method.load(self.artifact_dir(unit), plan=self.runtime)
            except Exception as exc:
                for item in items:
                    self.store.begin(item, self.rank, self.attempts[item.item_id])
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
        self._mark("generated")

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

    # -- step 3: evaluation -----------------------------------------------------------------------

    def evaluate(self) -> None:
        """Score this rank's images that have no results yet (made now, or by an earlier run) into its
        own store. Set-level values (APS) are summarised over the merged store by :meth:`finish`."""
        if not self.config.metrics:
            return
        from likeness.bench.evaluate import score_items
        from likeness.data.layout import read_canonical_item

        made_now = {r["item_id"] for r in self.store.items(DONE)}
        todo = made_now | self.unscored
        mine = [item for item in shard(self.plan, self.rank, self.world) if item.item_id in todo]
        if not mine:
            return
        by_name = index_by_name(self.identities)
        items = [read_canonical_item(self.rank_image_path(item) if item.item_id in made_now else self.image_path(item), by_name)
                 for item in mine]
        started = time.perf_counter()
        report = score_items(items, self.identities, self.store, self.config.metrics, self.config.face_backend,
                             cache=self._face_cache() if self._face_metrics() else None, progress=self.progress,
                             models=self.models)
        self.model_errors = report.model_errors
        self.seconds["evaluate"] += time.perf_counter() - started
        self._mark("evaluated")

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

            self._cache = FaceCache(get_backend(self.config.face_backend), None)
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
            self.prepare()
            self.personalize(method)
        finally:
            self._stop_worker()
        self.generate(method)
        self.evaluate()
        counts, failures = self.finish()
        self.seconds["wall"] = time.perf_counter() - started
        return RunSummary(self.run_dir, counts, dict(self.seconds), failures, dict(self.timeline), self.model_errors)


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
