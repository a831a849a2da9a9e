"""What every metric shares: the sample it scores, the score it returns, update/compute, summaries.

Metrics follow torchmetrics: ``update(...)`` scores a batch and keeps the per-image :class:`Score` objects;
``compute()`` summarises everything seen. Unlike torchmetrics, a metric does not run its own model: it
declares the features it needs and ``update_features(samples, features)`` receives them, computed once per
image for all metrics by ``likeness.metrics.features.FeatureExtractor``. ``summarize(scores)`` works on any
list of scores (e.g. read back from the results store), so a resumed evaluation reports the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from likeness.data.identities import Identity
from likeness.faces import FaceBackend, FaceCache, FaceResult, analyze_path
from likeness.metrics.features import FACES

# Statuses of a file without a scorable face: scored 0 as in Stellar (face_too_small: MTCNN saw faces below its
# minimum size, see likeness.faces.cache.no_face_result).
NO_FACE_STATUSES = ("no_face", "face_too_small")


@dataclass
class Score:
    """One metric value for one image; ``value`` is None when the image could not be scored at all."""

    item_id: str
    metric: str
    value: float | None
    status: str = "ok"
    n_faces: int | None = None
    protocol: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)


@dataclass
class Sample:
    """A generated image, who it should show, and the reference photo it was generated from."""

    item_id: str
    image: Path
    identity: Identity | None
    reference: Path | None
    meta: dict = field(default_factory=dict)  # the image's sidecar: prompt, detectables, relations, ...


class Metric:
    """A metric declares the per-image features it needs (:attr:`features`); the evaluator computes each
    feature once per image and hands the same values to every metric that asked (``score_features``).
    The base takes no model: face metrics (:class:`FaceMetric`) take a face backend, text-image metrics
    the shared :class:`~likeness.models.vision_language.VisionModels`."""

    name: str = ""
    version: str = "v1"
    definition: str = ""
    features: tuple = ()  # likeness.metrics.features.Feature keys
    roles: tuple[str, ...] = ()  # vision-language model roles whose models it needs

    def __init__(self, identities: list[Identity] | None = None, **_options):
        self.identities = identities or []
        self.scores: list[Score] = []

    @property
    def protocol(self) -> dict:
        """Stored with every row; ``name`` changes whenever numbers would not be comparable."""
        return {"name": f"{self.name}/{self.version}", "metric": self.name, "definition": self.definition}

    def describe(self) -> str:
        return f"{self.protocol['name']}: {self.definition}"

    def score_features(self, sample: Sample, features: dict) -> Score:
        raise NotImplementedError

    def update_features(self, samples: list[Sample], features: list[dict]) -> list[Score]:
        new = [self.score_features(sample, feats) for sample, feats in zip(samples, features)]
        self.scores.extend(new)
        return new

    def compute(self) -> dict:
        return self.summarize(self.scores)

    def reset(self) -> None:
        self.scores = []

    def summarize(self, scores: list[Score]) -> dict:
        """Flat mean and std over scored images (no-face images count as 0), as the Stellar code does, a 95%
        bootstrap interval of the mean over items, and how many images had each status."""
        from likeness.metrics.stats import bootstrap_ci

        values = np.array([s.value for s in scores if s.value is not None], dtype=np.float64)
        statuses: dict[str, int] = {}
        for s in scores:
            statuses[s.status] = statuses.get(s.status, 0) + 1
        return {
            "metric": self.name,
            "value": float(values.mean()) if values.size else float("nan"),
            "mean": float(values.mean()) if values.size else float("nan"),
            "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),  # pandas' sample std, as Stellar's code
            "ci95": list(bootstrap_ci(values)),
            "count": int(values.size),
            "no_face": sum(s.status in NO_FACE_STATUSES for s in scores),
            "unscored": sum(s.value is None for s in scores),
            "statuses": statuses,
            "protocol": self.protocol["name"],
        }

    def _row(self, sample: Sample, value, status: str = "ok", **detail) -> Score:
        """A row; a non-finite value (NaN/inf model output) becomes unscored with status ``nan_output``."""
        if value is not None and not np.isfinite(value):
            detail["raw_value"] = str(value)
            value, status = None, "nan_output"
        return Score(sample.item_id, self.name, None if value is None else float(value), status, None, self.protocol, detail)


class FaceMetric(Metric):
    """An identity metric: scores the faces of the generated image against the identity's photos."""

    features = (FACES,)

    def __init__(self, backend: FaceBackend | None = None, cache: FaceCache | None = None, identities: list[Identity] | None = None,
                 **_options):
        super().__init__(identities)
        if backend is None:
            from likeness.faces import get_backend, metric_backend_options

            backend = cache.backend if cache is not None else get_backend(**metric_backend_options())
        self.backend = backend
        self.cache = cache if cache is not None else FaceCache(backend)

    @property
    def protocol(self) -> dict:
        face = self.backend.protocol
        return {
            "name": f"{self.name}/{self.version}+{face.name}",
            "metric": self.name,
            "definition": self.definition,
            "face": face.to_dict(),
        }

    def describe(self) -> str:
        return f"{self.protocol['name']}: {self.definition} Face protocol: {self.backend.protocol.describe()}"

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        raise NotImplementedError

    def score_features(self, sample: Sample, features: dict) -> Score:
        return self.score(sample, features[FACES])

    def update(self, samples: list[Sample], generated: list[FaceResult] | None = None) -> list[Score]:
        """Score a batch. ``generated`` (faces of each sample's image) lets several metrics share one face pass."""
        if generated is None:
            generated = [analyze_path(self.backend, s.image) for s in samples]
        return self.update_features(samples, [{FACES: faces} for faces in generated])

    # -- helpers for subclasses ---------------------------------------------------------------------

    def _score(self, sample: Sample, value, status: str, generated: FaceResult, **detail) -> Score:
        return Score(
            item_id=sample.item_id,
            metric=self.name,
            value=None if value is None else float(value),
            status=status,
            n_faces=len(generated.faces),
            protocol=self.protocol,
            detail=detail,
        )

    def _generated_problem(self, sample: Sample, generated: FaceResult) -> Score | None:
        """The score for a generated image without a usable face: 0 if no face, unscored if unreadable."""
        if generated.ok:
            return None
        value = 0.0 if generated.status in NO_FACE_STATUSES else None
        return self._score(sample, value, generated.status, generated, side="generated", problem=generated.problem)


