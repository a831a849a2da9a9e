"""The composed dataset on disk (MyCanvas-like), written atomically and resumably.

Layout of a dataset folder::

    dataset.json          schema, concepts (token, class noun, photos with mask quality or skip
                          reason), the run's configuration and its fingerprint
    compositions.jsonl    one JSON line per finished composition (the commit record, see below)
    skipped.jsonl         one line per composition index that was skipped, with status and reason
    rejections.jsonl      review decisions: {"id", "reason"}; training leaves these entries out
    images/<id>.png       the repainted image (what training sees)
    composites/<id>.png   the pasted canvas before repainting
    masks/<id>/<concept>.png  where each concept is visible (white), canvas-sized
    cutouts/<concept>/<k>.png the extracted RGBA foregrounds
    review.html           contact sheet (``likeness compose review``)

A ``compositions.jsonl`` record::

    {"id": "c000007", "index": 7, "image": "images/c000007.png", "composite": "composites/c000007.png",
     "masks": {"mochi": "masks/c000007/mochi.png"}, "boxes": {"mochi": [x0, y0, x1, y1]},
     "concepts": ["mochi", "kettle"], "class_nouns": {"mochi": "dog"}, "tokens": {"mochi": "<mochi>"},
     "sources": {"mochi": "photos/mochi/1.png"}, "mask_quality": {"mochi": 0.93}, "caption": "...",
     "background": "a sunny garden", "planner": "offline", "seed": 7001, "canvas": [1024, 1024],
     "repaint": {"model": ..., "strength": 0.9, ...} | null}

Atomicity: every file is written under a temporary name and renamed into place; the JSON line is
appended (one write, flushed and fsync'ed) only after all of an entry's files exist. So an entry is
in the dataset exactly when its line is, and a run killed at any moment leaves at most a half-written
last line, which the next run cuts off before continuing. Composition ``i`` depends only on the seed
and ``i``, so the resumed run writes what the uninterrupted one would have.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SCHEMA = "likeness-mycanvas/1"
DATASET_FILE = "dataset.json"
ENTRIES_FILE = "compositions.jsonl"
SKIPPED_FILE = "skipped.jsonl"
REJECTIONS_FILE = "rejections.jsonl"
REVIEW_FILE = "review.html"


class DatasetError(ValueError):
    """A folder is not a composed dataset, or was made with another configuration."""


def entry_id(index: int) -> str:
    return f"c{index:06d}"


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_image_atomic(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    image.save(tmp)
    os.replace(tmp, path)


def append_line(path: Path, record: dict) -> None:
    """One JSON line in one write, flushed to disk: the commit point of an entry."""
    line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: Path, repair: bool = False) -> list[dict]:
    """Every complete JSON line; a torn last line (killed mid-write) is ignored, and cut off when ``repair``."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records, pos, good_end = [], 0, 0
    while pos < len(data):
        newline = data.find(b"\n", pos)
        if newline < 0:
            break  # no newline: the last write was torn
        raw, pos = data[pos:newline], newline + 1
        if raw.strip():
            try:
                records.append(json.loads(raw))
            except json.JSONDecodeError:
                break
        good_end = pos
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def mask_to_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


@dataclass
class Entry:
    record: dict
    root: Path

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def caption(self) -> str:
        return self.record["caption"]

    @property
    def image_path(self) -> Path:
        return self.root / self.record["image"]

    def image(self) -> Image.Image:
        from likeness.data.images import load_image

        return load_image(self.image_path)

    def mask(self, concept: str) -> np.ndarray:
        with Image.open(self.root / self.record["masks"][concept]) as m:
            return np.asarray(m.convert("L")) > 127


