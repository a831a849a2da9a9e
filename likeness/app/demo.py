"""What the demo does, without the web page: check uploads, run methods side by side, collect scores.

:class:`Demo` is driven by the gradio page in :mod:`likeness.app.ui`, and directly by tests. A run
takes the visitor's photos, prompts and settings, runs each chosen method as a ``likeness bench``
child (one at a time per visitor, at most ``max_concurrent`` across visitors), and yields the page's
state as it goes: a status line per method, then a grid with one column per method and one row per
prompt (the reference photo beside it), each image with its scores and their protocol.

The demo offers every registered method whose weights it finds (:mod:`likeness.methods.discovery`: the weights
folders given with ``likeness demo --weights`` and the local hub cache), each on a base model of a family it runs
on: one base per family (``--base FAMILY=MODEL``, or ``FAMILY=MODEL`` lines in the page; by default the built-in
tiny bases, which work offline). Each column says its base and how long the person's personalization took:
training for trained methods, encoding the photo for tuning-free ones.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from likeness.app.jobs import JobRegistry, Progress, bench_command, one_run_per_visitor
from likeness.app.workspace import CACHE_DIR, UploadError, Workspace
from likeness.models.tiny import TINY_BASES

DEFAULT_BASE_MODEL = "likeness/tiny-sd"
# The base model of each family a method may run on, unless --base or the page says otherwise: the built-in tiny
# ones (random weights: noise, not pictures; they run offline).
DEFAULT_BASES = dict(TINY_BASES)
DEFAULT_METRICS = ["ips", "sis", "aps"]
THUMB = 192
POLL_S = 0.5


@dataclass
class RunRequest:
    """Everything a visitor sets for one run."""

    methods: list[str]
    # Base models: one model (the base of its own family), or FAMILY=MODEL entries (lines or commas); families not
    # named keep the demo's bases.
    base_model: str = DEFAULT_BASE_MODEL
    prompts: str = "{} riding a bicycle on the moon"
    category: str | None = None
    from_open_set: int = 0
    seed: int = 0
    images_per_prompt: int = 1
    steps: int | None = None  # denoising steps; None: the bench default (4 on tiny models, else 50)
    train_steps: int | None = None  # personalization steps of tuning methods; None: the bench default


@dataclass
class PageState:
    """What the page shows after each step of a run."""

    status: str
    grid: str = ""
    scores: list[dict] | None = None
    downloads: list[str] | None = None


def _thumb_uri(path: Path, side: int = THUMB) -> str:
    """A small inline PNG, so the grid is one self-contained HTML fragment (no file serving needed)."""
    from likeness.data.images import load_image

    image = load_image(path, min_side=1)
    image.thumbnail((side, side))
    if max(image.size) < side:  # tiny models make 64 px images: show them at a visible size
        scale = side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), resample=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _score_html(metric: str, value, status: str) -> str:
    """``IPS 0.412``; a score that is not a plain measurement says why (``IPS 0.000 no_face``)."""
    text = f"{html.escape(metric)} {'—' if value is None else f'{value:.3f}'}"
    if status != "ok":
        text += f' <i class="status">{html.escape(status)}</i>'
    return f'<span title="{html.escape(status)}">{text}</span>'


def check_base_model(base_model: str) -> str:
    """"" when the base model can be found (tiny ids, local folders, the hub cache), else why not."""
    from likeness.models.loading import ModelNotFoundError, resolve_model_path

    try:
        resolve_model_path(base_model)
    except ModelNotFoundError as exc:
        return str(exc)
    return ""


def parse_bases(text: str) -> tuple[dict[str, str], str]:
    """(``{family: base model}``, "") from ``FAMILY=MODEL`` entries (lines or commas; a bare model is the base of its
    own family), else ({}, why not)."""
    from likeness.models.families import FAMILY_NAMES
    from likeness.models.loading import base_model_info

    bases = {}
    for entry in (e.strip() for e in re.split(r"[\n,]", text or "")):
        if not entry:
            continue
        family, sep, model = (part.strip() for part in entry.partition("="))
        if sep and family not in FAMILY_NAMES:
            return {}, f"base models: unknown family {family!r} in {entry!r}; use one of {', '.join(FAMILY_NAMES)}"
        model = model if sep else entry
        problem = check_base_model(model)
        if problem:
            return {}, problem
        bases[family if sep else base_model_info(model).family] = model
    return bases, ""


class Demo:
    """The demo's state: its root folder, the face backend that checks uploads, the running jobs, the methods the
    weights found let it run (``weights``: folders; ``hub_cache``: also the local hub cache) and the base model of
    each family (``bases`` over :data:`DEFAULT_BASES`)."""

    def __init__(self, root: str | Path, *, max_concurrent: int = 1, face_backend: str = "dlib",
                 metrics: list[str] | None = None, runtime: list[str] | None = None, weights=(),
                 bases: dict[str, str] | None = None, hub_cache: bool = True):
        from likeness.faces import get_backend
        from likeness.methods.discovery import discover

        self.weights = [Path(w).expanduser().resolve() for w in weights or ()]
        self.hub_cache = hub_cache
        self.found = discover(self.weights, hub_cache=hub_cache)  # method -> what the weights let it run
        self.bases = {**DEFAULT_BASES, **(bases or {})}

        self.runtime = list(runtime or [])  # --device / --dtype ... words for every run's command
        self.root = Path(root).resolve()  # (gradio compares resolved paths with its cache folder)
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend = get_backend(face_backend)
        self.jobs = JobRegistry(max_concurrent)
        self.metrics = list(DEFAULT_METRICS if metrics is None else metrics)
        self.keep: set[str] = set()  # visitors who asked to keep their files after leaving
        # The web page's upload cache (GRADIO_TEMP_DIR, set by likeness.app.ui.launch). Uploads there are named
        # by content, so two visitors with the same photo share one file: it goes when the last of them leaves.
        self.cache = self.root / CACHE_DIR
        self._uploads: dict[str, set[Path]] = {}
        self._uploads_lock = threading.Lock()

    def workspace(self, visitor: str) -> Workspace:
        return Workspace(self.root, visitor)

    # -- uploads ------------------------------------------------------------------------------------

    def _remember(self, visitor: str, uploads) -> None:
        """Note the visitor's uploads that sit in the page's cache (never a file elsewhere), to delete on leave."""
        cache = self.cache.resolve()
        paths = {Path(str(u)).resolve() for u in uploads or []}
        with self._uploads_lock:
            self._uploads.setdefault(visitor, set()).update(p for p in paths if p.is_relative_to(cache) and p != cache)

    def _forget_uploads(self, visitor: str) -> None:
        with self._uploads_lock:
            mine = self._uploads.pop(visitor, set())
            held = set().union(*self._uploads.values()) if self._uploads else set()
        for path in mine - held:
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()  # the content-named folder gradio made for it, once empty
            except OSError:
                pass

    def check_photos(self, visitor: str, uploads: list, name: str = "me") -> str:
        """Check and keep the visitor's photos; a line per photo saying whether it can be used."""
        self._remember(visitor, uploads)
        try:
            checks = self.workspace(visitor).save_photos([str(u) for u in uploads or []], name, self.backend)
        except UploadError as exc:
            return f"⚠️ {exc}"
        lines = [f"- {'✅' if c.ok else '❌'} {html.escape(c.name)}: {html.escape(c.message)}" for c in checks]
        usable = sum(c.ok for c in checks)
        head = f"{usable} of {len(checks)} photo(s) usable" if usable else "⚠️ no usable photo: upload another one"
        return "\n".join([head, *lines])

    # -- running ------------------------------------------------------------------------------------

    @one_run_per_visitor(PageState)
    def run(self, visitor: str, request: RunRequest, uploads: list | None = None, name: str = "me"):
        """Run every requested method; yields :class:`PageState` as the run goes (last one: results)."""
        workspace = self.workspace(visitor)
        problem = self.check_run(visitor, request, uploads, name)
        if problem:
            yield PageState(f"⚠️ {problem}")
            return
        progress = {m: Progress(m) for m in request.methods}
        yield PageState(self._status(progress, "queued: waiting for a free slot"))
        self.jobs.begin(visitor)
        for method in request.methods:
            if self.jobs.cancelled(visitor):
                progress[method].state = "cancelled"
                continue
            with self.jobs.slots:  # at most max_concurrent methods run at once, across all visitors
                if self.jobs.cancelled(visitor):
                    progress[method].state = "cancelled"
                    continue
                yield from self._run_method(visitor, workspace, method, request, progress)
        yield self.results(visitor, request.methods, progress)

    def check_run(self, visitor: str, request: RunRequest, uploads=None, name: str = "me") -> str:
        """Why ``request`` cannot run ("" when it can): photos, methods, prompts, base model. Fast, takes no run
        slot: the page asks it before queueing the run, so a photo without a face is answered at once."""
        self._remember(visitor, uploads)
        return self._validate(self.workspace(visitor), request, uploads, name)

    def _validate(self, workspace: Workspace, request: RunRequest, uploads, name) -> str:
        from likeness.methods import METHODS

        if uploads:
            try:
                checks = workspace.save_photos([str(u) for u in uploads], name, self.backend)
            except UploadError as exc:
                return str(exc)
            refused = [c for c in checks if not c.ok]
            if refused and not any(c.ok for c in checks):
                return "; ".join(c.message for c in refused)
        if not workspace.photos():
            return "upload a photo of a person first"
        if not request.methods:
            return "pick at least one method"
        unknown = [m for m in request.methods if m not in METHODS]
        if unknown:
            return f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS.names())}"
        try:
            workspace.write_prompts(request.prompts, request.category, request.from_open_set)
        except (UploadError, ValueError) as exc:
            return str(exc)
        bases, problem = self.bases_for(request)
        if problem:
            return problem
        problems = [self.method_plan(method, bases)[2] for method in request.methods]
        return "; ".join(p for p in problems if p)

    # -- methods and their bases --------------------------------------------------------------------

    def bases_for(self, request: RunRequest) -> tuple[dict[str, str], str]:
        """The base model of each family for ``request``: its entries over the demo's (and why not, if they are bad)."""
        bases, problem = parse_bases(request.base_model)
        return {**self.bases, **bases}, problem

    def method_plan(self, method: str, bases: dict[str, str]) -> tuple[str, dict, str]:
        """(base model, method options, "") for running ``method``: the first family it runs on (in its own order)
        that has a base, with the options pointing at the weights found; else ("", {}, why not)."""
        found = self.found.get(method)
        if found is None:
            from likeness.methods.discovery import discover

            found = self.found[method] = discover(self.weights, hub_cache=self.hub_cache, methods=[method])[method]
        if found.any_family and not found.missing:
            return bases.get("sd1") or next(iter(bases.values())), found.options_for(""), ""
        if not found.available:
            return "", {}, f"{method} cannot run here: missing {'; '.join(found.missing)}"
        for family in found.families:
            if family in bases:
                return bases[family], found.options_for(family), ""
        return "", {}, (f"{method} runs on {', '.join(found.families)}: give a base model for one of them "
                        f"(FAMILY=MODEL)")

    def offered(self) -> list[str]:
        """The methods the page offers: those the weights found let run on one of the demo's bases."""
        return [m for m in self.found if not self.method_plan(m, self.bases)[2]]

    def methods_found(self) -> str:
        """The page's list (markdown): each method offered with its base and kind, then the others and what they miss."""
        lines, missing = [], []
        for method, found in self.found.items():
            base, options, problem = self.method_plan(method, self.bases)
            kind = "trained: training time" if found.trains else "tuning-free: encode time"
            if problem:
                missing.append(f"- {html.escape(problem)}")
                continue
            files = [f"`{html.escape(k)}={html.escape(str(v))}`" for k, v in options.items()]
            lines.append(f"- **{html.escape(method)}** on `{html.escape(base)}` ({kind})"
                         + (f": {', '.join(files)}" if files else ""))
        where = [f"`{w}`" for w in self.weights] + (["the local model cache"] if self.hub_cache else [])
        head = f"**{len(lines)} methods found** (in {' and '.join(where) or 'no weights folder'}):"
        return "\n".join([head, *lines] + (["", "**Not offered**:", *missing] if missing else []))

    def _run_method(self, visitor, workspace: Workspace, method: str, request: RunRequest, progress: dict):
        base, options, _ = self.method_plan(method, self.bases_for(request)[0])  # checked by _validate
        command = bench_command(
            workspace.run_dir(method), method, base_model=base, identities=workspace.identities,
            prompts=workspace.folder / "prompts.json", seeds=request.images_per_prompt, base_seed=request.seed,
            steps=request.steps, train_steps=request.train_steps, metrics=self.metrics, options=options) + self.runtime
        process = self.jobs.start(visitor, command, progress[method])
        try:
            while process.poll() is None:
                yield PageState(self._status(progress))
                time.sleep(POLL_S)
        finally:  # also when the page cancels this generator: never leave the child running
            process.kill()
            process.finish()
            self.jobs.done(visitor, process)
        yield PageState(self._status(progress))

    @staticmethod
    def _status(progress: dict[str, Progress], note: str = "") -> str:
        lines = [p.describe() for p in progress.values()]
        return "\n\n".join(lines + ([note] if note else []))

    def cancel(self, visitor: str) -> str:
        killed = self.jobs.cancel(visitor)
        return f"cancelled ({killed} running process{'es' if killed != 1 else ''} stopped)"

    def leave(self, visitor: str) -> None:
        """The visitor closed the page: stop their work and, unless they asked to keep it, delete it: their folder,
        their downloads and their uploads in the page's cache."""
        self.jobs.cancel(visitor)
        if visitor not in self.keep:
            self.workspace(visitor).remove()
            self._forget_uploads(visitor)

    # -- results ------------------------------------------------------------------------------------

    def results(self, visitor: str, methods: list[str], progress: dict[str, Progress] | None = None) -> PageState:
        """The grid, the score rows and the downloads of the visitor's finished runs."""
        from likeness.bench.report import read_results

        workspace = self.workspace(visitor)
        per_method = {}
        for method in methods:
            run_dir = workspace.run_dir(method)
            if (run_dir / "run.json").exists() and (run_dir / "results.sqlite").exists():
                per_method[method] = read_results(run_dir)
        rows = []
        for method, res in per_method.items():
            for item in res.items:
                for metric, (value, status) in sorted(item["scores"].items()):
                    rows.append({"method": method, "item_id": item["item_id"], "prompt_id": item["prompt_id"],
                                 "prompt": item["meta"].get("prompt_template", ""), "metric": metric,
                                 "value": value, "status": status})
                if not item["scores"]:
                    rows.append({"method": method, "item_id": item["item_id"], "prompt_id": item["prompt_id"],
                                 "prompt": item["meta"].get("prompt_template", ""), "metric": "",
                                 "value": None, "status": item["status"] + (f": {item['reason']}" if item.get("reason") else "")})
        status = self._status(progress) if progress else ""
        downloads = self._downloads(workspace, per_method, rows) if per_method else []
        keep = f"\n\nrun folders: `{workspace.runs}` (`likeness report` works on each)" if per_method else ""
        return PageState(status + keep, self._grid(workspace, per_method), rows, downloads)

    def _grid(self, workspace: Workspace, per_method: dict) -> str:
        if not per_method:
            return ""
        photos = workspace.photos()
        reference = f'<img src="{_thumb_uri(photos[0])}" alt="reference photo">' if photos else ""
        prompts: dict[str, str] = {}
        cells: dict[tuple[str, str], list[str]] = {}
        protocols: dict[str, set[str]] = {}
        for method, res in per_method.items():
            for metric, plist in res.protocols.items():
                for p in plist:
                    protocols.setdefault(metric, set()).add(p.get("name", "") if isinstance(p, dict) else str(p))
            for item in res.items:
                prompt_id = item["prompt_id"]
                prompts.setdefault(prompt_id, item["meta"].get("prompt_template", prompt_id))
                image = workspace.run_dir(method) / "images" / item["identity"] / f"{item['item_id']}.png"
                if item["status"] == "done" and image.exists():
                    scores = " ".join(_score_html(m, v, status) for m, (v, status) in sorted(item["scores"].items()))
                    body = f'<img src="{_thumb_uri(image)}" alt="{html.escape(item["item_id"])}"><div class="scores">{scores}</div>'
                else:
                    body = f'<div class="failed">{html.escape(item["status"])}: {html.escape(item.get("reason") or "")}</div>'
                cells.setdefault((prompt_id, method), []).append(body)
        methods = list(per_method)
        head = "".join(f"<th>{html.escape(m)}{self._column_note(m, per_method[m])}</th>" for m in methods)
        rows = []
        for prompt_id, text in prompts.items():
            row = "".join(f"<td>{''.join(cells.get((prompt_id, m), ['—']))}</td>" for m in methods)
            rows.append(f"<tr><td class='ref'>{reference}<div class='prompt'>{html.escape(text)}</div></td>{row}</tr>")
        protocol_list = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(', '.join(sorted(p)))}</li>"
                                for m, p in sorted(protocols.items()))
        return (
            "<div class='likeness-grid'><style>.likeness-grid td{vertical-align:top;padding:4px;text-align:center}"
            ".likeness-grid .scores{font-size:12px}.likeness-grid .prompt{font-size:12px;max-width:200px}"
            ".likeness-grid .failed{color:#a00;font-size:12px;max-width:200px}.likeness-grid .status{color:#a60}"
            ".likeness-grid .method-note{font-size:11px;font-weight:normal}</style>"
            f"<table><tr><th>reference / prompt</th>{head}</tr>{''.join(rows)}</table>"
            f"<details><summary>protocols behind the scores</summary><ul>{protocol_list}</ul>"
            "<p>Scores from different protocols are not comparable. Hover a score for its status.</p></details></div>"
        )

    def _column_note(self, method: str, res) -> str:
        """Under a column's method name: its base model and how long the person's personalization took (training
        for trained methods, encoding the photo for tuning-free ones), from the run folder."""
        found = self.found.get(method)
        seconds = list(res.personalize.values())
        kind = "training" if found is not None and found.trains else "encode"
        took = f"{kind} {sum(seconds) / len(seconds):.1f} s" if seconds else f"{kind} time —"
        base = html.escape(str(res.config.get("base_model", "")))
        return f'<div class="method-note">{base}<br><span class="personalize" title="per person">{took}</span></div>'

    def _downloads(self, workspace: Workspace, per_method: dict, rows: list[dict]) -> list[str]:
        """``results.zip`` (images, sidecars, scores.csv) and ``artifacts.zip`` (every method's artifact folders)."""
        out = workspace.downloads
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        results, artifacts = out / "results.zip", out / "artifacts.zip"
        with zipfile.ZipFile(results, "w", zipfile.ZIP_DEFLATED) as z:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=["method", "item_id", "prompt_id", "prompt", "metric", "value", "status"])
            writer.writeheader()
            writer.writerows(rows)
            z.writestr("scores.csv", text.getvalue())
            for method in per_method:
                images = workspace.run_dir(method) / "images"
                for path in sorted(images.rglob("*")):
                    if path.is_file() and path.suffix in (".png", ".json"):
                        z.write(path, f"{method}/{path.relative_to(images)}")
        with zipfile.ZipFile(artifacts, "w", zipfile.ZIP_DEFLATED) as z:
            for method in per_method:
                folder = workspace.run_dir(method) / "artifacts"
                for path in sorted(folder.rglob("*")):
                    if path.is_file() and not path.name.startswith("."):
                        z.write(path, f"{method}/{path.relative_to(folder)}")
        return [str(results), str(artifacts)]
