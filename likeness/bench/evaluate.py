"""``likeness evaluate``: dataset + generated images + metric names -> per-image rows in SQLite + a summary.

Metrics declare the features they need; images go through in batches and each feature (faces, each CLIP's
image and prompt embeddings, detections, VQA answers) is computed once per image and shared by every metric
that asked (``likeness.metrics.features``); reference photos are analysed once (FaceCache, embedding cache). Re-running skips (item, metric) pairs already stored under the same protocol.
One bad file never stops the run: it gets a status row (no_face, unreadable, bad_sidecar, ...)
and the loop goes on.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from likeness.bench.store import ResultsStore
from likeness.data.identities import Identity, load_identities
from likeness.data.layout import GeneratedItem, read_canonical_item, read_generated
from likeness.data.names import index_by_name
from likeness.faces import FaceCache, get_backend, metric_backend_options
from likeness.metrics import METRICS, Metric, Sample, Score
from likeness.metrics.base import VisionLanguageMetric
from likeness.metrics.features import FACES, FeatureError, FeatureExtractor

DEFAULT_METRICS = ("ips", "sis", "aps", "copy-gap")
log = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    store: Path
    summaries: list[dict]
    face_protocol: str = ""
    definitions: dict[str, str] = field(default_factory=dict)  # metric protocol name -> definition
    n_items: int = 0
    n_scored_now: int = 0
    n_skipped: int = 0
    dataset_problems: list[str] = field(default_factory=list)  # e.g. malformed attribute files, named
    status_counts: dict[str, int] = field(default_factory=dict)  # every input file by status (ok, image_missing, ...)
    warnings: list[str] = field(default_factory=list)  # scored, but worth a look (e.g. save_name != file name)
    notes: list[str] = field(default_factory=list)  # protocol choices made for the user (APS fallback)
    model_errors: list[str] = field(default_factory=list)  # one clear message per missing model


def is_vision_language(name: str) -> bool:
    factory = METRICS.get(name)
    return isinstance(factory, type) and issubclass(factory, VisionLanguageMetric)


def build_metrics(names, backend, cache, identities, models=None) -> list[Metric]:
    """Each metric gets what its factory accepts: face metrics the backend and cache, text-image metrics the
    shared vision-language models."""
    import inspect

    offered = {"backend": backend, "cache": cache, "identities": identities, "models": models}
    built = []
    for name in names:
        factory = METRICS.get(name)
        params = inspect.signature(factory).parameters
        accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values()) and not isinstance(factory, type)
        kwargs = {k: v for k, v in offered.items() if k in params or accepts_all}
        built.append(factory(**kwargs))
    return built


def protocol_names(names, backend=None, cache=None, identities=None, models=None) -> dict[str, str]:
    """Each metric's current protocol name: a stored row counts as done only under it (a row of an older
    protocol, e.g. ``goa/v1``, is stale and recomputed, never summarised with the new ones). Loads no model."""
    from likeness.models.vision_language import VisionModels

    built = build_metrics(names, backend, cache, identities, models if models is not None else VisionModels())
    return {m.name: m.protocol["name"] for m in built}


def evaluate(
    dataset: str | Path,
    generated: str | Path,
    store: str | Path,
    metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS,
    backend: str = "dlib",
    backend_options: dict | None = None,
    split: str = "all",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    models=None,
    batch_size: int = 8,
) -> EvaluationReport:
    """Score every generated image under ``generated`` against the people in ``dataset``. ``models``: a
    :class:`~likeness.models.vision_language.VisionModels` (model ids per role) for the text-image metrics."""
    identities = load_identities(dataset, split=split)
    items = read_generated(generated, identities)
    meta = {"dataset": str(dataset), "generated": str(generated)}
    report = score_items(items, identities, store, metrics, backend, backend_options, cache_dir, progress, meta,
                         models=models, batch_size=batch_size)
    report.dataset_problems = [problem for identity in identities for problem in identity.problems]
    return report


def evaluate_run_items(
    image_paths: list[Path],
    identities: list[Identity],
    metrics: tuple[str, ...] | list[str],
    store_path: str | Path,
    face_backend: str = "dlib",
    progress: bool = True,
    backend_options: dict | None = None,
    models=None,
) -> EvaluationReport:
    """Score images the benchmark runner wrote (canonical layout, one sidecar each).

    ``store_path`` may also be an open store (a runner rank's own store), used as is and left open."""
    by_name = index_by_name(identities)
    items = [read_canonical_item(path, by_name) for path in image_paths]
    return score_items(items, identities, store_path, metrics, face_backend, backend_options, None, progress, {}, models=models)



def score_items(
    items: list[GeneratedItem],
    identities: list[Identity],
    store: str | Path,
    metrics,
    backend: str = "dlib",
    backend_options: dict | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    meta: dict | None = None,
    cache: FaceCache | None = None,
    models=None,
    batch_size: int = 8,
) -> EvaluationReport:
    """The evaluation loop: batches of images, each needed feature computed once per image and shared by
    every metric, one row per (item, metric); then the summaries over everything in the store.

    ``cache`` (optional) supplies reference-photo faces; by default a fresh FaceCache over ``cache_dir``.
    The face backend is only built when a face metric is asked for. Scoring in parts (bench: each person's
    images as they are made) is :class:`Evaluator`'s :meth:`~Evaluator.score`, then one :meth:`~Evaluator.summarize`.
    """
    evaluator = Evaluator(metrics, identities, backend, backend_options, cache_dir, cache, models, batch_size)
    opened = store if isinstance(store, ResultsStore) else None
    with (nullcontext(opened) if opened else ResultsStore(store)) as results:
        report = evaluator.score(items, results, progress, meta)
        evaluator.summarize(results, report)
    return report


class Evaluator:
    """The metrics of one evaluation, built once (face backend, vision-language models, feature extractor and
    its per-reference caches): :meth:`score` takes items in as many parts as wanted (each part's rows are
    committed as they are computed), :meth:`summarize` reads the store once at the end."""

    def __init__(self, metrics, identities: list[Identity], backend: str = "dlib", backend_options: dict | None = None,
                 cache_dir: str | Path | None = None, cache: FaceCache | None = None, models=None, batch_size: int = 8):
        from likeness.models.vision_language import VisionModels

        self.metrics = list(metrics)
        self.identities = identities
        self.by_name = index_by_name(identities)
        face_backend = None
        if cache is not None:
            face_backend = cache.backend
        elif any(not is_vision_language(name) for name in self.metrics):
            face_backend = get_backend(backend, **metric_backend_options(backend, backend_options))
            cache = FaceCache(face_backend, cache_dir)
        self.face_backend = face_backend
        self.models = models if models is not None else VisionModels()
        self.scorers = build_metrics(self.metrics, face_backend, cache, identities, self.models)
        self.extractor = FeatureExtractor(self.models, face_backend)
        self.face_protocol = face_backend.protocol.describe() if face_backend is not None else ""
        self.batch_size = max(1, batch_size)
        self.notes = protocol_notes(self.scorers, identities)
        for note in self.notes:
            log.warning(note)

    def score(self, items: list[GeneratedItem], results: ResultsStore, progress: bool = True,
              meta: dict | None = None) -> EvaluationReport:
        """Score ``items`` into the open store (pairs already stored under the current protocol are skipped).
        The report has no summaries: :meth:`summarize` adds them."""
        scorers = self.scorers
        report = EvaluationReport(store=Path(results.path), summaries=[], n_items=len(items), face_protocol=self.face_protocol)
        report.notes = list(self.notes)
        report.warnings = [w for item in items for w in item.warnings]
        log.info("evaluating %d inputs with %s into %s", len(items), ", ".join(m.protocol["name"] for m in scorers), report.store)
        status: dict[str, str] = {}
        record = {**(meta or {}), "metrics": self.metrics, "models": {m.name: m.protocol.get("models") for m in scorers
                                                                      if m.protocol.get("models")}}
        if self.face_backend is not None:
            record["face_protocol"] = self.face_backend.protocol.to_dict()
        results.set_meta("last_evaluation", record)
        # A few items (bench: one person's): look up only theirs, not every row of the store.
        ids = [item.item_id for item in items] if len(items) <= 500 else None
        done = {m.name: results.done_items(m.name, m.protocol["name"], item_ids=ids) if items else set() for m in scorers}
        bar = tqdm(total=len(items), desc="evaluate", unit="img", disable=not progress)
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            rows, todo = [], []
            for item in batch:
                metrics_todo = [m for m in scorers if item.item_id not in done[m.name]]
                if not metrics_todo:
                    report.n_skipped += 1
                    status[item.item_id] = item.status if item.status != "ok" else "stored"
                elif item.status != "ok":
                    rows += [Score(item.item_id, m.name, None, item.status, None, m.protocol, {"problem": item.problem})
                             for m in metrics_todo]
                    status[item.item_id] = item.status
                    report.n_scored_now += 1
                else:
                    sample = Sample(item.item_id, item.image, self.by_name.get(item.identity), item.reference, item.meta)
                    todo.append((sample, metrics_todo))
            if todo:
                wanted = [f for _, ms in todo for m in ms for f in m.features]
                features = _safe_extract(self.extractor, [s for s, _ in todo], wanted)
                for (sample, metrics_todo), feats in zip(todo, features):
                    row_scores = [_safe_update(m, sample, feats) for m in metrics_todo]
                    rows += row_scores
                    faces = next((v for f, v in feats.items() if getattr(f, "kind", "") == "faces"), None)
                    status[sample.item_id] = getattr(faces, "status", None) or "ok"
                    report.n_scored_now += 1
            if rows:
                results.put(rows)
                for row in rows:
                    if row.status == "model_missing" and row.detail.get("problem") not in report.model_errors:
                        report.model_errors.append(row.detail.get("problem"))
            bar.update(len(batch))
        bar.close()
        if "stored" in status.values() and scorers:  # what an earlier run recorded for them
            stored = {s.item_id: s.status for s in results.scores(scorers[0].name, scorers[0].protocol["name"])}
            status = {i: stored.get(i, "stored") if v == "stored" else v for i, v in status.items()}
        report.status_counts = _count(status.values())
        return report

    def summarize(self, results: ResultsStore, report: EvaluationReport) -> EvaluationReport:
        """Every metric's summary over the whole store (bootstrap intervals, set-level values) and the
        exploitation penalty's derived rows, into ``report``: the expensive part, done once per run."""
        for m in self.scorers:
            report.summaries.append(m.summarize(results.scores(m.name, m.protocol["name"])))
            report.definitions[m.protocol["name"]] = m.definition
        report.summaries += _penalise(results, self.scorers, report)
        return report


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] != "ok", kv[0])))


