"""Several people in one image: which face is whom, how much each looks like themselves, and confusion.

Why: IPS takes the best (face, photo) pair, so an image of "Obama and Biden" that shows Obama twice scores as
well as one that shows both (Celeb Basis's two-person prompts, multi-concept data; UMO's identity confusion).
Here the faces are matched one-to-one to the people the prompt names, by an optimal assignment on similarity
(``scipy.optimize.linear_sum_assignment``, maximising the summed similarity), then each person is scored.

The people an image should show come from its sidecar: ``"identities": ["obama", "biden"]`` (names or keys of
the dataset's people); without that field, the image's one identity. A face's similarity to a person is the
best (face, photo face) pair over that person's photos, on the backend's (calibrated) scale.

Per image: value = mean over the named people of their matched face's similarity (0 for a person no face was
left for, as IPS scores a missing face); ``detail``: per person (face index, similarity, confused), the
similarity matrix, and ``confused``: the people whose face is closer to another named person than to them.
Statuses: ``ok``; ``extra_faces`` (more faces than people: scored, the unmatched faces listed);
``missing_faces`` (fewer faces than people: scored, the unmatched people get 0); ``no_face`` /
``face_too_small`` (0, as IPS); ``unknown_person`` (the sidecar names someone not in the dataset: not scored,
named in ``detail.unknown``); ``ref_no_face`` (a named person has no photo with a usable face: not scored).
The summary adds ``confusion_rate``: confused matched faces / matched faces, over the scored images.
"""

from __future__ import annotations

import numpy as np

from likeness.data.names import index_by_name
from likeness.faces import FaceResult
from likeness.metrics import METRICS
from likeness.metrics.base import FaceMetric, Sample, Score

SIDECAR_FIELD = "identities"


def assign(similarity: np.ndarray) -> list[tuple[int, int]]:
    """Optimal one-to-one (face, person) pairs maximising the summed similarity of a faces x people matrix."""
    from scipy.optimize import linear_sum_assignment

    if similarity.size == 0:
        return []
    faces, people = linear_sum_assignment(similarity, maximize=True)
    return [(int(f), int(p)) for f, p in zip(faces, people)]


def confused(similarity: np.ndarray, face: int, person: int) -> bool:
    """Whether ``face`` (matched to ``person``) is closer to another named person than to its own."""
    others = np.delete(similarity[face], person)
    return bool(others.size and others.max() > similarity[face, person])


@METRICS.register("multi-id")
class NamedPeople(FaceMetric):
    name = "multi-id"
    definition = ("faces matched one-to-one to the people the prompt names (optimal assignment on similarity); mean "
                  "over those people of their face's best similarity to their photos (0 if no face is left for one); "
                  "confusion: a matched face closer to another named person")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._by_name = index_by_name(self.identities)

    def named(self, sample: Sample) -> tuple[list, list[str]]:
        """(the named people's Identity objects, names not in the dataset)."""
        names = sample.meta.get(SIDECAR_FIELD) if sample.meta else None
        if not names:
            return ([sample.identity] if sample.identity else []), ([] if sample.identity else ["(no identity)"])
        if isinstance(names, str):
            names = [names]
        found, unknown = [], []
        for name in names:
            person = self._by_name.get(str(name))
            (found if person is not None else unknown).append(person if person is not None else str(name))
        return found, unknown

    def score(self, sample: Sample, generated: FaceResult) -> Score:
        people, unknown = self.named(sample)
        if unknown:
            return self._score(sample, None, "unknown_person", generated, unknown=unknown, problem=(
                f"{sample.item_id}: the prompt names {', '.join(map(repr, unknown))}, not in the dataset"))
        problem = self._generated_problem(sample, generated)
        if problem is not None:
            problem.detail["people"] = [p.name for p in people]
            return problem
        columns, no_face = [], []
        for person in people:
            photos = [self.cache.get(photo) for photo in person.photos]
            faces = [f for result in photos if result.ok for f in result.faces]
            if not faces:
                no_face.append(person.name)
            columns.append(np.stack([f.embedding for f in faces]) if faces else None)
        if no_face:
            return self._score(sample, None, "ref_no_face", generated, side="reference", problem=(
                f"no photo of {', '.join(map(repr, no_face))} has a usable face"))
        embeddings = generated.embeddings()
        raw = np.stack([(embeddings @ column.T).max(axis=1) for column in columns], axis=1)  # faces x people
        similarity = np.asarray(self.backend.calibrate(raw), dtype=np.float64)
        pairs = assign(similarity)
        per_person = {p.name: {"face": None, "similarity": 0.0, "confused": False} for p in people}
        flagged = []
        for face, person in pairs:
            name = people[person].name
            mixed = confused(similarity, face, person)
            per_person[name] = {"face": face, "similarity": float(similarity[face, person]), "confused": mixed}
            if mixed:
                flagged.append(name)
        n_faces, n_people = len(generated.faces), len(people)
        status = "ok" if n_faces == n_people else ("extra_faces" if n_faces > n_people else "missing_faces")
        value = float(np.mean([entry["similarity"] for entry in per_person.values()]))
        matched = {face for face, _ in pairs}
        return self._score(sample, value, status, generated, people=per_person, confused=flagged,
                           matched_faces=len(pairs), unmatched_faces=[f for f in range(n_faces) if f not in matched],
                           similarity=similarity.round(6).tolist(), raw_cosine=raw.round(6).tolist())

    def summarize(self, scores: list[Score]) -> dict:
        summary = super().summarize(scores)
        matched = sum(s.detail.get("matched_faces", 0) for s in scores if s.value is not None)
        flagged = sum(len(s.detail.get("confused", [])) for s in scores if s.value is not None)
        summary["confused"] = flagged
        summary["confusion_rate"] = flagged / matched if matched else float("nan")
        return summary
