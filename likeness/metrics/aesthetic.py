"""LAION aesthetic score: the LAION "improved aesthetic predictor" MLP on the L2-normalised CLIP ViT-L/14
image embedding (about 1-10). The head's weights by file or ``repo:file`` (``--aesthetic-model``), its CLIP
by hub id or path (``--aesthetic-clip-model``)."""

from __future__ import annotations

import torch

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import clip_image


@METRICS.register("aesthetic")
class Aesthetic(VisionLanguageMetric):
    name = "aesthetic"
    roles = ("aesthetic-clip", "aesthetic")
    features = (clip_image("aesthetic-clip"),)
    definition = "LAION aesthetic predictor MLP on the L2-normalised CLIP ViT-L/14 image embedding."

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        try:
            head = self.models.get("aesthetic")
        except FileNotFoundError as exc:
            return self._row(sample, None, "model_missing", problem=str(exc))
        embedding = features[self.features[0]]
        param = next(head.parameters())
        if embedding.shape[-1] != param.shape[1]:
            return self._row(sample, None, "model_mismatch",
                             problem=f"aesthetic head expects {param.shape[1]}-d embeddings, its CLIP gives {embedding.shape[-1]}")
        with torch.no_grad():
            value = float(head(torch.as_tensor(embedding, dtype=param.dtype, device=param.device)[None])[0, 0])
        return self._row(sample, value, "ok")
