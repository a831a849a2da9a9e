"""SIS, stability of identity (Stellar): the minimum IPS over every photo of the identity.

A photo of the identity without a face scores 0 (as in Stellar); a photo that is missing or
unreadable is left out and named in ``detail.skipped`` (status ``ref_partial``), so one bad file
neither crashes the run nor silently changes the number.

Protocol ``sis/v2``: each photo's score is floored at 0 (``max(0, calibrated score)``) before the minimum, so
"no face = 0" is the bottom of the scale. On a calibrated scale (dlib: strangers ~0) a weak match can be below 0,
and without the floor a faceless photo (0) would rank above it and SIS would not be "the worst photo" as in
Stellar, where a faceless photo makes SIS 0. Each photo's unfloored score and raw cosine stay in
``detail.per_photo_unfloored`` / ``detail.raw_cosine``, and ``detail.floored`` says when the floor decided.
``sis/v1`` (no floor) rows are never mixed with ``sis/v2`` ones.
"""

from __future__ import annotations

from likeness.faces import FaceResult
from likeness.metrics import METRICS
from likeness.metrics.base import NO_FACE_STATUSES, FaceMetric, Sample, Score, face_similarity


@METRICS.register("sis")
class IdentityStability(FaceMetric):
    name = "sis"
    version = "v2"
    definition = ("min over the identity's photos of max(0, IPS(generated image, photo)); 0 if any side has no face "
                  "(scores below 0 are floored at the no-face level).")

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        problem = self._generated_problem(sample, generated)
        if problem is not None:
            return problem
        photos = list(sample.identity.photos) if sample.identity else []
        if sample.reference is not None and sample.reference not in photos:
            photos.append(sample.reference)
        if not photos:
            return self._score(sample, None, "ref_missing", generated, problem=f"{sample.item_id}: identity has no photos")
        per_photo, unfloored, skipped, raw = {}, {}, {}, {}
        for photo in photos:
            reference = self.cache.get(photo)
            if reference.ok:
                match = face_similarity(self.backend, generated, reference)
                unfloored[str(photo)], raw[str(photo)] = match["value"], match["raw_cosine"]
                per_photo[str(photo)] = max(0.0, match["value"])
            elif reference.status in NO_FACE_STATUSES:
                per_photo[str(photo)], raw[str(photo)] = 0.0, None
            else:
                skipped[str(photo)] = reference.problem
        if not per_photo:
            return self._score(sample, None, "ref_missing", generated, skipped=skipped, problem="no usable photo of the identity")
        # The worst photo; on a tie at 0 a faceless photo is named first (it is why SIS is 0).
        worst = min(per_photo, key=lambda p: (per_photo[p], raw[p] is not None))
        status = "no_face" if raw[worst] is None else ("ref_partial" if skipped else "ok")
        return self._score(sample, per_photo[worst], status, generated, per_photo=per_photo, per_photo_unfloored=unfloored,
                           raw_cosine=raw[worst], worst_photo=worst, skipped=skipped,
                           floored=any(v < 0 for v in unfloored.values()))
