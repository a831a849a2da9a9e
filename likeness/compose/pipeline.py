"""The Gen4Gen data pipeline end to end: extract -> plan -> composite -> repaint -> caption -> write.

:func:`compose_dataset` is what ``likeness compose run`` calls. Composition ``i`` draws everything
(which concepts, which photo of each, layout, repaint noise, caption) from generators seeded with
``(seed, i)``, so it is reproducible alone and an interrupted run resumes exactly (see
:mod:`likeness.compose.dataset`). Problems with one composition (a concept that cannot fit the
canvas, an LLM that gives no valid layout) skip it with a status and reason in ``skipped.jsonl``;
problems with one concept photo (unreadable, no foreground) skip the photo, recorded in
``dataset.json``; a concept without any usable photo is left out, and fewer usable concepts than
``min_concepts`` is an error before any composition is made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from likeness.compose.captions import TemplateCaptioner
from likeness.compose.composite import composite, fit_background, paste_back, repaint_mask
from likeness.compose.concepts import Concept
from likeness.compose.dataset import (
    DATASET_FILE,
    ENTRIES_FILE,
    SCHEMA,
    SKIPPED_FILE,
    DatasetError,
    append_line,
    entry_id,
    mask_to_image,
    read_lines,
    save_image_atomic,
    write_atomic,
)
from likeness.compose.layout import LayoutError, OfflinePlanner
from likeness.segmentation.salient import ForegroundError, extract_foreground, get_salient_backend

log = logging.getLogger(__name__)

MIN_CUTOUT_SIDE = 16


@dataclass
class ComposeResult:
    out_dir: Path
    written: list[str] = field(default_factory=list)  # ids made in this call
    existing: list[str] = field(default_factory=list)  # ids already there (resumed)
    skipped: list[dict] = field(default_factory=list)  # made in this call
    stage_seconds: dict = field(default_factory=dict)


def extract_concepts(concepts: list[Concept], backend, passes: int, out_dir: Path | None = None):
    """Cut-outs per concept: ``({name: [Foreground]}, {name: metadata})``; bad photos skipped with a reason."""
    cutouts, meta = {}, {}
    for concept in concepts:
        good, photos = [], []
        for path in concept.photos:
            try:
                fg = extract_foreground(path, backend, passes=passes)
                if min(fg.image.size) < MIN_CUTOUT_SIDE:
                    raise ForegroundError(path, f"foreground is only {fg.image.width}x{fg.image.height} px (minimum "
                                          f"side {MIN_CUTOUT_SIDE})", "too_small")
            except ForegroundError as exc:
                photos.append({"path": str(path), "status": exc.status, "reason": exc.problem})
                log.warning("concept %s: skipped %s", concept.name, exc)
                continue
            record = {"path": str(path), "status": "ok", "quality": fg.quality.to_dict(), "box": list(fg.box),
                      "backend": fg.backend, "notes": fg.notes}
            if out_dir is not None:
                rel = f"cutouts/{concept.name}/{len(good)}.png"
                save_image_atomic(fg.image, out_dir / rel)
                record["cutout"] = rel
            photos.append(record)
            good.append(fg)
        status = "ok" if good else "skipped"
        meta[concept.name] = {"token": concept.token, "class_noun": concept.class_noun, "phrase": concept.phrase,
                              "size_prior": concept.prior, "photos": photos, "status": status}
        if good:
            cutouts[concept.name] = good
        else:
            meta[concept.name]["reason"] = "no usable foreground in any photo"
    return cutouts, meta


def _fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compose_dataset(
    concepts: list[Concept],
    out_dir: str | Path,
    count: int,
    *,
    segmenter="auto",
    passes: int = 2,
    planner=None,
    fallback_planner: bool = True,
    repainter=None,
    captioner=None,
    seed: int = 0,
    canvas: tuple[int, int] = (1024, 1024),
    min_concepts: int = 2,
    max_concepts: int = 3,
    background: str | Path | None = None,
    keep_objects: bool = True,
    mask_edge: int = 4,
    mask_blur: float = 3.0,
    progress: bool = True,
    on_entry=None,
) -> ComposeResult:
    """Write ``count`` compositions into ``out_dir`` (resuming what is already there).

    ``planner``: ``None`` (offline) or an :class:`~likeness.compose.llm.LLMPlanner`; with
    ``fallback_planner`` a failed LLM plan falls back to the offline planner (noted in the entry).
    ``repainter``: a :class:`~likeness.compose.repaint.Repainter` or ``None`` (store the composites).
    ``background``: an image file (every composition on it), a prompt (every composition in it), or
    ``None`` (the planner's description; painted by the repainter, flat grey without one).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width, height = (int(canvas[0]), int(canvas[1]))
    if width % 8 or height % 8:
        raise ValueError(f"canvas {width}x{height}: both sides must be multiples of 8")
    if not 1 <= min_concepts <= max_concepts:
        raise ValueError(f"need 1 <= min_concepts <= max_concepts, got {min_concepts}, {max_concepts}")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise ValueError(f"concept names must be unique: {names}")
    captioner = captioner or TemplateCaptioner()
    offline = OfflinePlanner()
    background_image = None
    background_prompt = None
    if background is not None:
        path = Path(str(background))
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp") or path.is_file():
            from likeness.data.images import load_image

            background_image = fit_background(load_image(path), (width, height))
        else:
            background_prompt = str(background)

    timings = {k: 0.0 for k in ("extract", "layout", "composite", "repaint", "caption", "write")}
    tic = time.perf_counter()
    backend = get_salient_backend(segmenter)
    cutouts, concept_meta = extract_concepts(concepts, backend, passes, out)
    timings["extract"] = time.perf_counter() - tic
    usable = [c for c in concepts if c.name in cutouts]
    if len(usable) < min_concepts:
        reasons = "; ".join(f"{n}: {m.get('reason')}" for n, m in concept_meta.items() if m["status"] != "ok")
        raise ValueError(f"only {len(usable)} usable concept(s), {min_concepts} needed per composition ({reasons})")
    max_concepts = min(max_concepts, len(usable))

    config = {
        "seed": int(seed), "canvas": [width, height], "min_concepts": min_concepts, "max_concepts": max_concepts,
        "segmenter": backend.describe(), "passes": passes,
        "planner": getattr(planner, "model", None) and f"llm:{planner.model}" or "offline",
        "fallback_planner": fallback_planner, "repaint": repainter.settings() if repainter else None,
        "captioner": getattr(captioner, "name", type(captioner).__name__),
        "caption_strategy": getattr(captioner, "strategy", None),
        "global_token": getattr(captioner, "global_token", None), "background": str(background) if background else None,
        "keep_objects": keep_objects, "mask_edge": mask_edge, "mask_blur": mask_blur,
    }
    fingerprint = _fingerprint({"config": config, "concepts": concept_meta})
    meta_path = out / DATASET_FILE
    if meta_path.is_file():
        previous = json.loads(meta_path.read_text(encoding="utf-8"))
        if previous.get("fingerprint") != fingerprint and read_lines(out / ENTRIES_FILE):
            raise DatasetError(f"{out} holds compositions made with another configuration or other concept photos; "
                               "use another output folder (or delete it to start over)")
    write_atomic(meta_path, json.dumps({"schema": SCHEMA, "fingerprint": fingerprint, "config": config,
                                        "concepts": concept_meta}, indent=1, ensure_ascii=False).encode("utf-8"))

    done = {r["index"] for r in read_lines(out / ENTRIES_FILE, repair=True)}
    done |= {r["index"] for r in read_lines(out / SKIPPED_FILE, repair=True)}
    for stray in out.rglob(".*.tmp*"):
        stray.unlink(missing_ok=True)
    result = ComposeResult(out_dir=out, existing=[entry_id(i) for i in sorted(done) if i < count])
    by_name = {c.name: c for c in usable}

    for index in tqdm(range(count), desc="composing", disable=not progress):
        if index in done:
            continue
        rng = np.random.default_rng([int(seed), index, 11])
        k = int(rng.integers(min_concepts, max_concepts + 1))
        chosen = [usable[i] for i in sorted(rng.choice(len(usable), size=k, replace=False))]
        picks = {c.name: int(rng.integers(len(cutouts[c.name]))) for c in chosen}
        fgs = {n: cutouts[n][p] for n, p in picks.items()}
        aspects = {n: fg.aspect for n, fg in fgs.items()}
        item_seed = int(seed) * 100_003 + index
        notes: list[str] = []

        t = time.perf_counter()
        layout, skip = None, None
        try:
            if planner is not None:
                try:
                    layout = planner.plan({n: (by_name[n].class_noun, a) for n, a in aspects.items()}, (width, height),
                                          seed=item_seed, background=background_prompt)
                except (LayoutError, RuntimeError) as exc:
                    if not fallback_planner:
                        raise
                    notes.append(f"LLM planner failed ({getattr(exc, 'status', 'error')}): {exc}; offline planner used")
            if layout is None:
                layout = offline.plan(aspects, {n: by_name[n].prior for n in aspects}, (width, height), item_seed,
                                      background=background_prompt)
        except (LayoutError, RuntimeError) as exc:
            skip = {"index": index, "id": entry_id(index), "status": getattr(exc, "status", "layout_error"),
                    "reason": str(exc), "concepts": list(aspects)}
        timings["layout"] += time.perf_counter() - t
        if skip is not None:
            append_line(out / SKIPPED_FILE, skip)
            result.skipped.append(skip)
            log.warning("composition %d skipped: %s", index, skip["reason"])
            continue

        t = time.perf_counter()
        if background_image is None and repainter is not None:
            base = repainter.background(layout.background, (width, height), item_seed)
        else:
            base = background_image
        comp = composite({n: fg.image for n, fg in fgs.items()}, layout, base)
        timings["composite"] += time.perf_counter() - t

        phrases = [by_name[n].phrase for n in layout.boxes]
        t = time.perf_counter()
        scene = f"a photo of {', '.join(phrases)}, {layout.background}"
        image = comp.image
        paint = repaint_mask(comp.objects, edge=mask_edge, blur=mask_blur)
        if repainter is not None:
            image = repainter.repaint(comp.image, paint, scene, item_seed)
            if keep_objects:
                image = paste_back(image, comp.image, paint)
        timings["repaint"] += time.perf_counter() - t

        t = time.perf_counter()
        caption_rng = np.random.default_rng([int(seed), index, 13])
        kwargs = {"class_nouns": [by_name[n].class_noun for n in layout.boxes]} if getattr(captioner, "name", "") == "vlm" else {}
        caption = captioner.caption(phrases, layout.background, caption_rng, image=image, **kwargs)
        timings["caption"] += time.perf_counter() - t

        t = time.perf_counter()
        eid = entry_id(index)
        record = {
            "id": eid, "index": index, "image": f"images/{eid}.png", "composite": f"composites/{eid}.png",
            "masks": {n: f"masks/{eid}/{n}.png" for n in layout.boxes},
            "boxes": {n: b.as_list() for n, b in comp.boxes.items()},
            "planned_boxes": {n: b.as_list() for n, b in layout.boxes.items()},
            "concepts": list(layout.boxes), "class_nouns": {n: by_name[n].class_noun for n in layout.boxes},
            "tokens": {n: by_name[n].token for n in layout.boxes},
            "sources": {n: fgs[n].source for n in layout.boxes},
            "mask_quality": {n: round(fgs[n].quality.score, 4) for n in layout.boxes},
            "caption": caption, "background": layout.background, "planner": layout.planner, "seed": item_seed,
            "canvas": [width, height], "repaint": repainter.settings() if repainter else None,
            "notes": notes + layout.notes,
        }
        save_image_atomic(comp.image, out / record["composite"])
        for n, mask in comp.masks.items():
            save_image_atomic(mask_to_image(mask), out / record["masks"][n])
        save_image_atomic(image, out / record["image"])
        append_line(out / ENTRIES_FILE, record)  # the commit point
        timings["write"] += time.perf_counter() - t
        result.written.append(eid)
        if on_entry is not None:
            on_entry(record)
    result.stage_seconds = timings
    return result
