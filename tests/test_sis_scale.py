"""SIS (sis/v2) on a calibrated scale: each photo's score is floored at 0, the no-face level, so SIS is the worst
photo as in Stellar (a faceless photo of the identity makes SIS 0), with the unfloored values kept in detail."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from likeness.data.identities import Identity
from likeness.faces import FaceCache
from likeness.faces.base import Face, FaceBackend, FaceProtocol
from likeness.metrics import METRICS, Sample


class CalibratedColour(FaceBackend):
    """A test double: one 'face' whose embedding is the normalised mean colour minus grey (black = no face), on
    a calibrated scale like dlib's (cosine 0.5 -> 0, so weak matches are below 0)."""

    protocol = FaceProtocol(name="colour-cal/test", detector="mean > 10", aligner="none", embedder="mean colour - 128")
    embedding_dim = 3

    def detect(self, image):
        return [Face(box=(0, 0, image.shape[1], image.shape[0]), score=1.0)] if image.mean() > 10 else []

    def embed(self, image, faces):
        for face in faces:
            vector = image.reshape(-1, 3).mean(0) - 128.0
            face.embedding = (vector / np.linalg.norm(vector)).astype(np.float32)
        return faces

    def calibrate(self, cosine):
        return (np.asarray(cosine, dtype=np.float64) - 0.5) / 0.5


def _colour(path, rgb):
    Image.new("RGB", (32, 32), rgb).save(path)
    return path


def test_sis_floors_each_photo_at_the_no_face_level(tmp_path):
    backend = CalibratedColour()
    sis = METRICS.create("sis", backend=backend, cache=FaceCache(backend))
    assert sis.protocol["name"].startswith("sis/v2+")
    near = _colour(tmp_path / "near.png", (220, 200, 128))  # cosine with the image ~0.99: calibrated ~0.98
    far = _colour(tmp_path / "far.png", (40, 220, 128))  # cosine ~0.05: calibrated ~-0.9
    faceless = _colour(tmp_path / "faceless.png", (0, 0, 0))
    image = _colour(tmp_path / "gen.png", (220, 220, 128))

    # 1. A photo with no face: SIS is 0 (Stellar's value), not the weak match below 0 (sis/v1 gave ~-0.9).
    person = Identity("ann", [near, far, faceless])
    (row,) = sis.update([Sample("a", image, person, near)])
    assert (row.value, row.status) == (0.0, "no_face") and row.detail["worst_photo"] == str(faceless)
    assert row.detail["per_photo_unfloored"][str(far)] < -0.5 and row.detail["per_photo"][str(far)] == 0.0
    assert row.detail["floored"] is True

    # 2. Faces everywhere, one weak match below 0: SIS is 0 (the floor decided), the raw values are kept.
    (row,) = sis.update([Sample("b", image, Identity("bob", [near, far]), near)])
    assert (row.value, row.status) == (0.0, "ok") and row.detail["worst_photo"] == str(far)
    cosine = float(row.detail["raw_cosine"])
    assert row.detail["per_photo_unfloored"][str(far)] == pytest.approx((cosine - 0.5) / 0.5)

    # 3. Every photo above 0: SIS is the worst photo's score, untouched by the floor.
    (row,) = sis.update([Sample("c", image, Identity("cy", [near, image]), near)])
    assert row.value == pytest.approx(min(row.detail["per_photo_unfloored"].values())) and row.value > 0.9
    assert row.detail["floored"] is False and row.status == "ok"
