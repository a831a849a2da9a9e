"""IPS, identity preservation (Stellar): max similarity over (generated face, reference face) pairs.

0 with status ``no_face`` when either image has no face; the generated image's face count is kept.
With the dlib backend the value is the calibrated score (strangers ~0); ``raw_cosine`` is in detail.
"""

from __future__ import annotations

from likeness.faces import FaceResult
from likeness.metrics import METRICS
from likeness.metrics.base import Metric, Sample, Score, face_similarity


@METRICS.register("ips")
class IdentityPreservation(Metric):
    name = "ips"
    definition = "max similarity over all (generated face, reference-photo face) pairs; 0 if either has no face."

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        problem = self._generated_problem(sample, generated)
        if problem is not None:
            return problem
        if sample.reference is None:
            return self._score(sample, None, "ref_missing", generated, problem=f"{sample.item_id}: no reference photo")
        reference = self.cache.get(sample.reference)
        if reference.status == "no_face":
            return self._score(sample, 0.0, "no_face", generated, side="reference", problem=reference.problem)
        if not reference.ok:
            return self._score(sample, None, f"ref_{reference.status}", generated, side="reference", problem=reference.problem)
        match = face_similarity(self.backend, generated, reference)
        return self._score(sample, match.pop("value"), "ok", generated, reference=str(sample.reference), **match)