class ComposedDataset:
    """Read a dataset folder; rejected entries are left out unless ``include_rejected``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = self.root / DATASET_FILE
        if not meta.is_file():
            raise DatasetError(f"{self.root}: not a composed dataset (no {DATASET_FILE}); run `likeness compose run` first")
        try:
            self.meta = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta}: malformed ({exc})") from None
        if self.meta.get("schema") != SCHEMA:
            raise DatasetError(f"{meta}: schema {self.meta.get('schema')!r}, expected {SCHEMA!r}")

    @property
    def concepts(self) -> dict[str, dict]:
        return {n: c for n, c in self.meta["concepts"].items() if c.get("status") == "ok"}

    @property
    def global_token(self) -> str | None:
        return self.meta.get("config", {}).get("global_token")

    def rejected(self) -> dict[str, str]:
        out = {}
        for record in read_lines(self.root / REJECTIONS_FILE):
            if record.get("undo"):
                out.pop(record["id"], None)
            else:
                out[record["id"]] = record.get("reason", "")
        return out

    def entries(self, include_rejected: bool = False) -> list[Entry]:
        rejected = set() if include_rejected else set(self.rejected())
        return [Entry(r, self.root) for r in read_lines(self.root / ENTRIES_FILE) if r["id"] not in rejected]

    def skipped(self) -> list[dict]:
        return read_lines(self.root / SKIPPED_FILE)

    def reject(self, ids, reason: str = "rejected in review", undo: bool = False) -> list[str]:
        known = {r["id"] for r in read_lines(self.root / ENTRIES_FILE)}
        unknown = sorted(set(ids) - known)
        if unknown:
            raise DatasetError(f"{self.root}: no composition(s) {', '.join(unknown)}")
        for i in ids:
            append_line(self.root / REJECTIONS_FILE, {"id": i, "reason": reason, **({"undo": True} if undo else {})})
        return list(ids)

    def contact_sheet(self, path: str | Path | None = None, thumb: int = 256) -> Path:
        path = Path(path) if path else self.root / REVIEW_FILE
        rejected = self.rejected()
        cards = []
        for e in self.entries(include_rejected=True):
            r = e.record
            rel = os.path.relpath(self.root / r["image"], path.parent)
            comp = os.path.relpath(self.root / r["composite"], path.parent)
            quality = ", ".join(f"{html.escape(k)} {v:.2f}" for k, v in r.get("mask_quality", {}).items())
            state = " rejected" if e.id in rejected else ""
            cards.append(
                f'<figure class="card{state}" data-id="{html.escape(e.id)}">'
                f'<a href="{html.escape(rel)}"><img src="{html.escape(rel)}" width="{thumb}" loading="lazy" alt=""></a>'
                f'<a href="{html.escape(comp)}">composite</a>'
                f'<figcaption><b>{html.escape(e.id)}</b> {html.escape(r["caption"])}<br>'
                f'<small>{html.escape(r["planner"])}; mask quality: {quality}</small><br>'
                f'<label><input type="checkbox" class="reject"{" checked" if state else ""}> reject</label></figcaption>'
                f"</figure>")
        name = html.escape(str(self.root.name))
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>review {name}</title>
<style>body{{font-family:sans-serif}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
.card{{width:{thumb}px;margin:0;border:2px solid #ccc;padding:4px}} .card.rejected{{border-color:#c00;opacity:.6}}
figcaption{{font-size:12px}}</style></head><body>
<h1>Composed dataset {name}: {len(cards)} compositions, {len(rejected)} rejected</h1>
<p>Tick the compositions to reject, press <button id="save">save rejections.json</button>, then run
<code>likeness compose reject {html.escape(str(self.root))} --from rejections.json</code>. Training leaves rejected
compositions out.</p>
<div class="grid">{''.join(cards)}</div>
<script>
document.querySelectorAll('.reject').forEach(b => b.addEventListener('change', e =>
  e.target.closest('.card').classList.toggle('rejected', e.target.checked)));
document.getElementById('save').addEventListener('click', () => {{
  const ids = [...document.querySelectorAll('.card')].filter(c => c.querySelector('.reject').checked)
    .map(c => c.dataset.id);
  const blob = new Blob([JSON.stringify({{rejected: ids}}, null, 1)], {{type: 'application/json'}});
  const a = document.createElement('a'); a.href = URL.createObjectURL(blob); a.download = 'rejections.json'; a.click();
}});
</script></body></html>
"""
        write_atomic(path, page.encode("utf-8"))
        return path


def rejections_from_file(path: str | Path) -> list[str]:
    """IDs from the contact sheet's ``rejections.json`` ({"rejected": [...]}) or a plain list, one per line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    ids = value.get("rejected", []) if isinstance(value, dict) else value
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DatasetError(f"{path}: expected {{\"rejected\": [ids]}}")
    return ids
