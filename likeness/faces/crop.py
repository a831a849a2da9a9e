"""The one helper methods need to prepare a person photo: largest face, its 5 points, an aligned crop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from likeness.faces.align import similarity_transform, template, warp
from likeness.faces.base import Face, FaceBackend


@dataclass
class FaceCrop:
    face: Face  # box, score, landmarks (5x2, image pixels), embedding
    aligned: Image.Image  # size x size, eyes/nose/mouth on the ArcFace template
    matrix: np.ndarray  # 2x3 image -> crop transform

    @property
    def landmarks(self) -> np.ndarray:
        return self.face.landmarks


def largest_face_crop(image: Image.Image | np.ndarray, backend: FaceBackend | None = None, size: int = 112) -> FaceCrop | None:
    """The largest face in ``image`` (RGB PIL or HxWx3 uint8) with an aligned crop, or None if no face."""
    if backend is None:
        from likeness.faces import get_backend

        backend = get_backend()
    array = np.ascontiguousarray(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8))
    faces = backend.detect(array)
    if not faces:
        return None
    face = backend.embed(array, [faces[0]])[0]
    matrix = similarity_transform(face.landmarks, template(size))
    return FaceCrop(face=face, aligned=warp(array, matrix, size), matrix=matrix)


def expand_box(box: tuple[float, float, float, float], factor: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A square box ``factor`` times the face box around its centre, clipped to the image (PhotoVerse uses 1.3)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * factor / 2
    return (max(0, int(cx - half)), max(0, int(cy - half)), min(width, int(round(cx + half))), min(height, int(round(cy + half))))
