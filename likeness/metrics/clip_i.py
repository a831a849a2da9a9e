"""CLIP-I (Stellar baseline): cosine between the generated image and the reference photo under CLIP."""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import clip_image, clip_reference


@METRICS.register("clip-i")
class ClipI(VisionLanguageMetric):
    name = "clip-i"
    roles = ("clip",)
    features = (clip_image(), clip_reference())
    definition = "cosine(CLIP image embedding of the generated image, CLIP image embedding of the reference photo)."

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        image, reference = features[self.features[0]], features[self.features[1]]
        return self._row(sample, float(np.dot(image, reference)), "ok", reference=str(sample.reference))
