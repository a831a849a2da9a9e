"""RFS, relation fidelity: likeness' open definition (protocol ``rfs/open-vqa-v1``).

Stellar's RFS was never released: in the paper a scene-graph model predicts relations between detected
entities and RFS is the mean probability given to the prompt's ground-truth relations. Here each relation
triple of the prompt (subject, predicate, object; the open prompt set ships them) becomes the yes/no question
"is the <subject> <predicate> the <object>?", a BLIP VQA model (default ``Salesforce/blip-vqa-base``,
``--vlm-model``) answers it, and the triple's score is P(yes) = softmax over the answer decoder's first-token
logits of "yes" and "no". RFS = mean over the triples. Differences from the paper: no entity detection or
scene graph, so a relation can be credited without the model localising both entities; the VQA model's
language prior can answer "yes" to plausible relations; numbers are not comparable with the paper's.
Prompts without triples (e.g. Stellar-H) are excluded (status ``no_relations``).
"""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import relations


@METRICS.register("rfs")
class RelationFidelity(VisionLanguageMetric):
    name = "rfs"
    version = "open-vqa-v1"
    roles = ("vlm",)
    features = (relations(),)
    definition = ("likeness' open RFS (not the paper's scene-graph RFS): mean over the prompt's relation triples of "
                  "P(yes | image, 'is the <subject> <predicate> the <object>?') from a BLIP VQA model; no triples = excluded.")

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        rel = features[self.features[0]]
        value = float(np.mean(rel.p_yes))
        return self._row(sample, value, "ok", questions=dict(zip(rel.questions, [float(p) for p in rel.p_yes])))

    def summarize(self, scores: list[Score]) -> dict:
        summary = super().summarize(scores)
        summary["excluded_no_relations"] = sum(s.status == "no_relations" for s in scores)
        return summary