def protocol_notes(scorers, identities) -> list[str]:
    """Choices of protocol the user did not make explicitly, said once per evaluation."""
    notes = []
    for m in scorers:
        if m.name == "aps" and m.version.startswith("agegender") and any(i.layout == "stellar" for i in identities):
            notes.append(f"APS: the Stellar dataset's *_attributes.json files carry no CelebA labels, so APS falls back "
                         f"to the label-free protocol {m.protocol['name']} (not comparable to Stellar APS)")
    return notes


def _penalise(results: ResultsStore, scorers: list[Metric], report: EvaluationReport) -> list[dict]:
    """Stellar's exploitation penalty, when CLIP-T and CLIP-N were computed with IPS, SIS and/or the APS probe:
    derived ``ips-penalised`` / ``sis-penalised`` / ``aps-penalised`` rows (rewritten, the threshold depends on
    the whole set) + summaries."""
    from likeness.metrics.penalty import PENALISED, PenalisedSummary, follows_prompt, penalised_rows

    by_name = {m.name: m for m in scorers}
    if "clip-t" not in by_name or "clip-n" not in by_name:
        return []
    clip_t = {s.item_id: s.value for s in results.scores("clip-t", by_name["clip-t"].protocol["name"])}
    clip_n = {s.item_id: s.value for s in results.scores("clip-n", by_name["clip-n"].protocol["name"])}
    follows, std = follows_prompt(clip_t, clip_n)
    summaries = []
    for raw_name, name in PENALISED.items():
        if raw_name not in by_name:
            continue
        rows = penalised_rows(results.scores(raw_name, by_name[raw_name].protocol["name"]), follows, std,
                              by_name["clip-t"].protocol["name"])
        results.put(rows)
        summary = PenalisedSummary(name).summarize(rows)
        summaries.append(summary)
        report.definitions[summary["protocol"]] = PenalisedSummary.definition
    aps = by_name.get("aps")
    if aps is not None and aps.version.startswith("probe"):
        from likeness.metrics.aps import set_summary, set_value
        from likeness.metrics.penalty import APS_PENALISED, flipped_aps_rows

        raw = results.scores("aps", aps.protocol["name"])
        rows = flipped_aps_rows(raw, follows, std, by_name["clip-t"].protocol["name"])
        results.put(rows)
        summary = set_summary(PenalisedSummary(APS_PENALISED).summarize(rows), rows)
        summary["flipped"] = sum(r.status == "flipped" for r in rows)
        summary["raw_value"] = set_value(raw)
        summaries.append(summary)
        report.definitions[summary["protocol"]] = rows[0].protocol["definition"] if rows else ""
    return summaries


