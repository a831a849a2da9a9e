"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on human preferences; score = logit_scale x
cosine(image, prompt), as its authors compute it (about 20-23 for real images). Weights by hub id or path
(``--pickscore-model``, default ``yuvalkirstain/PickScore_v1``)."""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.clip_t import text_row
from likeness.metrics.features import clip_image, clip_prompt


@METRICS.register("pickscore")
class PickScore(VisionLanguageMetric):
    name = "pickscore"
    roles = ("pickscore",)
    features = (clip_image("pickscore"), clip_prompt("pickscore"))
    definition = "PickScore: logit_scale * cosine(PickScore image embedding, PickScore text embedding of the prompt)."

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        image, text = features[self.features[0]], features[self.features[1]]
        scale = self.models.get("pickscore").logit_scale
        return text_row(self, sample, scale * float(np.dot(image, text.embedding)), text, logit_scale=scale)
