"""GOA, grounding objects accuracy (Stellar), with OWL-ViT (default ``google/owlvit-large-patch14``,
``--owlvit-model``). Protocol ``goa/v2``: equal to the official stellar-metrics code on the same queries (checked
against its outputs in ``tests/test_stellar_conformance.py``).

Queries are the prompt's detectables minus Stellar's 24 role words that name the person itself (clown, astronaut,
doctor, ...; ``likeness.metrics.features.ROLE_WORDS``, matched exactly as the official code does). Every predicted
box is assigned to the query with its highest logit; an object's score is the best score among the boxes assigned
to it (0 when none is); GOA = mean over objects, in [0, 1]. Two deliberate differences from the official code
(docs/text-metrics.md, "Protocol: likeness vs the official code"): each image is scored on its own queries only
(the official code pads every image's queries with " " up to the longest list of its batch, and the padding takes
part in the best-query choice, so its GOA depends on the batch), and prompts with no detectable left are excluded
and counted (status ``no_detectables``), not scored 0 (the official code, which also crashes on a batch of them).
``goa/v1`` (likeness' own 69 role words; best query on float32 sigmoids, which tie at 1.0 for large logits) rows
are never mixed with ``goa/v2`` ones: the protocol name differs.
"""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import detectables


def goa_value(scores: np.ndarray, logits: np.ndarray | None = None) -> tuple[float, list[float]]:
    """(GOA, per-object scores) from a boxes x objects matrix of detector scores. Each box's best object is
    chosen on the ``logits`` when given (as the official code does: sigmoid scores of large logits tie at 1.0
    in float32, and a tie would go to the first object)."""
    n_boxes, n_objects = scores.shape
    if n_objects == 0:
        return float("nan"), []
    best = np.argmax(scores if logits is None else logits, axis=1) if n_boxes else np.zeros(0, dtype=int)
    per_object = [float(scores[best == q, q].max()) if np.any(best == q) else 0.0 for q in range(n_objects)]
    return float(np.mean(per_object)), per_object


@METRICS.register("goa")
class GroundingObjectsAccuracy(VisionLanguageMetric):
    name = "goa"
    version = "v2"
    roles = ("owlvit",)
    features = (detectables(),)
    definition = ("OWL-ViT queried with the prompt's detectables minus Stellar's 24 role words; per object the best score among "
                  "boxes whose best query is that object (0 if none); mean over objects; no detectables = excluded.")

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        det = features[self.features[0]]
        value, per_object = goa_value(det.scores, det.logits)
        return self._row(sample, value, "ok", objects=dict(zip(det.queries, per_object)), dropped_role_words=det.dropped,
                         boxes=int(det.scores.shape[0]))

    def summarize(self, scores: list[Score]) -> dict:
        summary = super().summarize(scores)
        summary["excluded_no_detectables"] = sum(s.status == "no_detectables" for s in scores)
        return summary
