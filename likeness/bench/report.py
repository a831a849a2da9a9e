"""``likeness report RUN``: static HTML pages (plus thumbnails) that explain a run to a reader.

``index.html`` shows the leaderboard row in Stellar's layout (IPS, APS, SIS, GOA, RFS, then the other
metrics the run asked for; one that was not computed is shown as "—", never as 0) with the protocol
each score was measured under, per-category breakdown plots, and links to the image pages:
``pages/<identity>.html``, per identity (at most ``PER_PAGE`` images a page) a grid of generated images
next to the reference photo, each with its scores below (and on hover), linked to the full image.

It scales to a Stellar-size run (400 people x 50 prompts = 20,000 images): grids show small JPEG
thumbnails (``thumbs/``, written once and reused by the next report unless the image changed), loaded
lazily by the browser, a page at a time. It only reads the run folder, so it can be made while a run
is still going, and it opens from disk with no server and no network.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from likeness.bench.personalize_worker import personalize_seconds
from likeness.bench.plan import load_run_config
from likeness.bench.rankstore import merge_rank_stores, recorded_digest
from likeness.bench.runner import STORE_FILE, SUMMARY_KEY
from likeness.bench.runstore import DONE, FAILED, RunStore
from likeness.data.images import ImageError, load_image
from likeness.data.names import name_key

# Stellar's leaderboard columns, in the paper's order.
LEADERBOARD = ("IPS", "APS", "SIS", "GOA", "RFS")
# Then the text-image baselines and Gen4Gen's scores, and the preference scores.
TEXT_COLUMNS = ("CLIP-T", "CLIP-I", "CP-CLIP", "TI-CLIP", "PICKSCORE", "AESTHETIC", "HPSV2", "IMAGEREWARD")
# Identity scores beyond Stellar's: the copy-paste gap (small = the person, large = a copy of the reference) and
# the several-people score (likeness.metrics.copy_gap, likeness.metrics.multi_id).
IDENTITY_COLUMNS = ("COPY-GAP", "MULTI-ID")
# The open multimodal judge (likeness.metrics.judge), only when a run asked for it.
JUDGE_COLUMNS = ("JUDGE-IDENTITY", "JUDGE-PROMPT", "JUDGE-OVERALL")
COLUMNS = LEADERBOARD + IDENTITY_COLUMNS + TEXT_COLUMNS + JUDGE_COLUMNS
PREFERENCE = ("PICKSCORE", "AESTHETIC", "HPSV2", "IMAGEREWARD")
DASH = "—"
THUMB = 160
PER_PAGE = 200  # images per grid page (Stellar has 50 prompts per person: one page each)
PAGES_DIR, THUMBS_DIR, REFS_DIR = "pages", "thumbs", "refs"
FAILURES_SHOWN = 100  # failed items listed on the first page; each identity's page shows all of its own


@dataclass
class RunResults:
    """Everything the report shows, read once from the run folder."""

    run_dir: Path
    config: dict
    items: list[dict]  # items table rows + "meta" (sidecar) + "scores" {metric: (value, status)}
    totals: dict[str, float | None]  # leaderboard metric -> value (None: not computed)
    protocols: dict[str, list[dict]]  # metric -> distinct protocols
    counts: dict[str, int] = field(default_factory=dict)
    face_protocol: str = ""
    summaries: dict[str, dict] = field(default_factory=dict)  # upper-case metric -> its stored summary
    personalize: dict[str, float] = field(default_factory=dict)  # artifact (unit) -> seconds its personalization took


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def set_level_totals(store: RunStore) -> dict[str, float]:
    """Each metric's headline value as its own ``summarize`` computed it at the end of the run (APS is
    one balanced accuracy over the set, not a mean of per-image values), keyed by upper-case name."""
    summaries = store.get_meta(SUMMARY_KEY, {}) or {}
    totals = {}
    for name, summary in summaries.items():
        value = summary.get("value") if isinstance(summary, dict) else None
        if isinstance(value, (int, float)) and not math.isnan(value):
            totals[str(name).upper()] = float(value)
    return totals


def read_results(run_dir: str | Path) -> RunResults:
    run_dir = Path(run_dir)
    config = load_run_config(run_dir).to_dict()
    store = RunStore(run_dir / STORE_FILE)
    try:
        # What every rank has finished so far (also while a run is going, or after a node died).
        merge_rank_stores(run_dir, store, recorded_digest(run_dir))
        items = store.items()
        counts = store.counts()
        set_totals = set_level_totals(store)
        summaries = {str(k).upper(): v for k, v in (store.get_meta(SUMMARY_KEY, {}) or {}).items() if isinstance(v, dict)}
        face_protocol = store.get_meta("face_protocol", "") or ""
        by_item: dict[str, dict] = defaultdict(dict)
        protocols: dict[str, list[dict]] = defaultdict(list)
        seen: set[tuple[str, int]] = set()  # rows share their protocol's dict (store.py): compare each once
        for s in store.iter_scores():  # one row at a time: only (value, status) per row is kept
            metric = s.metric.upper()
            by_item[s.item_id][metric] = (s.value, s.status)
            if (metric, id(s.protocol)) not in seen:
                seen.add((metric, id(s.protocol)))
                if s.protocol and s.protocol not in protocols[metric]:
                    protocols[metric].append(s.protocol)
    finally:
        store.close()
    for item in items:
        item["scores"] = by_item.get(item["item_id"], {})
        sidecar = run_dir / "images" / name_key(item["identity"]) / f"{item['item_id']}.json"
        try:
            item["meta"] = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.exists() else {}
        except (OSError, json.JSONDecodeError):
            item["meta"] = {}
    personalize = personalize_seconds(run_dir)
    for item in items:  # the sidecar names the item's artifact (artifacts/<unit>)
        item["personalize_seconds"] = personalize.get(str(item["meta"].get("artifact", "")).rpartition("/")[2])
    totals: dict[str, float | None] = {}
    for metric in COLUMNS:
        if metric in set_totals:
            totals[metric] = set_totals[metric]
        else:
            totals[metric] = _mean(i["scores"][metric][0] for i in items if metric in i["scores"])
    return RunResults(run_dir, config, items, totals, dict(protocols), counts, face_protocol, summaries, personalize)


def metric_columns(configs: list[dict], totals: list[dict]) -> tuple[str, ...]:
    """Leaderboard columns, in Stellar's order: the metrics the runs asked for ("—" where one has no value yet)
    and those they have values for; never a column of dashes nobody asked for."""
    asked = {str(m).upper() for config in configs for m in (config.get("metrics") or [])}
    return tuple(m for m in COLUMNS if m in asked or any(t.get(m) is not None for t in totals))


def _fmt(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def category_table(results: RunResults) -> dict[str, dict[str, float | None]]:
    """category -> per-image metric -> mean over that category's images."""
    metrics = [m for m in COLUMNS if any(m in i["scores"] for i in results.items)]
    table: dict[str, dict[str, float | None]] = {}
    categories = sorted({c for i in results.items for c in i["meta"].get("categories", [])})
    for category in categories:
        members = [i for i in results.items if category in i["meta"].get("categories", [])]
        table[category] = {m: _mean(i["scores"][m][0] for i in members if m in i["scores"]) for m in metrics}
    return table