def _safe_extract(extractor: FeatureExtractor, samples: list[Sample], wanted) -> list[dict]:
    """Features for the batch; if the batch raises, item by item, so one bad image fails alone."""
    try:
        return extractor.extract(samples, wanted)
    except Exception:
        out = []
        for sample in samples:
            try:
                out.append(extractor.extract([sample], wanted)[0])
            except Exception as exc:  # recorded as "failed" (retried on the next run), never fatal
                error = FeatureError("failed", f"{sample.image}: {type(exc).__name__}: {exc}")
                out.append({f: error for f in wanted})
        return out


def _safe_update(metric: Metric, sample: Sample, features: dict) -> Score:
    try:
        return metric.update_features([sample], [features])[0]
    except Exception as exc:  # recorded as "failed" (retried on the next run), never fatal
        faces = features.get(FACES)
        n_faces = len(faces.faces) if hasattr(faces, "faces") else None
        return Score(sample.item_id, metric.name, None, "failed", n_faces, metric.protocol,
                     {"problem": f"{sample.image}: {type(exc).__name__}: {exc}"})


def model_error_lines(model_errors: list[str]) -> list[str]:
    """What ``evaluate`` and ``bench`` print about models that could not be loaded (one line each)."""
    if not model_errors:
        return []
    return [f"models missing ({len(model_errors)}; their rows have status model_missing and are retried next run):"] + [
        f"  {problem}" for problem in model_errors]


