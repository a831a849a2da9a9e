"""CelebAMask-HQ's own hand-annotated parsing masks, when the dataset ships them.

Two on-disk forms are read:

- **colour-palette label maps** beside the photo, ``<stem>_bg.png`` (the Stellar release: ``0.jpg`` +
  ``0_bg.png``), in the colours of CelebAMask-HQ's colouring script (``PALETTE``, one RGB colour per
  label), or as a palette/grayscale PNG whose pixel values are the label ids;
- **part files** of ``CelebAMask-HQ-mask-anno/<k>/<idx:05d>_<part>.png`` (one binary 512x512 file per
  part, ``k = idx // 2000``) next to ``CelebA-HQ-img/<idx>.jpg``.

Masks are annotated at 512 px while photos are 1024 px: they are resized (nearest) to the photo. A
mask whose aspect ratio differs from the photo's, or whose colours are not CelebAMask-HQ labels, is
refused with :class:`MaskError`; a photo without any mask raises :class:`MaskMissingError`, which
``auto`` uses to fall back to the next segmenter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from likeness.data.mask_files import ANNO_FOLDER, has_masks, mask_file_for, part_files  # noqa: F401 (re-exported)
from likeness.segmentation.base import Masks, MaskError, MaskMissingError, Segmenter

LABELS = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
          "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
# RGB colour of each label in CelebAMask-HQ's colour masks (same order as LABELS).
PALETTE = np.array([
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0), (0, 0, 153), (0, 0, 204),
    (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0)], dtype=np.int16)
# The face, for face-masked losses: skin and the inner parts (not hair, ears, neck, accessories).
FACE_LABELS = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
# Colours off the palette by at most this much (JPEG-ish edges, resampling) are snapped to it.
COLOUR_TOLERANCE = 40
# More than this fraction of pixels far from every palette colour: not a CelebAMask-HQ colour mask.
MAX_OFF_PALETTE = 0.02


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaskError(path, f"cannot read mask image ({type(exc).__name__}: {exc})", status="unreadable_mask") from None


def read_label_map(path: str | Path) -> np.ndarray:
    """Label ids (uint8, H x W, indices into ``LABELS``) from a colour, palette or grayscale label PNG."""
    path = Path(path)
    img = _open(path)
    if img.mode == "P":
        ids = np.asarray(img)
        if ids.max(initial=0) >= len(LABELS):
            # A palette image painted in the CelebAMask-HQ colours rather than indexed by label.
            return read_rgb_labels(np.asarray(img.convert("RGB")), path)
        return ids.astype(np.uint8)
    if img.mode in ("L", "I", "I;16"):
        ids = np.asarray(img).astype(np.int64)
        values = set(np.unique(ids).tolist())
        if values <= {0, 255}:  # a binary person mask: 255 = person (everything but background)
            return np.where(ids > 0, LABELS.index("cloth"), 0).astype(np.uint8)
        if ids.max(initial=0) >= len(LABELS) or ids.min(initial=0) < 0:
            raise MaskError(path, f"grayscale mask values {min(values)}..{max(values)} are not CelebAMask-HQ label ids "
                                  f"(0..{len(LABELS) - 1}) nor a 0/255 binary mask")
        return ids.astype(np.uint8)
    if img.mode in ("RGB", "RGBA"):
        return read_rgb_labels(np.asarray(img.convert("RGB")), path)
    raise MaskError(path, f"mask image has mode {img.mode}; expected a colour (RGB), palette or grayscale label PNG")


def read_rgb_labels(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Nearest palette colour for each pixel; refuses images that are not painted in the palette."""
    flat = rgb.reshape(-1, 3).astype(np.int16)
    colours, inverse = np.unique(flat, axis=0, return_inverse=True)
    distance = np.abs(colours[:, None, :] - PALETTE[None, :, :]).max(axis=-1)  # (colours, labels)
    nearest, off = distance.argmin(axis=1), distance.min(axis=1) > COLOUR_TOLERANCE
    off_fraction = float(np.bincount(inverse.ravel(), minlength=len(colours))[off].sum()) / max(1, len(flat))
    if off_fraction > MAX_OFF_PALETTE:
        raise MaskError(path, f"{off_fraction:.0%} of the pixels are not CelebAMask-HQ label colours; expected a "
                              f"colour-palette parsing mask (is this a photo?)")
    return nearest[inverse.ravel()].reshape(rgb.shape[:2]).astype(np.uint8)


