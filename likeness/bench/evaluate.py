"""``likeness evaluate``: dataset + generated images + metric names -> per-image rows in SQLite + a summary.

Each generated image costs one face pass, shared by every metric; reference photos are analysed
once (FaceCache). Re-running skips (item, metric) pairs already stored under the same protocol.
One bad file never stops the run: it gets a status row (no_face, unreadable, bad_sidecar, ...)
and the loop goes on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from likeness.bench.store import ResultsStore
from likeness.data.identities import Identity, load_identities
from likeness.data.layout import GeneratedItem, read_canonical_item, read_generated
from likeness.faces import FaceCache, analyze_path, get_backend
from likeness.metrics import METRICS, Metric, Sample, Score

DEFAULT_METRICS = ("ips", "sis", "aps")


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


def build_metrics(names, backend, cache, identities) -> list[Metric]:
    return [METRICS.create(name, backend=backend, cache=cache, identities=identities) for name in names]


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
) -> EvaluationReport:
    """Score every generated image under ``generated`` against the people in ``dataset``."""
    identities = load_identities(dataset, split=split)
    items = read_generated(generated, identities)
    meta = {"dataset": str(dataset), "generated": str(generated)}
    report = score_items(items, identities, store, metrics, backend, backend_options, cache_dir, progress, meta)
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
) -> EvaluationReport:
    """Score images the benchmark runner wrote (canonical layout, one sidecar each)."""
    by_name = {i.name: i for i in identities}
    items = [read_canonical_item(path, by_name) for path in image_paths]
    return score_items(items, identities, store_path, metrics, face_backend, backend_options, None, progress, {})


PREFETCH = 64  # images per batched face pass when the backend has analyze_paths


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
) -> EvaluationReport:
    """The evaluation loop: one face pass per image shared by all metrics, one row per (item, metric).

    ``cache`` (optional) supplies reference-photo faces; by default a fresh FaceCache over ``cache_dir``.
    """
    by_name = {i.name: i for i in identities}
    face_backend = cache.backend if cache is not None else get_backend(backend, **(backend_options or {}))
    cache = cache if cache is not None else FaceCache(face_backend, cache_dir)
    scorers = build_metrics(metrics, face_backend, cache, identities)
    report = EvaluationReport(store=Path(store), summaries=[], n_items=len(items), face_protocol=face_backend.protocol.describe())
    with ResultsStore(store) as results:
        results.set_meta("last_evaluation", {**(meta or {}), "metrics": list(metrics), "face_protocol": face_backend.protocol.to_dict()})
        done = {m.name: results.done_items(m.name, m.protocol["name"]) for m in scorers}
        prefetched: dict = {}  # batched face backends (dlib-torch) analyse the next images together
        for index, item in enumerate(tqdm(items, desc="evaluate", unit="img", disable=not progress)):
            todo = [m for m in scorers if item.item_id not in done[m.name]]
            if todo and item.status == "ok" and str(item.image) not in prefetched and hasattr(face_backend, "analyze_paths"):
                upcoming = [i.image for i in items[index : index + PREFETCH] if i.status == "ok"
                            and any(i.item_id not in done[m.name] for m in scorers)]
                prefetched = dict(zip(map(str, upcoming), face_backend.analyze_paths(upcoming)))
            if not todo:
                report.n_skipped += 1
                continue
            if item.status != "ok":
                rows = [Score(item.item_id, m.name, None, item.status, None, m.protocol, {"problem": item.problem}) for m in todo]
            else:
                sample = Sample(item.item_id, item.image, by_name.get(item.identity), item.reference)
                faces = prefetched.pop(str(item.image), None) or analyze_path(face_backend, item.image)  # the one face pass
                rows = [_safe_update(m, sample, faces) for m in todo]
            results.put(rows)
            report.n_scored_now += 1
        for m in scorers:
            report.summaries.append(m.summarize(results.scores(m.name, m.protocol["name"])))
            report.definitions[m.protocol["name"]] = m.definition
    return report


def _safe_update(metric: Metric, sample: Sample, faces) -> Score:
    try:
        return metric.update([sample], [faces])[0]
    except Exception as exc:  # recorded as "failed" (retried on the next run), never fatal
        return Score(sample.item_id, metric.name, None, "failed", len(faces.faces), metric.protocol,
                     {"problem": f"{sample.image}: {type(exc).__name__}: {exc}"})


def format_summary(report: EvaluationReport) -> str:
    """A plain-text table, followed by the protocol of every metric (scores mean nothing without it)."""
    header = f"{'metric':<6} {'value':>7} {'mean':>7} {'std':>7} {'count':>6} {'no_face':>8} {'unscored':>9}  protocol"
    lines = [header, "-" * len(header)]
    for s in report.summaries:
        lines.append(f"{s['metric']:<6} {_num(s['value'])} {_num(s['mean'])} {_num(s['std'])} {s['count']:>6} "
                     f"{s['no_face']:>8} {s['unscored']:>9}  {s['protocol']}")
        if s.get("per_attribute"):
            lines.append("       per attribute: " + ", ".join(f"{a} {v:.3f}" for a, v in s["per_attribute"].items()))
    lines.append("")
    lines.append("value = the metric's headline number (APS probe: balanced accuracy averaged over attributes; otherwise the mean).")
    lines += [f"{name}: {text}" for name, text in report.definitions.items()]
    lines.append(f"face protocol {report.face_protocol}")
    lines.append(f"{report.n_items} images: {report.n_scored_now} scored now, {report.n_skipped} already in {report.store}")
    if report.dataset_problems:
        lines.append(f"dataset problems ({len(report.dataset_problems)}):")
        lines += [f"  {problem}" for problem in report.dataset_problems[:10]]
        if len(report.dataset_problems) > 10:
            lines.append(f"  ... and {len(report.dataset_problems) - 10} more")
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{'nan':>7}" if value is None or math.isnan(value) else f"{value:>7.3f}"
