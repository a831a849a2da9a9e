"""CP-CLIP (Gen4Gen): does each requested concept appear, and look like its reference images?

OWL-ViT (default ViT-B/32, ``--gen4gen-owlvit-model``) is queried with each concept's class label and keeps
the best box per label (the k best when k concepts share a label) that scores at least ``min_box_score``
(0.1, likeness' choice: a box below it is no detection, so a missing concept costs). Each box crop is
compared, by CLIP image cosine (default ViT-B/32, ``--gen4gen-clip-model``), with every concept's reference
images (mean over them); each box takes its best-matching concept; CP-CLIP = sum over boxes / number of
requested concepts. Concepts come from the sidecar's ``concepts`` list, else the identity (label "person").
"""

from __future__ import annotations

import numpy as np

from likeness.metrics import METRICS
from likeness.metrics.base import Sample, Score, VisionLanguageMetric
from likeness.metrics.features import concepts


def cp_clip_value(crops: np.ndarray, references: list[np.ndarray]) -> tuple[float, list[int], list[float]]:
    """(CP-CLIP, best concept per box, its similarity) from box-crop and per-concept reference embeddings."""
    if not references:
        return float("nan"), [], []
    sims = np.full((crops.shape[0], len(references)), -np.inf)
    for c, refs in enumerate(references):
        if refs.shape[0]:
            sims[:, c] = (crops @ refs.T).mean(axis=1)
    best = np.argmax(sims, axis=1) if crops.shape[0] else np.zeros(0, dtype=int)
    per_box = [float(sims[b, c]) for b, c in enumerate(best)]
    return float(np.sum(per_box) / len(references)), [int(c) for c in best], per_box


@METRICS.register("cp-clip")
class CpClip(VisionLanguageMetric):
    name = "cp-clip"
    roles = ("gen4gen-owlvit", "gen4gen-clip")
    features = (concepts(),)
    definition = ("Gen4Gen CP-CLIP: OWL-ViT best box per concept label (score >= 0.1); each box crop takes its best "
                  "mean CLIP image cosine to a concept's reference images; sum over boxes / number of requested concepts.")

    def score_features(self, sample: Sample, features: dict) -> Score:
        problem = self.problem(sample, features, self.features)
        if problem is not None:
            return problem
        c = features[self.features[0]]
        if not any(r.shape[0] for r in c.references):
            return self._row(sample, None, "ref_missing", problem="; ".join(c.missing_references) or "no reference image")
        value, best, per_box = cp_clip_value(c.crops, c.references)
        status = "ref_partial" if c.missing_references else "ok"
        return self._row(sample, value, status, concepts=c.names, boxes=[
            {"label": label, "score": s, "box": box, "concept": c.names[k], "similarity": sim}
            for label, s, box, k, sim in zip(c.box_labels, c.box_scores, c.boxes, best, per_box)],
            skipped=c.missing_references)