def label_masks(labels: np.ndarray, size: tuple[int, int], path: Path, source: str,
                face_labels=FACE_LABELS) -> Masks:
    """Person (= every label but background) and face masks at the photo's ``size`` (width, height)."""
    h, w = labels.shape
    if abs(w / h - size[0] / size[1]) > 0.01:
        raise MaskError(path, f"mask is {w}x{h} px but the photo is {size[0]}x{size[1]} px (different shape)",
                        status="mask_size")
    face_ids = [LABELS.index(n) for n in face_labels]
    person = (labels > 0).astype(np.float32)
    face = np.isin(labels, face_ids).astype(np.float32)
    masks = Masks(person, face, source)
    return masks if (w, h) == tuple(size) else masks.warp(size)


def part_labels(files: list[Path]) -> np.ndarray:
    """A label map from per-part binary files (later labels in ``LABELS`` order paint over earlier ones)."""
    labels, shape = None, None
    for file in sorted(files, key=lambda f: LABELS.index(_part_name(f)) if _part_name(f) in LABELS else 99):
        part = _part_name(file)
        if part not in LABELS:
            continue
        img = _open(file)
        mask = np.asarray(img.convert("L")) > 127
        if shape is None:
            shape, labels = mask.shape, np.zeros(mask.shape, np.uint8)
        elif mask.shape != shape:
            raise MaskError(file, f"part mask is {mask.shape[1]}x{mask.shape[0]} px, other parts are "
                                  f"{shape[1]}x{shape[0]} px", status="mask_size")
        labels[mask] = LABELS.index(part)
    if labels is None:
        raise MaskMissingError(files[0] if files else "<none>", "no CelebAMask-HQ part files with known part names")
    return labels


def _part_name(file: Path) -> str:
    return file.stem.split("_", 1)[1] if "_" in file.stem else ""


class CelebAMaskSegmenter(Segmenter):
    """The dataset's masks for a photo given by path; :class:`MaskMissingError` when it has none."""

    name = "celebamask"

    def __init__(self, face_labels=FACE_LABELS):
        unknown = [n for n in face_labels if n not in LABELS]
        if unknown:
            raise ValueError(f"unknown CelebAMask-HQ label(s) {', '.join(unknown)}; known: {', '.join(LABELS)}")
        self.face_labels = tuple(face_labels)

    def segment(self, image, *, face=None, path=None) -> Masks:
        if path is None:
            raise MaskMissingError("<image>", "dataset masks are found by the photo's path, and none was given")
        photo = Path(path)
        mask_file = mask_file_for(photo)
        if mask_file is not None:
            return label_masks(read_label_map(mask_file), image.size, mask_file, f"celebamask:{mask_file.name}",
                               self.face_labels)
        files = part_files(photo)
        if files:
            return label_masks(part_labels(files), image.size, files[0].parent,
                               f"celebamask:{ANNO_FOLDER}/{files[0].parent.name}/{int(photo.stem):05d}_*",
                               self.face_labels)
        raise MaskMissingError(photo, f"no CelebAMask-HQ mask ({photo.stem}_bg.png beside it, or "
                                      f"{ANNO_FOLDER}/<k>/{photo.stem}_<part>.png)")

    def describe(self) -> dict:
        return {"segmenter": self.name, "labels": "CelebAMask-HQ hand annotations", "face_labels": list(self.face_labels)}