def plot_categories(table: dict, path: Path) -> Path | None:
    """Grouped bars: one group per category, one bar per metric. None when there is nothing to plot."""
    # Preference scores live on other scales (PickScore ~20, aesthetic ~5, ImageReward ~N(0, 1)): in the table,
    # not on this [0, 1] plot.
    metrics = sorted({m for row in table.values() for m, v in row.items() if v is not None and m not in PREFERENCE},
                     key=COLUMNS.index)
    if not table or not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(table)
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(categories) + 2), 3.6), dpi=100)
    for k, metric in enumerate(metrics):
        values = [table[c].get(metric) or 0.0 for c in categories]
        ax.bar([x + k * width for x in range(len(categories))], values, width, label=metric)
    ax.set_xticks([x + width * (len(metrics) - 1) / 2 for x in range(len(categories))])
    ax.set_xticklabels(categories, rotation=30, ha="right")
    values = [v for row in table.values() for v in row.values() if v is not None]
    ax.set_ylim(min(0.0, *values) - 0.05, max(1.0, *values) + 0.05)
    ax.axhline(0.0, color="#444", linewidth=0.8)
    ax.set_ylabel("mean score")
    ax.set_title("Scores by prompt category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _thumbnail(source: Path, target: Path) -> bool:
    """A small JPEG copy of ``source`` at ``target``, kept from an earlier report unless the source is newer.
    Written to a temporary name first, so an interrupted report never leaves half a thumbnail behind."""
    try:
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            return True
        image = load_image(source, min_side=1)
    except (ImageError, OSError):
        return False
    image.thumbnail((THUMB, THUMB))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    image.save(tmp, format="JPEG", quality=85)
    os.replace(tmp, target)
    return True


def write_thumbnails(jobs: list[tuple[Path, Path]]) -> set[Path]:
    """Thumbnails for (source, target) pairs, a few at a time (PIL decodes and encodes outside the GIL);
    returns the targets that exist."""
    if not jobs:
        return set()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        made = pool.map(lambda job: _thumbnail(*job), jobs)
        return {target for (_, target), ok in zip(jobs, made) if ok}


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin-bottom:1.5em}
figure{margin:0;width:170px;font-size:11px}figure img{width:160px;height:160px;object-fit:cover;border:1px solid #999}
figure.ref img{border:3px solid #2a6}figcaption{word-wrap:break-word}.fail{color:#b00}
code{background:#f6f6f6;padding:1px 3px}nav{margin:1em 0}
"""


def _scores_line(scores: dict) -> str:
    parts = []
    for metric in COLUMNS:
        if metric in scores:
            value, status = scores[metric]
            parts.append(f"{metric} {_fmt(value)}" + ("" if status == "ok" else f" ({status})"))
    return " · ".join(parts) or "not scored"


def _head(title: str) -> str:
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>"


def render_html(results: RunResults, out_dir: Path, ratings: str | Path | None = None) -> Path:
    """Write ``index.html``, the image pages and their thumbnails into ``out_dir`` (with ``ratings``: each
    metric's agreement with them, on the index page)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    cfg = results.config
    total = len(results.items)
    done = results.counts.get(DONE, 0)
    failed = results.counts.get(FAILED, 0)
    columns = metric_columns([cfg], [results.totals])
    parts = [_head(f"likeness report: {cfg['method']}"),
             f"<h1>likeness report: <code>{esc(cfg['method'])}</code> on <code>{esc(cfg['base_model'])}</code></h1>",
             f"<p>{done} of {total} items generated, {failed} failed. Run folder: <code>{esc(str(results.run_dir))}</code></p>"]

    # Leaderboard, Stellar layout.
    parts.append("<h2>Leaderboard</h2><table id='leaderboard'><tr><th class='l'>Method</th>"
                 + "".join(f"<th>{_label(m)}</th>" for m in columns) + "<th>images</th></tr>")
    parts.append(f"<tr><td class='l'>{esc(cfg['method'])}</td>"
                 + "".join(f"<td>{_fmt(results.totals[m])}</td>" for m in columns) + f"<td>{done}</td></tr></table>")
    parts.append("<p>— : metric not computed in this run (never counted as 0).</p>")
    parts += _intervals_and_penalty(results)
    if ratings is not None:
        parts += agreement_table(results, ratings)

    # Protocol.
    parts.append("<h2>Protocol</h2><ul id='protocol'>")
    parts.append(f"<li>generation: {cfg['steps']} steps, guidance {cfg['guidance']}, {cfg['resolution'] or 'model default'} px, "
                 f"{cfg['seeds']} seed(s) per prompt, base seed {cfg['base_seed']}, seeds derived from item ids</li>")
    parts.append(f"<li>prompts: <code>{esc(str(cfg['prompts']))}</code>, limit {cfg['prompt_limit']}; "
                 f"references per identity: {cfg['references'] or 'all'}</li>")
    for metric in sorted(results.protocols, key=lambda m: (COLUMNS.index(m) if m in COLUMNS else len(COLUMNS), m)):
        for proto in results.protocols.get(metric, []):
            parts.append(f"<li><b>{esc(metric)}</b> <code>{esc(str(proto.get('name', '')))}</code>: "
                         f"{esc(str(proto.get('definition', '')))}</li>")
    if results.face_protocol:
        parts.append(f"<li><b>face protocol</b>: {esc(results.face_protocol)}</li>")
    parts.append("</ul>")

    # Per-category breakdown.
    table = category_table(results)
    if table:
        metrics = [m for m in COLUMNS if any(m in row for row in table.values())]
        plot = plot_categories(table, out_dir / "categories.png")
        parts.append("<h2>By prompt category</h2>")
        if plot:
            parts.append("<img id='category-plot' src='categories.png' alt='scores by prompt category'>")
        parts.append("<table id='categories'><tr><th class='l'>category</th>" + "".join(f"<th>{_label(m)}</th>" for m in metrics) + "</tr>")
        for category, row in table.items():
            parts.append(f"<tr><td class='l'>{esc(category)}</td>" + "".join(f"<td>{_fmt(row.get(m))}</td>" for m in metrics) + "</tr>")
        parts.append("</table>")

    # Image pages: one (or more, PER_PAGE images each) per identity, linked from here.
    pages = write_image_pages(results, out_dir)
    parts.append("<h2>Images</h2><p>Per identity, every generated image beside its reference photo, with its scores.</p>"
                 "<table id='pages'><tr><th class='l'>identity</th><th>images</th><th>failed</th><th class='l'>pages</th></tr>")
    by_identity: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for page in pages:
        by_identity[page.identity].append((page.file, page.label))
    counts = _identity_counts(results)
    for identity, links in by_identity.items():
        made, lost = counts[identity]
        parts.append(f"<tr><td class='l'>{esc(identity)}</td><td>{made}</td><td>{lost}</td><td class='l'>"
                     + " ".join(f"<a href='{PAGES_DIR}/{esc(f)}'>{esc(label)}</a>" for f, label in links) + "</td></tr>")
    parts.append("</table>")

    failures = [i for i in results.items if i["status"] == FAILED]
    if failures:
        parts.append("<h2>Failed items</h2><table id='failures'><tr><th class='l'>item</th><th class='l'>reason</th></tr>")
        for item in failures[:FAILURES_SHOWN]:
            parts.append(f"<tr><td class='l'>{esc(item['item_id'])}</td><td class='l'>{esc(item['reason'] or '')}</td></tr>")
        parts.append("</table>")
        if len(failures) > FAILURES_SHOWN:
            parts.append(f"<p>... and {len(failures) - FAILURES_SHOWN} more, each on its identity's page.</p>")
    csv_path = write_leaderboard_csv(results, out_dir / "leaderboard.csv")
    parts.append(f"<p>Leaderboard with intervals as CSV: <a href='{esc(csv_path.name)}'>{esc(csv_path.name)}</a></p>")
    parts.append("</body></html>")
    page = out_dir / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


@dataclass
class ImagePage:
    file: str  # under out_dir/pages
    identity: str
    label: str  # "page 2 of 3" when an identity has several
    items: list[dict]


def plan_pages(results: RunResults) -> list[ImagePage]:
    """Each identity's items (in plan order), at most PER_PAGE a page; identities sorted by name."""
    by_identity: dict[str, list[dict]] = defaultdict(list)
    for item in results.items:
        by_identity[item["identity"]].append(item)
    pages = []
    for identity in sorted(by_identity):
        members = by_identity[identity]
        chunks = [members[k:k + PER_PAGE] for k in range(0, len(members), PER_PAGE)]
        for n, chunk in enumerate(chunks, 1):
            # keys are [a-z0-9_] (likeness.data.names), so "-2" never collides with another identity's page
            name = name_key(identity) + ("" if n == 1 else f"-{n}")
            pages.append(ImagePage(f"{name}.html", identity, "images" if len(chunks) == 1 else f"page {n} of {len(chunks)}",
                                   chunk))
    return pages


def _identity_counts(results: RunResults) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item in results.items:
        counts[item["identity"]][0] += item["status"] == DONE
        counts[item["identity"]][1] += item["status"] == FAILED
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _image_path(results: RunResults, item: dict) -> Path:
    return results.run_dir / "images" / name_key(item["identity"]) / f"{item['item_id']}.png"


def _ref_thumb(out_dir: Path, identity: str, reference: str) -> Path:
    return out_dir / REFS_DIR / f"{name_key(identity)}-{name_key(Path(reference).stem)}.jpg"


def _item_thumb(out_dir: Path, item: dict) -> Path:
    return out_dir / THUMBS_DIR / name_key(item["identity"]) / f"{item['item_id']}.jpg"


def write_image_pages(results: RunResults, out_dir: Path) -> list[ImagePage]:
    """``pages/*.html`` with their thumbnails (made once, kept for the next report); pages of an earlier report
    that this one does not write are removed."""
    esc = html.escape
    pages = plan_pages(results)
    jobs = {}
    for page in pages:
        for item in page.items:
            jobs[_ref_thumb(out_dir, item["identity"], item["reference"])] = Path(item["reference"])
            if item["status"] == DONE:
                jobs[_item_thumb(out_dir, item)] = _image_path(results, item)
    made = write_thumbnails([(source, target) for target, source in jobs.items()])
    folder = out_dir / PAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in set(folder.glob("*.html")) - {folder / p.file for p in pages}:
        old.unlink(missing_ok=True)

    def rel(path: Path) -> str:  # from a page in out_dir/pages (images may live outside out_dir)
        return esc(Path(os.path.relpath(path, folder)).as_posix())

    for k, page in enumerate(pages):
        nav = ["<a href='../index.html'>leaderboard</a>"]
        if k > 0:
            nav.append(f"<a rel='prev' href='{esc(pages[k - 1].file)}'>← {esc(pages[k - 1].identity)}</a>")
        if k + 1 < len(pages):
            nav.append(f"<a rel='next' href='{esc(pages[k + 1].file)}'>{esc(pages[k + 1].identity)} →</a>")
        nav_html = f"<nav>{' · '.join(nav)} · page {k + 1} of {len(pages)}</nav>"
        parts = [_head(f"{page.identity}: likeness report"), nav_html,
                 f"<h1>{esc(page.identity)}{'' if page.label == 'images' else ' (' + esc(page.label) + ')'}</h1>"]
        groups: dict[str, list[dict]] = defaultdict(list)
        for item in page.items:
            groups[item["reference"]].append(item)
        for reference, members in sorted(groups.items()):
            parts.append(f"<h3>reference <code>{esc(Path(reference).name)}</code></h3><div class='grid'>")
            thumb = _ref_thumb(out_dir, page.identity, reference)
            ref_img = (f"<img src='{rel(thumb)}' width='{THUMB}' height='{THUMB}' alt='reference photo of {esc(page.identity)}'>"
                       if thumb in made else "<p class='fail'>reference unreadable</p>")
            parts.append(f"<figure class='ref'>{ref_img}<figcaption>reference photo</figcaption></figure>")
            for item in members:
                prompt = item["meta"].get("prompt_template") or item["prompt_id"]
                thumb = _item_thumb(out_dir, item)
                if item["status"] == DONE and thumb in made:
                    line = _scores_line(item["scores"])
                    parts.append(
                        f"<figure class='gen' title='{esc(line)}'><a href='{rel(_image_path(results, item))}'>"
                        f"<img loading='lazy' src='{rel(thumb)}' width='{THUMB}' height='{THUMB}' alt='{esc(item['item_id'])}'></a>"
                        f"<figcaption>{esc(item['prompt_id'])}: {esc(prompt)}<br><b>{esc(line)}</b></figcaption></figure>")
                else:
                    reason = item["reason"] or ("image missing" if item["status"] == DONE else "")
                    parts.append(f"<figure class='gen'><figcaption class='fail'>{esc(item['item_id'])}: {esc(item['status'])}"
                                 f"{(' — ' + esc(reason)) if reason else ''}</figcaption></figure>")
            parts.append("</div>")
        parts += [nav_html, "</body></html>"]
        (folder / page.file).write_text("\n".join(parts), encoding="utf-8")
    return pages


def summary_text(results: RunResults) -> str:
    """The terminal summary: the leaderboard row, the item counts, the penalty, and the protocol of every score."""
    columns = metric_columns([results.config], [results.totals])
    header = "  ".join(f"{_label(m):>9}" for m in columns)
    row = "  ".join(f"{_fmt(results.totals[m]):>9}" for m in columns)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(results.counts.items()))
    protocols = [f"{metric}: {proto.get('name', '?')}" for metric in COLUMNS for proto in results.protocols.get(metric, [])]
    lines = [f"{results.config['method']} on {results.config['base_model']} ({counts})", header, row]
    for name in ("IPS-PENALISED", "SIS-PENALISED"):
        s = results.summaries.get(name)
        if s:
            lines.append(f"{name.split('-')[0]} with the exploitation penalty: {_fmt(_finite(s.get('value')))} "
                         f"(raw {_fmt(_finite(s.get('raw_value')))}; {s.get('zeroed', 0)} of {s.get('count', 0)} images zeroed)")
    if protocols:
        lines.append("protocol: " + "; ".join(protocols))
    if results.face_protocol:
        lines.append("faces: " + results.face_protocol)
    return "\n".join(lines)


def write_leaderboard_csv(results: RunResults, path: Path) -> Path:
    """One row per computed metric: value, 95% interval, images, zeroed (penalised identity scores)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        w.writerow(["method", "metric", "value", "ci_low", "ci_high", "count", "zeroed", "protocol"])
        for metric, s in results.summaries.items():
            lo, hi = (s.get("ci95") or [None, None])[:2]
            w.writerow([results.config["method"], metric, _finite(s.get("value")), _finite(lo), _finite(hi), s.get("count", ""),
                        s.get("zeroed", ""), s.get("protocol", "")])
    return path


def _label(metric: str) -> str:
    return {"PICKSCORE": "PickScore", "AESTHETIC": "Aesthetic", "HPSV2": "HPSv2", "IMAGEREWARD": "ImageReward",
            "JUDGE-IDENTITY": "Judge-ID", "JUDGE-PROMPT": "Judge-prompt", "JUDGE-OVERALL": "Judge"}.get(metric, metric)


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _intervals_and_penalty(results: RunResults) -> list[str]:
    """Each computed metric's mean with its 95% bootstrap interval over items, and Stellar's exploitation
    penalty (raw and penalised identity scores, how many images were zeroed)."""
    esc = html.escape
    parts = []
    rows = [(m, s) for m, s in results.summaries.items() if _finite(s.get("value")) is not None]
    if rows:
        parts.append("<h3>Confidence</h3><table id='intervals'><tr><th class='l'>metric</th><th>value</th>"
                     "<th>95% CI (bootstrap over items)</th><th>images</th><th class='l'>excluded / unscored</th></tr>")
        for metric, s in sorted(rows, key=lambda r: (COLUMNS.index(r[0]) if r[0] in COLUMNS else len(COLUMNS), r[0])):
            lo, hi = (s.get("ci95") or [None, None])[:2]
            other = ", ".join(f"{k} {v}" for k, v in sorted((s.get("statuses") or {}).items()) if k != "ok") or "none"
            parts.append(f"<tr><td class='l'>{esc(_label(metric))}</td><td>{_fmt(_finite(s.get('value')))}</td>"
                         f"<td>[{_fmt(_finite(lo))}, {_fmt(_finite(hi))}]</td><td>{s.get('count', 0)}</td>"
                         f"<td class='l'>{esc(other)}</td></tr>")
        parts.append("</table>")
    penalised = [(name, results.summaries[name]) for name in ("IPS-PENALISED", "SIS-PENALISED") if name in results.summaries]
    if penalised:
        parts.append("<h3>Exploitation penalty</h3><table id='penalty'><tr><th class='l'>metric</th><th>raw</th>"
                     "<th>penalised</th><th>zeroed</th><th>unjudged</th><th>std(CLIP-N)</th></tr>")
        for name, s in penalised:
            parts.append(f"<tr><td class='l'>{name.split('-')[0]}</td><td>{_fmt(_finite(s.get('raw_value')))}</td>"
                         f"<td>{_fmt(_finite(s.get('value')))}</td><td>{s.get('zeroed', 0)} of {s.get('count', 0)}</td>"
                         f"<td>{s.get('unjudged', 0)}</td><td>{_fmt(_finite(s.get('clip_n_std')))}</td></tr>")
        parts.append("</table><p>An image follows its prompt only if CLIP-T &gt; CLIP-N + 2·std(CLIP-N); otherwise its "
                     "IPS and SIS count 0 (Stellar), so a copy of the input photo cannot win.</p>")
    return parts


def agreement_table(results: RunResults, ratings: str | Path, samples: int = 1000) -> list[str]:
    """Each metric's agreement with the human ratings file (any form ``likeness agreement`` reads): Kendall tau-b
    with its 95% bootstrap interval per aspect, and pairwise accuracy for preferences."""
    from likeness.bench.agreement import agreement, read_human

    esc = html.escape
    human = read_human(ratings)
    values: dict[str, dict[str, float]] = defaultdict(dict)
    for item in results.items:
        for metric, (value, _status) in item["scores"].items():
            if value is not None and math.isfinite(value):
                values[metric][item["item_id"]] = value
    rows = agreement(human, dict(values), samples=samples)
    aspects = human.aspects()
    pairwise = any(r.pairs for r in rows)
    parts = [f"<h3>Agreement with human ratings</h3><p>Ratings: <code>{esc(str(ratings))}</code> ({esc(human.form)}). "
             "Kendall tau-b between each metric and the mean human rating per image"
             + (" (for preferences: each image's win rate), and the share of judged pairs the metric orders as the rater "
                "did" if pairwise else "") + "; 95% bootstrap intervals; n = rated images with a value.</p>",
             "<table id='agreement'><tr><th class='l'>metric</th>"
             + "".join(f"<th>{esc(a)}: tau [95% CI] (n)</th>" + (f"<th>{esc(a)}: pairs agreeing (n)</th>" if pairwise else "")
                       for a in aspects) + "</tr>"]
    by = {(r.metric, r.aspect): r for r in rows}
    for metric in sorted(values, key=lambda m: (COLUMNS.index(m) if m in COLUMNS else len(COLUMNS), m)):
        cells = []
        for aspect in aspects:
            r = by[(metric, aspect)]
            cells.append(f"<td>{_fmt(_finite(r.tau))} [{_fmt(_finite(r.ci95[0]))}, {_fmt(_finite(r.ci95[1]))}] ({r.n})</td>"
                         if r.n else f"<td>{DASH}</td>")
            if pairwise:
                lo, hi = r.accuracy_ci95 or (None, None)
                cells.append(f"<td>{_fmt(_finite(r.accuracy))} [{_fmt(_finite(lo))}, {_fmt(_finite(hi))}] ({r.pairs})</td>"
                             if r.pairs else f"<td>{DASH}</td>")
        parts.append(f"<tr><td class='l'>{esc(_label(metric))}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    return parts


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, ratings: str | Path | None = None) -> tuple[Path, str]:
    """Write the report of ``run_dir`` (default ``RUN/report``); returns (index.html path, terminal summary).
    ``ratings``: a human ratings file; the page then shows each metric's agreement with it."""
    results = read_results(run_dir)
    page = render_html(results, Path(out_dir) if out_dir else Path(run_dir) / "report", ratings)
    return page, summary_text(results)
