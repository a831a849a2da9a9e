"""TI-CLIP (Gen4Gen): CLIP score between the image and the *background prompt only* (sidecar key
``background``), CLIP ViT-B/32 by default (``--gen4gen-clip-model``). Images without a background prompt
are excluded (status ``no_background``), never scored 0."""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.clip_t import text_row
from likeness.metrics.features import clip_background, clip_image


@METRICS.register("ti-clip")
class TiClip(VisionLanguageMetric):
    name = "ti-clip"
    roles = ("gen4gen-clip",)
    features = (clip_image("gen4gen-clip"), clip_background("gen4gen-clip"))
    definition = "cosine(CLIP image embedding of the generated image, CLIP text embedding of its background prompt only)."

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        image, text = features[self.features[0]], features[self.features[1]]
        return text_row(self, sample, float(np.dot(image, text.embedding)), text)