def format_summary(report: EvaluationReport) -> str:
    """A plain-text table (with 95% bootstrap intervals of each mean over items), the penalty, exclusions,
    then the protocol of every metric (scores mean nothing without it)."""
    width = max([6] + [len(s["metric"]) for s in report.summaries])
    header = (f"{'metric':<{width}} {'value':>7} {'mean':>7} {'std':>7} {'95% CI':>17} {'count':>6} {'no_face':>8} "
              f"{'unscored':>9}  protocol")
    lines = [header, "-" * len(header)]
    for s in report.summaries:
        lo, hi = (s.get("ci95") or [float("nan")] * 2)[:2]
        ci = f"[{_num(lo).strip()}, {_num(hi).strip()}]"
        lines.append(f"{s['metric']:<{width}} {_num(s['value'])} {_num(s['mean'])} {_num(s['std'])} {ci:>17} {s['count']:>6} "
                     f"{s['no_face']:>8} {s['unscored']:>9}  {s['protocol']}")
        if s.get("per_attribute"):
            lines.append("       per attribute: " + ", ".join(f"{a} {v:.3f}" for a, v in s["per_attribute"].items()))
        if "other_similarity" in s:  # copy-gap
            lines.append(" " * (width + 1) + f"similarity to the reference {_num(s['reference_similarity']).strip()}, "
                         f"to the other photos {_num(s['other_similarity']).strip()}")
        if "confusion_rate" in s:  # multi-id
            lines.append(" " * (width + 1) + f"identity confusion: {s['confused']} face(s) closer to another named "
                         f"person, rate {_num(s['confusion_rate']).strip()}")
        other = {k: v for k, v in (s.get("statuses") or {}).items() if k != "ok"}
        if other:
            lines.append(" " * (width + 1) + "statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())))
    for s in report.summaries:
        if "flipped" in s:
            lines.append(f"exploitation penalty on APS (as the official code intends): raw {_num(s['raw_value']).strip()} -> "
                         f"penalised {_num(s['value']).strip()}; predictions of {s['flipped']} of {s['count']} images "
                         f"negated, {s['unjudged']} unjudged")
        elif "zeroed" in s:
            lines.append(f"exploitation penalty on {s['metric'].split('-')[0].upper()}: raw {_num(s['raw_value']).strip()} -> "
                         f"penalised {_num(s['value']).strip()}; {s['zeroed']} of {s['count']} images zeroed "
                         f"(CLIP-T <= CLIP-N + 2 std(CLIP-N), std {_num(s['clip_n_std']).strip()}), {s['unjudged']} unjudged")
    lines.append("")
    lines.append("value = the metric's headline number (APS probe: balanced accuracy averaged over attributes; otherwise the mean).")
    lines += [f"{name}: {text}" for name, text in report.definitions.items()]
    if report.face_protocol:
        lines.append(f"face protocol {report.face_protocol}")
    lines.append(f"{report.n_items} images: {report.n_scored_now} scored now, {report.n_skipped} already in {report.store}")
    if report.status_counts:
        lines.append("inputs by status: " + ", ".join(f"{k} {v}" for k, v in report.status_counts.items()))
    lines += [f"note: {note}" for note in report.notes]
    if report.warnings:
        lines.append(f"warnings ({len(report.warnings)}):")
        lines += [f"  {w}" for w in report.warnings[:10]]
        if len(report.warnings) > 10:
            lines.append(f"  ... and {len(report.warnings) - 10} more")
    lines += model_error_lines(report.model_errors)
    if report.dataset_problems:
        lines.append(f"dataset problems ({len(report.dataset_problems)}):")
        lines += [f"  {problem}" for problem in report.dataset_problems[:10]]
        if len(report.dataset_problems) > 10:
            lines.append(f"  ... and {len(report.dataset_problems) - 10} more")
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{'nan':>7}" if value is None or math.isnan(value) else f"{value:>7.3f}"
