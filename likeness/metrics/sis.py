"""SIS, stability of identity (Stellar): the minimum IPS over every photo of the identity.

A photo of the identity without a face scores 0 (as in Stellar); a photo that is missing or
unreadable is left out and named in ``detail.skipped`` (status ``ref_partial``), so one bad file
neither crashes the run nor silently changes the number.
"""

from __future__ import annotations

from likeness.faces import FaceResult
from likeness.metrics import METRICS
from likeness.metrics.base import FaceMetric, Sample, Score, face_similarity


@METRICS.register("sis")
class IdentityStability(FaceMetric):
    name = "sis"
    definition = "min over the identity's photos of IPS(generated image, photo); 0 if any side has no face."

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        problem = self._generated_problem(sample, generated)
        if problem is not None:
            return problem
        photos = list(sample.identity.photos) if sample.identity else []
        if sample.reference is not None and sample.reference not in photos:
            photos.append(sample.reference)
        if not photos:
            return self._score(sample, None, "ref_missing", generated, problem=f"{sample.item_id}: identity has no photos")
        per_photo, skipped, raw = {}, {}, {}
        for photo in photos:
            reference = self.cache.get(photo)
            if reference.ok:
                match = face_similarity(self.backend, generated, reference)
                per_photo[str(photo)], raw[str(photo)] = match["value"], match["raw_cosine"]
            elif reference.status == "no_face":
                per_photo[str(photo)], raw[str(photo)] = 0.0, None
            else:
                skipped[str(photo)] = reference.problem
        if not per_photo:
            return self._score(sample, None, "ref_missing", generated, skipped=skipped, problem="no usable photo of the identity")
        worst = min(per_photo, key=per_photo.get)
        status = "no_face" if raw[worst] is None else ("ref_partial" if skipped else "ok")
        return self._score(sample, per_photo[worst], status, generated, per_photo=per_photo, raw_cosine=raw[worst],
                           worst_photo=worst, skipped=skipped)
