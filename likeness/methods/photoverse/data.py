"""PhotoVerse's inputs: the masked face view the encoder sees, and the encoder's training set.

Preprocessing as in the paper: the face box enlarged 1.3x, everything outside the face masked
(black) for the image encoder; the training target is a wider crop (:mod:`preparation`'s ``face``
framing, 2 face widths, eyes levelled) whose 5 landmarks are carried along for the face-identity loss.

Training sets: any folder of portraits, searched recursively. People are known from a CelebA-style
``identity*.txt`` (``<file> <identity>`` per line) when present, else from the first sub-folder
(``<root>/<person>/*.jpg``); ``exclude`` drops listed people (e.g. the Stellar identities). Each
image is prepared once into ``<cache>/`` (resumable); unreadable and faceless images are skipped
with their reason and counted in ``<cache>/index.jsonl``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from likeness.data.identities import is_image_file
from likeness.data.images import ImageError, load_image
from likeness.faces.base import Face, FaceBackend
from likeness.methods.training import Batch

log = logging.getLogger(__name__)

ENCODER_BOX = 1.3


def encoder_view(image: Image.Image, face: Face, size: int, factor: float = ENCODER_BOX) -> Image.Image:
    """The face box enlarged ``factor`` (square, padded black past the border) with non-face pixels black."""
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * factor / 2
    box = tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
    crop = image.crop(box)  # PIL fills outside the image with black
    half_w, half_h = (x1 - x0) / 2, (y1 - y0) / 2
    mask = Image.new("L", crop.size, 0)
    # The face ellipse of likeness.methods.preparation: detector box stretched up over the forehead.
    ImageDraw.Draw(mask).ellipse((cx - half_w - box[0], cy - half_h * 1.35 - box[1], cx + half_w - box[0],
                                  cy + half_h - box[1]), fill=255)
    masked = Image.composite(crop, Image.new("RGB", crop.size), mask)
    return masked.resize((size, size), Image.Resampling.BICUBIC)


def list_training_images(root: str | Path, exclude=()) -> tuple[list[tuple[Path, str | None]], int]:
    """``[(image, person or None)]`` under ``root`` and how many images ``exclude`` removed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: training folder does not exist")
    people: dict[str, str] = {}
    for table in sorted(root.glob("identity*.txt")):  # CelebA / CelebA-HQ identity tables
        for line in table.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2:
                people[parts[0]] = parts[1]
    excluded = {str(x) for x in exclude}
    images, dropped = [], 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p)):
        relative = path.relative_to(root)
        person = people.get(path.name) or (relative.parts[0] if len(relative.parts) > 1 else None)
        if person is not None and person in excluded:
            dropped += 1
            continue
        images.append((path, person))
    if not images:
        raise FileNotFoundError(f"{root}: no training images found (.jpg, .png, ...)" + (
            f" after excluding {dropped}" if dropped else ""))
    return images, dropped


def read_exclude(values) -> list[str]:
    """Names to exclude: each value is a name, or a file with one name per line."""
    names = []
    for value in values or ():
        path = Path(str(value))
        if path.is_file():
            names += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            names.append(str(value))
    return names


@dataclass
class TrainingItem:
    target: Path  # wider crop, training resolution
    encoder: Path  # masked 1.3x face view, encoder resolution
    points: np.ndarray  # (5, 2) landmarks in target-crop pixels (pixel centres at integers)