class VisionLanguageMetric(Metric):
    """A text-image metric on the run's shared vision-language models (``roles`` name which). Its protocol
    name carries the model ids, so scores under another model are never mixed."""

    def __init__(self, models=None, identities: list[Identity] | None = None, **_options):
        super().__init__(identities)
        if models is None:
            from likeness.models.vision_language import VisionModels

            models = VisionModels()
        self.models = models

    @property
    def protocol(self) -> dict:
        ids = {role: self.models.model_id(role) for role in self.roles}
        protocol = {"name": f"{self.name}/{self.version}+" + "+".join(ids.values()), "metric": self.name,
                    "definition": self.definition, "models": ids}
        runtime = self.models.runtime(self.roles) if hasattr(self.models, "runtime") else {}
        if runtime:  # half-precision models give other numbers: another protocol (float32 keeps the old name)
            protocol["name"] += "@" + "+".join(sorted(set(runtime.values())))
            protocol["runtime"] = runtime
        return protocol

    @classmethod
    def unavailable(cls, models) -> list[str]:
        """What is missing to run it without the network (empty: it can run); bench picks defaults with it."""
        return [models.model_id(r) for r in cls.roles if not models.available(r)]

    def update(self, samples: list[Sample], extractor=None) -> list[Score]:
        """Score samples on their own (the evaluator shares one extractor across metrics instead)."""
        from likeness.metrics.features import FeatureExtractor

        extractor = extractor or FeatureExtractor(self.models)
        return self.update_features(samples, extractor.extract(samples, self.features))

    def problem(self, sample: Sample, features: dict, keys) -> Score | None:
        """The row for the first feature that could not be computed (its status and problem), or None."""
        from likeness.metrics.features import FeatureError

        for key in keys:
            value = features.get(key)
            if isinstance(value, FeatureError):
                return self._row(sample, None, value.status, problem=value.problem)
        return None


def reference_faces(metric: FaceMetric, sample: Sample, generated: FaceResult) -> tuple[FaceResult | None, Score | None]:
    """The reference photo's faces, or the score a missing face on either side gives (0 for no face,
    unscored for an unreadable or missing file)."""
    problem = metric._generated_problem(sample, generated)
    if problem is not None:
        return None, problem
    if sample.reference is None:
        return None, metric._score(sample, None, "ref_missing", generated, problem=f"{sample.item_id}: no reference photo")
    reference = metric.cache.get(sample.reference)
    if reference.status in NO_FACE_STATUSES:
        return None, metric._score(sample, 0.0, reference.status, generated, side="reference", problem=reference.problem)
    if not reference.ok:
        return None, metric._score(sample, None, f"ref_{reference.status}", generated, side="reference", problem=reference.problem)
    return reference, None


def face_similarity(backend: FaceBackend, generated: FaceResult, reference: FaceResult) -> dict:
    """Best (generated face, reference face) pair: raw cosine and the backend's calibrated score."""
    cosines = generated.embeddings() @ reference.embeddings().T
    g, r = np.unravel_index(int(np.argmax(cosines)), cosines.shape)
    raw = float(cosines[g, r])
    return {"value": float(backend.calibrate(raw)), "raw_cosine": raw, "generated_face": int(g), "reference_face": int(r),
            "reference_faces": len(reference.faces)}
