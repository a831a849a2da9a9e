"""Several methods in one benchmark: the same plan (identities, prompts, seeds, metrics, face protocol) per
method, one leaderboard.

``run_methods`` runs each method into ``ROOT/<method>/``, an ordinary run folder (resumable, reportable
on its own); work items, and therefore seeds, depend only on what an item is, so every method draws the
same (identity, photo, prompt, seed) set. A method may run on a base model of its own (``bases``: FLUX
methods beside SDXL ones; ``likeness bench --method pulid@BASE,...``); its run folder records it, so the same
command continues it on the same base. ``build_leaderboard`` reads the run folders and writes
``ROOT/leaderboard.html`` with one row per method in Stellar's column order, the items each made or
failed, seconds per image and per person (personalization: training, or encoding for tuning-free methods),
each method's base model when they differ, and the protocol shared by all rows. A method whose artifacts failed
(wrong weights, no face...) keeps its row: its failed items and their first reason are shown.
"""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path

from likeness.bench.plan import RunConfig
from likeness.bench.report import DASH, _finite, _fmt, _label, build_report, metric_columns, read_results
from likeness.bench.runstore import DONE, FAILED

PAGE = "leaderboard.html"
PENALISED = "IPS-PENALISED"


def method_folder(root: Path, method: str) -> Path:
    return Path(root) / method


def run_methods(config: RunConfig, methods: dict[str, dict], root: str | Path, *, progress: bool = True,
                retry_failed: bool = False, report: bool = True, models=None, bases: dict[str, str] | None = None):
    """Run ``config`` once per method (``{method name: its options}``, merged over ``config.method_options``),
    each on ``bases[method]`` where given, else on ``config.base_model``."""
    from likeness.bench.runner import run_bench

    root = Path(root)
    summaries = []
    for method, options in methods.items():
        folder = method_folder(root, method)
        run = replace(config, method=method, method_options={**config.method_options, **(options or {})}, inputs={},
                      base_model=(bases or {}).get(method) or config.base_model)
        summaries.append(run_bench(run, folder, progress=progress, retry_failed=retry_failed, models=models))
        if report:
            build_report(folder)
    return summaries


def leaderboard_rows(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for run_dir in run_dirs:
        results = read_results(run_dir)
        seconds = [i["seconds"] for i in results.items if i.get("status") == DONE and i.get("seconds")]
        failed = [i for i in results.items if i["status"] == FAILED]
        people = list(results.personalize.values())
        rows.append({
            "method": results.config["method"], "run_dir": str(run_dir), "totals": results.totals,
            "done": results.counts.get(DONE, 0), "failed": results.counts.get(FAILED, 0), "items": len(results.items),
            "seconds_per_image": sum(seconds) / len(seconds) if seconds else None,
            "seconds_per_person": sum(people) / len(people) if people else None,
            "base_model": results.config.get("base_model", ""),
            "first_failure": failed[0]["reason"] if failed else "", "config": results.config,
            "protocols": results.protocols, "face_protocol": results.face_protocol,
            # Stellar's exploitation penalty (computed when the run has CLIP-T and CLIP-N): the copy-reference row's
            # IPS ~1 counts 0 here.
            "ips_penalised": (results.summaries.get(PENALISED) or {}).get("value"),
        })
    return rows


def build_leaderboard(run_dirs: list[str | Path], out_dir: str | Path) -> tuple[Path, str]:
    """One table, one row per run folder (method); returns (page path, terminal text)."""
    run_dirs = [Path(p) for p in run_dirs]
    rows = leaderboard_rows(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    head = rows[0]["config"] if rows else {}
    mixed = len({r["base_model"] for r in rows}) > 1  # methods on bases of their own: a column says which
    title = "likeness leaderboard" + ("" if mixed else f" on <code>{esc(str(head.get('base_model', '')))}</code>")
    # The metrics the runs asked for or have, in Stellar's order (not 13 columns of dashes for two metrics).
    columns = metric_columns([r["config"] for r in rows], [r["totals"] for r in rows])
    if any(_finite(r["ips_penalised"]) is not None for r in rows):  # right after IPS, its raw value
        at = columns.index("IPS") + 1 if "IPS" in columns else 0
        columns = (*columns[:at], PENALISED, *columns[at:])
        for row in rows:
            row["totals"] = {**row["totals"], PENALISED: _finite(row["ips_penalised"])}
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>likeness leaderboard</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td.l,th.l{text-align:left}</style></head><body>",
             f"<h1>{title}</h1>",
             "<table id='leaderboard'><tr><th class='l'>Method</th>" + ("<th class='l'>base model</th>" if mixed else "")
             + "".join(f"<th>{_label(m)}</th>" for m in columns)
             + "<th>images</th><th>failed</th><th>s / image</th><th>s / person</th><th class='l'>report</th></tr>"]
    for row in rows:
        report = Path(row["run_dir"]) / "report" / "index.html"
        link = f"<a href='{esc(str(report.relative_to(out_dir)) if report.is_relative_to(out_dir) else str(report))}'>report</a>"
        failure = f" title='{esc(row['first_failure'])}'" if row["first_failure"] else ""
        seconds = DASH if row["seconds_per_image"] is None else f"{row['seconds_per_image']:.2f}"
        person = DASH if row["seconds_per_person"] is None else f"{row['seconds_per_person']:.1f}"
        base = f"<td class='l'><code>{esc(str(row['base_model']))}</code></td>" if mixed else ""
        parts.append(f"<tr><td class='l'>{esc(row['method'])}</td>{base}" + "".join(f"<td>{_fmt(row['totals'][m])}</td>" for m in columns)
                     + f"<td>{row['done']}</td><td{failure}>{row['failed']}</td><td>{seconds}</td><td>{person}</td>"
                     f"<td class='l'>{link}</td></tr>")
    parts.append("</table><p>— : metric not computed (never counted as 0). Every row: same identities, prompts, seeds and "
                 f"metrics; {head.get('steps')} steps, guidance {head.get('guidance')}, {head.get('resolution') or 'model default'} px.</p>")
    for row in rows:
        if row["first_failure"]:
            parts.append(f"<p class='fail'><b>{esc(row['method'])}</b>: {row['failed']} failed, first: {esc(row['first_failure'])}</p>")
    if rows and rows[0]["face_protocol"]:
        parts.append(f"<p>face protocol: {esc(rows[0]['face_protocol'])}</p>")
    parts.append("</body></html>")
    page = out_dir / PAGE
    page.write_text("\n".join(parts), encoding="utf-8")
    width = max([len(r["method"]) for r in rows] + [6])
    lines = [f"{'method':<{width}}  " + "  ".join(f"{m:>{max(6, len(m))}}" for m in columns) + "  images  failed"
             + ("  base model" if mixed else "")]
    for row in rows:
        lines.append(f"{row['method']:<{width}}  " + "  ".join(f"{_fmt(row['totals'][m]):>{max(6, len(m))}}" for m in columns)
                     + f"  {row['done']:>6}  {row['failed']:>6}" + (f"  {row['base_model']}" if mixed else ""))
    return page, "\n".join(lines)
