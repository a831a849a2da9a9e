"""CLIP-T (Stellar baseline): cosine between the generated image and its prompt under CLIP.

The prompt is the template with ``{}`` -> "a person"; a prompt longer than the encoder's limit (77 tokens
for CLIP) is truncated and the row says so (status ``truncated``, ``detail.truncated``). Default CLIP:
``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` (``--clip-model``).
"""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import clip_image, clip_prompt


def text_row(metric: VisionLanguageMetric, sample: Sample, value: float, text, **detail) -> Score:
    status = "truncated" if text.truncated else "ok"
    return metric._row(sample, value, status, text=text.text, truncated=text.truncated, tokens=text.tokens, **detail)


@METRICS.register("clip-t")
class ClipT(VisionLanguageMetric):
    name = "clip-t"
    roles = ("clip",)
    features = (clip_image(), clip_prompt())
    definition = ("cosine(CLIP image embedding of the generated image, CLIP text embedding of the prompt with {} -> "
                  "'a person', truncated to the encoder's token limit).")

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        image, text = features[self.features[0]], features[self.features[1]]
        return text_row(self, sample, float(np.dot(image, text.embedding)), text)
