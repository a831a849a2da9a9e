"""IPS, identity preservation (Stellar): max similarity over (generated face, reference face) pairs.

0 with status ``no_face`` when either image has no face; the generated image's face count is kept.
With the dlib backend the value is the calibrated score (strangers ~0); ``raw_cosine`` is in detail.
"""

from __future__ import annotations

from likeness.faces import FaceResult
from likeness.metrics import METRICS
from likeness.metrics.base import FaceMetric, Sample, Score, face_similarity, reference_faces


@METRICS.register("ips")
class IdentityPreservation(FaceMetric):
    name = "ips"
    definition = "max similarity over all (generated face, reference-photo face) pairs; 0 if either has no face."

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        reference, problem = reference_faces(self, sample, generated)
        if problem is not None:
            return problem
        match = face_similarity(self.backend, generated, reference)
        return self._score(sample, match.pop("value"), "ok", generated, reference=str(sample.reference), **match)
