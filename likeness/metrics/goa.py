"""GOA, grounding objects accuracy (Stellar), with OWL-ViT (default ``google/owlvit-large-patch14``,
``--owlvit-model``).

Queries are the prompt's detectables minus role words that name the person itself (clown, astronaut,
doctor, ...). Every predicted box is assigned to the query it scores highest on; an object's score is the
best score among the boxes assigned to it (0 when none is); GOA = mean over objects, in [0, 1]. Prompts with
no detectable left are excluded and counted (status ``no_detectables``), not scored 0 as the official code
does (which makes GOA meaningless on Stellar-H).
"""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import detectables


def goa_value(scores: np.ndarray) -> tuple[float, list[float]]:
    """(GOA, per-object scores) from a boxes x objects matrix of detector scores."""
    n_boxes, n_objects = scores.shape
    if n_objects == 0:
        return float("nan"), []
    best = np.argmax(scores, axis=1) if n_boxes else np.zeros(0, dtype=int)
    per_object = [float(scores[best == q, q].max()) if np.any(best == q) else 0.0 for q in range(n_objects)]
    return float(np.mean(per_object)), per_object


@METRICS.register("goa")
class GroundingObjectsAccuracy(VisionLanguageMetric):
    name = "goa"
    roles = ("owlvit",)
    features = (detectables(),)
    definition = ("OWL-ViT queried with the prompt's detectables minus role words; per object the best score among "
                  "boxes whose best query is that object (0 if none); mean over objects; no detectables = excluded.")

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        det = features[self.features[0]]
        value, per_object = goa_value(det.scores)
        return self._row(sample, value, "ok", objects=dict(zip(det.queries, per_object)), dropped_role_words=det.dropped,
                         boxes=int(det.scores.shape[0]))

    def summarize(self, scores: list[Score]) -> dict:
        summary = super().summarize(scores)
        summary["excluded_no_detectables"] = sum(s.status == "no_detectables" for s in scores)
        return summary