def prepare_training_set(images, cache: Path, *, size: int, encoder_size: int, backend: FaceBackend,
                         framing: str = "face") -> tuple[list[TrainingItem], dict]:
    """Prepare every image once into ``cache`` (rerun continues); returns the usable items and a
    report ``{"total", "ok", "skipped": {reason: count}, "examples": [...]}``."""
    from likeness.methods.preparation import NoFaceError, prepare_photo

    cache.mkdir(parents=True, exist_ok=True)
    index_path = cache / "index.jsonl"
    done = {}
    if index_path.exists():
        for line in index_path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            done[record["source"]] = record
    items, skipped, examples = [], {}, []
    with open(index_path, "a", encoding="utf-8") as index:
        for i, (path, _person) in enumerate(images):
            record = done.get(str(path))
            if record is None or record.get("size") != [size, encoder_size]:
                record = {"source": str(path), "size": [size, encoder_size]}
                try:
                    photo = prepare_photo(path, backend=backend, size=size, framing=framing)
                    view = encoder_view(load_image(path), photo.face, encoder_size)
                except (ImageError, NoFaceError) as exc:
                    record.update(status=getattr(exc, "status", "unreadable"), reason=str(exc))
                else:
                    if photo.landmarks is None:
                        record.update(status="no_landmarks", reason=f"{path}: the face backend gave no 5 face points "
                                      f"(the identity loss needs them)")
                        index.write(json.dumps(record) + "\n")
                        skipped["no_landmarks"] = skipped.get("no_landmarks", 0) + 1
                        continue
                    stem = f"{i:07d}"
                    photo.image.save(cache / f"{stem}.target.png")
                    view.save(cache / f"{stem}.encoder.png")
                    record.update(status="ok", item=stem, points=np.asarray(photo.landmarks).tolist())
                index.write(json.dumps(record) + "\n")
            if record["status"] == "ok":
                items.append(TrainingItem(cache / f"{record['item']}.target.png", cache / f"{record['item']}.encoder.png",
                                          np.asarray(record["points"], np.float32)))
            else:
                skipped[record["status"]] = skipped.get(record["status"], 0) + 1
                if len(examples) < 20:
                    examples.append(record["reason"])
                log.warning("skipped %s", record["reason"])
    report = {"total": len(images), "ok": len(items), "skipped": skipped, "examples": examples}
    if not items:
        raise ValueError(f"none of the {len(images)} training images is usable ({skipped}); e.g. {examples[:1]}")
    return items, report


@dataclass
class PhotoVerseBatch(Batch):
    encoder_pixels: torch.Tensor | None = None  # B x 3 x S x S in [0, 1] (the image encoder normalises)
    text_weight: torch.Tensor | None = None  # B: random-fusion weights
    image_weight: torch.Tensor | None = None


def fusion_weights(u: float) -> tuple[float, float]:
    """Random fusion: u < 1/3 text branch only (x2); u > 2/3 image branch only (x2); else both."""
    if u < 1 / 3:
        return 2.0, 0.0
    if u > 2 / 3:
        return 0.0, 2.0
    return 1.0, 1.0


def _pixels(path: Path, scale: str) -> torch.Tensor:
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    array = array / 127.5 - 1.0 if scale == "signed" else array / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def encoder_batches(items: list[TrainingItem], subject: str, *, batch_size: int, fusion: str = "random"):
    """``make_batch(step, micro, rng)`` for the shared loop: random items, captions and fusion modes from ``rng``.

    ``fusion``: ``random`` (training), or ``text`` / ``image`` / ``both`` to force one mode.
    """
    from likeness.methods.preparation import caption

    fixed = {"text": (2.0, 0.0), "image": (0.0, 2.0), "both": (1.0, 1.0)}
    if fusion != "random" and fusion not in fixed:
        raise ValueError(f"fusion must be random, text, image or both, not {fusion!r}")

    def make_batch(step: int, micro: int, rng: np.random.Generator) -> PhotoVerseBatch:
        picks = [items[int(rng.integers(len(items)))] for _ in range(batch_size)]
        captions = [caption(subject, rng) for _ in picks]
        weights = [fusion_weights(float(rng.random())) if fusion == "random" else fixed[fusion] for _ in picks]
        return PhotoVerseBatch(
            pixels=torch.stack([_pixels(p.target, "signed") for p in picks]), captions=captions,
            encoder_pixels=torch.stack([_pixels(p.encoder, "unit") for p in picks]),
            points=torch.from_numpy(np.stack([p.points for p in picks])),
            text_weight=torch.tensor([w[0] for w in weights]), image_weight=torch.tensor([w[1] for w in weights]))

    return make_batch
