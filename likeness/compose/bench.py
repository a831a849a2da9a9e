"""Benchmark inputs from a composed dataset: what ``likeness bench --compose-dataset DS`` runs on.

Gen4Gen evaluates a multi-concept model with CP-CLIP (is each concept there, and does it look like its
photos) and TI-CLIP (does the image match the background prompt alone). Both read the image's sidecar
(``concepts``, ``background``); bench writes the sidecar from the prompt entry. So a composed dataset
becomes three ordinary bench inputs, all written into the run folder (``RUN/compose/``) so a resumed
run finds them:

- **one identity**, named after the dataset folder: the group of every concept that appears in a kept
  composition (its folder holds copies of the concepts' photos: the plan's reference photo, and each
  concept's reference images for CP-CLIP);
- **a prompt set** (Stellar-T schema + ``background`` + ``concepts``): one prompt per background, in the
  dataset's own caption strategy with ``{}`` where the concepts go (``<gen4gen> a photo of {}, with {},
  in the background a snowy mountain``); the backgrounds are held out (none is a training background,
  by default) so the scores say whether the concepts transfer to new scenes;
- **the method option** ``captioned``: the kept compositions and their captions (rejections honoured),
  on which ``custom-diffusion`` trains instead of photos; the bench identity then names the group
  (``{}`` -> ``<mochi> dog and <kettle> teapot``).

Every concept is in every prompt (the Gen4Gen benchmark's setting: a set's test prompts name all its
concepts).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from likeness.compose.captions import TemplateCaptioner
from likeness.compose.dataset import ComposedDataset, DatasetError, write_atomic
from likeness.data.names import name_key

# Held-out scenes (none is the compose planner's default background list, see compose/layout.py).
BACKGROUNDS = (
    "a snowy mountain", "a rocky coastline", "a neon-lit alley at night", "a mountain lake", "a forest clearing",
    "a desert at sunset", "a wooden picnic table", "a flower market", "a library", "a wheat field",
    "a rainy window sill", "a stone bridge",
)
PROMPT_PREFIX = "g"


@dataclass
class BenchInputs:
    name: str  # the bench identity (the group of concepts)
    identities: Path  # a folders-layout dataset holding that one identity
    prompts: Path  # the prompt file
    options: dict  # method options: {"captioned": training_set(...)}


def concept_photos(dataset: ComposedDataset, name: str) -> list[Path]:
    """A concept's usable photos (as recorded; relative ones are tried from the dataset folder too)."""
    out = []
    for photo in dataset.concepts[name]["photos"]:
        if photo.get("status") != "ok":
            continue
        path = Path(photo["path"])
        if not path.is_file() and (dataset.root / path).is_file():
            path = dataset.root / path
        if not path.is_file() and photo.get("cutout"):
            path = dataset.root / photo["cutout"]  # the extracted foreground, if the photo moved
        if path.is_file():
            out.append(path.resolve())
    return out


def used_concepts(dataset: ComposedDataset) -> list[str]:
    """Concepts of the kept compositions, in dataset order."""
    used = {n for e in dataset.entries() for n in e.record["concepts"]}
    return [n for n in dataset.concepts if n in used]


def training_set(dataset: ComposedDataset) -> dict:
    """The ``captioned`` option of ``custom-diffusion``: kept compositions (absolute paths) + concepts."""
    examples = [[str(e.image_path.resolve()), e.caption] for e in dataset.entries()]
    concepts = {n: {"class_noun": dataset.concepts[n]["class_noun"], "photos": [str(p) for p in concept_photos(dataset, n)]}
                for n in used_concepts(dataset)}
    return {"examples": examples, "concepts": concepts, "source": str(dataset.root.resolve()),
            "global_token": used_global_token(dataset)}


def used_global_token(dataset: ComposedDataset) -> str | None:
    """The dataset's composition token when its kept captions use it (it then trains like a concept)."""
    token = dataset.global_token
    return token if token and any(token in e.caption for e in dataset.entries()) else None


def bench_prompts(dataset: ComposedDataset, photos: dict[str, list[Path]], backgrounds=BACKGROUNDS) -> list[dict]:
    """One entry per background: the dataset's caption strategy around ``{}``, the background alone,
    and every concept with its class noun (the detector's query) and its photos."""
    meta = dataset.meta.get("config", {})
    strategy = meta.get("caption_strategy") if meta.get("caption_strategy") in ("gen4gen", "plain") else "gen4gen"
    global_token = used_global_token(dataset)
    captioner = TemplateCaptioner(strategy, global_token or "")
    names = used_concepts(dataset)
    seen = {e.record.get("background") for e in dataset.entries(include_rejected=True)}
    backgrounds = [b for b in backgrounds if b not in seen]  # held out: never a training scene
    if not backgrounds:
        raise DatasetError(f"{dataset.root}: every benchmark background is also a training background")
    concepts = [{"name": n, "label": dataset.concepts[n]["class_noun"], "images": [str(p) for p in photos[n]]} for n in names]
    entries = []
    for k, background in enumerate(backgrounds):
        # The first template of the plain strategy (rng at 0), so the prompt does not depend on a draw.
        text = captioner.caption(["{}"], background, np.random.default_rng(0)).strip()
        entries.append({"prompt_id": f"{PROMPT_PREFIX}{k:04d}", "prompts": text,
                        "detectables": [dataset.concepts[n]["class_noun"] for n in names],
                        "categories": ["gen4gen"], "background": background, "concepts": concepts})
    return entries


def bench_inputs(dataset: str | Path | ComposedDataset, folder: str | Path, backgrounds=BACKGROUNDS) -> BenchInputs:
    """Write the identity folder and the prompt file under ``folder``; rewriting them gives the same
    bytes, so the run's configuration digest stays the same when the command is repeated."""
    data = dataset if isinstance(dataset, ComposedDataset) else ComposedDataset(dataset)
    if not data.entries():
        raise DatasetError(f"{data.root}: no kept composition to train on (all rejected or skipped?)")
    names = used_concepts(data)
    name = name_key(data.root.resolve().name) or "composition"
    if name in {name_key(n) for n in names}:
        name = f"{name}-set"
    folder = Path(folder)
    person = folder / "identities" / name
    photos: dict[str, list[Path]] = {}
    for concept in names:
        sources = concept_photos(data, concept)
        if not sources:
            raise DatasetError(f"{data.root}: concept {concept!r} has no usable photo left for CP-CLIP's references")
        photos[concept] = []
        for k, source in enumerate(sources):
            target = person / f"{name_key(concept)}-{k}{source.suffix.lower()}"
            if not target.is_file() or target.read_bytes() != source.read_bytes():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            photos[concept].append(target.resolve())
    prompts = folder / "prompts.json"
    text = json.dumps({"name": f"gen4gen:{data.root.name}", "prompts": bench_prompts(data, photos, backgrounds)},
                      indent=1, ensure_ascii=False) + "\n"
    if not prompts.is_file() or prompts.read_text(encoding="utf-8") != text:
        write_atomic(prompts, text.encode("utf-8"))
    return BenchInputs(name, (folder / "identities").resolve(), prompts.resolve(), {"captioned": training_set(data)})
