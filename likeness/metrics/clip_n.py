"""CLIP-N (Stellar): cosine between the *reference photo* and the prompt. It is the bar of the exploitation
penalty: an image follows its prompt only if CLIP-T > CLIP-N + 2 std(CLIP-N) (``likeness.metrics.penalty``),
so a copy of the input photo cannot win on identity."""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.clip_t import text_row
from likeness.metrics.features import clip_prompt, clip_reference


@METRICS.register("clip-n")
class ClipN(VisionLanguageMetric):
    name = "clip-n"
    roles = ("clip",)
    features = (clip_reference(), clip_prompt())
    definition = "cosine(CLIP image embedding of the reference photo, CLIP text embedding of the prompt as in CLIP-T)."

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        reference, text = features[self.features[0]], features[self.features[1]]
        return text_row(self, sample, float(np.dot(reference, text.embedding)), text, reference=str(sample.reference))
