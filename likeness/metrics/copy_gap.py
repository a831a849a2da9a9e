"""Copy-paste gap: how much closer a generated face is to the reference photo it was made from than to the
identity's other photos.

Why: IPS rewards copying. A method that pastes the reference face scores IPS ~1, yet a real new photo of the
same person sits far lower (WithAnyone's MultiID-Bench: real photos of one person have a median similarity of
about 0.46 with ArcFace). With two or more photos per person the two can be told apart: score the image against
its reference and against the photos it was *not* made from. A copy of the reference has a high IPS and a large
gap; a method that learnt the person keeps a high IPS and a small gap (the other photos are as close as the
reference). Per image::

    gap = sim(image, reference) - mean over the other photos of sim(image, photo)

on the face backend's (calibrated) scale, each sim the best (generated face, photo face) pair, as IPS.

An other photo the image *is* (raw cosine >= 0.995: the same pixels; two photos of one person reach about 0.97)
says nothing about the person's variation, so it is left out (named in ``detail.skipped``): the ``real-photos``
row returns the identity's other photos, and without this rule its gap would compare each photo with itself.

Statuses, none scored 0 (a 0 gap would read as "no copying"): ``single_photo`` (the identity has no other photo),
``copy_of_other_photo`` (the only other photos are the image itself),
``no_face`` / ``face_too_small`` (no face in the generated image), ``ref_no_face`` / ``ref_<status>`` (the
reference photo has no usable face), ``others_no_face`` (no other photo has a usable face). A missing or
faceless other photo is left out and named in ``detail.skipped``.
"""

from __future__ import annotations

import numpy as np

from likeness.faces import FaceResult
from likeness.metrics import METRICS
from likeness.metrics.base import FaceMetric, Sample, Score, face_similarity

SAME_IMAGE_COSINE = 0.995  # raw dlib cosine of the same pixels (1.0) vs two photos of one person (<= ~0.97)


@METRICS.register("copy-gap")
class CopyPasteGap(FaceMetric):
    name = "copy-gap"
    definition = ("sim(image, its reference photo) - mean sim(image, the identity's other photos), each the best face "
                  "pair on the backend's scale; large = a copy of the reference, small = the person; not scored for an "
                  "identity with one photo (single_photo) or without a face")

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        if not generated.ok:
            return self._score(sample, None, generated.status, generated, side="generated", problem=generated.problem)
        photos = list(sample.identity.photos) if sample.identity else []
        if sample.reference is None:
            return self._score(sample, None, "ref_missing", generated, problem=f"{sample.item_id}: no reference photo")
        others = [p for p in photos if p.resolve() != sample.reference.resolve()]
        if not others:
            who = sample.identity.name if sample.identity else "?"
            return self._score(sample, None, "single_photo", generated, problem=(
                f"identity {who!r} has only the reference photo: no other photo to tell copying from likeness"))
        reference = self.cache.get(sample.reference)
        if not reference.ok:
            return self._score(sample, None, f"ref_{reference.status}", generated, side="reference",
                               problem=reference.problem)
        to_reference = face_similarity(self.backend, generated, reference)
        per_photo, skipped, copies = {}, {}, 0
        for photo in others:
            faces = self.cache.get(photo)
            if not faces.ok:
                skipped[str(photo)] = faces.problem
                continue
            match = face_similarity(self.backend, generated, faces)
            if match["raw_cosine"] >= SAME_IMAGE_COSINE:
                skipped[str(photo)] = f"the image is this photo (raw cosine {match['raw_cosine']:.4f})"
                copies += 1
            else:
                per_photo[str(photo)] = match["value"]
        if not per_photo:
            status = "copy_of_other_photo" if copies else "others_no_face"
            return self._score(sample, None, status, generated, skipped=skipped, problem=(
                "the identity's only other photo(s) are the image itself" if copies
                else "no other photo of the identity has a usable face"))
        other = float(np.mean(list(per_photo.values())))
        return self._score(sample, to_reference["value"] - other, "ok", generated, reference=str(sample.reference),
                           reference_similarity=to_reference["value"], other_similarity=other, per_photo=per_photo,
                           skipped=skipped)

    def summarize(self, scores: list[Score]) -> dict:
        """The mean gap, plus the mean similarity to the reference and to the other photos over the same images."""
        summary = super().summarize(scores)
        scored = [s for s in scores if s.value is not None]
        for key in ("reference_similarity", "other_similarity"):
            values = [s.detail[key] for s in scored if key in s.detail]
            summary[key] = float(np.mean(values)) if values else float("nan")
        summary["single_photo"] = sum(s.status == "single_photo" for s in scores)
        return summary
