"""The offline fall-back: person and face masks drawn from the detected face box (no model).

A heuristic, not a segmentation: the face mask is an ellipse fitted to the face box and stretched
up to cover the forehead (detector boxes stop at the brows); the person mask is the head ellipse
enlarged plus a shoulder ellipse below the chin, 3.2 face widths wide. Ellipses are tilted with the
eye line, so after :func:`likeness.methods.preparation.prepare_photo` levels the eyes they are
upright. Right shape for portrait crops (it drops background corners), wrong for full bodies.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from likeness.segmentation.base import Masks, NoPersonError, Segmenter

# (centre offset x, centre offset y, half-width, half-height) in units of the face box's half sizes.
FACE_ELLIPSE = (0.0, -0.175, 1.0, 1.175)
HEAD_ELLIPSE = (0.0, -0.375, 1.4, 1.625)
SHOULDER_ELLIPSE = (0.0, 3.4, 3.2, 2.6)


def eye_angle(face) -> float:
    """Tilt of the line through the eyes (radians), 0 without landmarks."""
    if face.landmarks is None or len(face.landmarks) < 2:
        return 0.0
    eyes = sorted(np.asarray(face.landmarks[:2], dtype=np.float64).tolist())  # left-to-right in the image
    return math.atan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0])


def _ellipse(size, centre, half_axes, angle, spec, points: int = 96) -> np.ndarray:
    ox, oy, ax, ay = spec
    hw, hh = half_axes
    cos, sin = math.cos(angle), math.sin(angle)
    # Ellipse in the face's (levelled) frame, rotated into the photo.
    cx = centre[0] + cos * ox * hw - sin * oy * hh
    cy = centre[1] + sin * ox * hw + cos * oy * hh
    poly = []
    for k in range(points):
        t = 2 * math.pi * k / points
        x, y = ax * hw * math.cos(t), ay * hh * math.sin(t)
        poly.append((cx + cos * x - sin * y, cy + sin * x + cos * y))
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    return (np.asarray(mask) > 127).astype(np.float32)


def heuristic_masks(size: tuple[int, int], face) -> Masks:
    """Masks of a photo of ``size`` (width, height) from its chosen ``face``."""
    x0, y0, x1, y1 = face.box
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    half = ((x1 - x0) / 2, (y1 - y0) / 2)
    angle = eye_angle(face)
    face_mask = _ellipse(size, centre, half, angle, FACE_ELLIPSE)
    person = np.maximum(_ellipse(size, centre, half, angle, HEAD_ELLIPSE),
                        _ellipse(size, centre, half, angle, SHOULDER_ELLIPSE))
    return Masks(person=person, face=face_mask, source="heuristic")


class HeuristicSegmenter(Segmenter):
    """Ellipses around the largest detected face (detected here with ``face_backend`` when no face is given)."""

    name = "heuristic"

    def __init__(self, face_backend: str = "dlib"):
        self.face_backend = face_backend

    def segment(self, image, *, face=None, path=None) -> Masks:
        if face is None:
            from likeness.data.images import image_to_array
            from likeness.faces import get_backend

            faces = get_backend(self.face_backend).detect(image_to_array(image))
            if not faces:
                raise NoPersonError(path or "<image>", "no face detected, and the heuristic masks are drawn around the face")
            face = max(faces, key=lambda f: f.area)
        return heuristic_masks(image.size, face)

    def describe(self) -> dict:
        return {"segmenter": self.name, "face_backend": self.face_backend,
                "note": "ellipses around the detected face box (no segmentation model)"}
