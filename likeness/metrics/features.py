"""Per-image features that metrics share, computed once per image, in batches.

A metric lists the :class:`Feature` keys it needs; :class:`FeatureExtractor` computes the union over all
metrics for a batch of samples (the generated image is read once, each CLIP encodes it once, each reference
photo is encoded once per run) and hands every metric the same values. That is what makes "each image
encoded once" true when CLIP-T, CLIP-I, CLIP-N and the penalty are computed together.

A feature that cannot be computed for one image is a :class:`FeatureError` with a named status
(``unreadable``, ``model_missing``, ``no_detectables``, ``empty_prompt``, ``no_relations``, ...): the metric
turns it into a row with that status, and the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from likeness.data.images import ImageError, load_image

PERSON_TEXT = "a person"  # what "{}" becomes in text given to CLIP (Stellar's convention)
# Detectables that name the person itself: querying the detector with them would find the person, so GOA drops
# them. Stellar's official list (stellar-metrics, object_faithfulness.py), compared as the official code does:
# exact, case-sensitive string membership ("Pope" is dropped, "pope" and "a clown" are not).
ROLE_WORDS = frozenset((
    "clown", "businessman", "doctor", "nurse", "cop", "policeman", "firefighter", "fireman", "soldier", "captain",
    "admiral", "scientist", "knight", "DJ", "egyptian pharaoh", "king", "emperor", "astronaut", "cowboy", "wizard",
    "pilot", "Pope", "President", "sumo fighter",
))


def is_role_word(detectable: str) -> bool:
    return str(detectable) in ROLE_WORDS


@dataclass(frozen=True)
class Feature:
    """A feature key: ``kind`` (what) and ``role`` (which model, see ``likeness.models.vision_language.ROLES``)."""

    kind: str
    role: str = ""
    extra: str = ""  # a second model role (CP-CLIP: the CLIP that embeds the boxes the detector found)


FACES = Feature("faces")


def clip_image(role: str = "clip") -> Feature:
    return Feature("clip_image", role)


def clip_reference(role: str = "clip") -> Feature:
    return Feature("clip_reference", role)


def clip_prompt(role: str = "clip") -> Feature:
    return Feature("clip_prompt", role)


def clip_background(role: str = "gen4gen-clip") -> Feature:
    return Feature("clip_background", role)


def detectables(role: str = "owlvit") -> Feature:
    return Feature("detectables", role)


def concepts(detector: str = "gen4gen-owlvit", clip: str = "gen4gen-clip") -> Feature:
    return Feature("concepts", detector, clip)


def relations(role: str = "vlm") -> Feature:
    return Feature("relations", role)


def reward(role: str = "imagereward") -> Feature:
    """A reward model's raw output for (image, prompt) (ImageReward: its head, before normalisation)."""
    return Feature("reward", role)


def judge_answer(aspect: str, role: str = "judge") -> Feature:
    """The judge's answer to the rubric question ``aspect`` (identity: reference photo + image; prompt: image +
    prompt); the rubric version is part of the question, the answer cache is keyed by both."""
    return Feature("judge", role, aspect)


@dataclass
class FeatureError:
    status: str
    problem: str


@dataclass
class TextFeature:
    text: str
    embedding: np.ndarray
    truncated: bool
    tokens: int


@dataclass
class DetectableFeature:
    queries: list[str]  # detectables left after dropping role words
    dropped: list[str]  # role words dropped
    scores: np.ndarray  # boxes x queries
    boxes: np.ndarray
    logits: np.ndarray | None = None  # boxes x queries, before the sigmoid (picks each box's best query)


@dataclass
class ConceptFeature:
    """CP-CLIP's ingredients: per concept its label and reference-image embeddings; per kept box the
    label it was found for, its detector score and its crop's embedding."""

    names: list[str]
    labels: list[str]
    references: list[np.ndarray]
    box_labels: list[str] = field(default_factory=list)
    box_scores: list[float] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    crops: np.ndarray | None = None
    missing_references: list[str] = field(default_factory=list)


@dataclass
class RewardFeature:
    text: str
    raw: float
    truncated: bool
    tokens: int


@dataclass
class RelationFeature:
    triples: list[tuple[str, str, str]]
    questions: list[str]
    p_yes: np.ndarray


@dataclass
class JudgeFeature:
    aspect: str
    rubric: str
    answer: str  # the model's raw answer; the metric parses it
    cached: bool


def prompt_text(meta: dict) -> str | None:
    """The prompt as CLIP reads it: the template with ``{}`` -> "a person" (never the learned token)."""
    text = meta.get("prompt_template")
    if text is None:
        text = meta.get("prompt")
    if text is None:
        return None
    return str(text).replace("{}", PERSON_TEXT)


def relation_question(triple) -> str:
    """A yes/no question from a (subject, predicate, object) triple: ("person", "riding", "bicycle") ->
    "is the person riding the bicycle?"."""
    subject, predicate, obj = (str(t).strip() for t in triple)
    return f"is the {subject} {predicate} the {obj}?"


def sample_concepts(sample) -> list[dict]:
    """The concepts an image should show: the sidecar's ``concepts`` ([{name, label, images}]) when present
    (Gen4Gen-style compositions), else the identity itself (label "person", its photos)."""
    listed = sample.meta.get("concepts") if isinstance(sample.meta, dict) else None
    if listed:
        return [{"name": str(c.get("name") or c.get("label")), "label": str(c.get("label") or c.get("name")),
                 "images": [Path(p) for p in c.get("images") or []]} for c in listed]
    photos = list(sample.identity.photos) if sample.identity else []
    if not photos and sample.reference is not None:
        photos = [sample.reference]
    if not photos:
        return []
    name = sample.identity.name if sample.identity else "person"
    return [{"name": name, "label": "person", "images": photos}]


class FeatureExtractor:
    """Computes requested features for a batch of samples with shared models; caches reference photos."""

    def __init__(self, models=None, face_backend=None, min_box_score: float = 0.1):
        self.models = models
        self.face_backend = face_backend
        self.min_box_score = min_box_score
        self._references: dict[tuple[str, str], object] = {}

    def extract(self, samples: list, wanted) -> list[dict]:
        wanted = list(dict.fromkeys(wanted))
        out = [dict() for _ in samples]
        images: list = [None] * len(samples)
        if any(f.kind != "faces" for f in wanted):
            for i, sample in enumerate(samples):
                try:
                    images[i] = load_image(sample.image)
                except ImageError as exc:
                    images[i] = FeatureError(exc.status, str(exc))
        for feature in wanted:
            values = getattr(self, f"_{feature.kind}")(feature, samples, images)
            for i, value in enumerate(values):
                out[i][feature] = value
        return out

    # -- helpers -----------------------------------------------------------------------------------

    def _model(self, role: str):
        from likeness.models.vision_language import VisionModelError

        try:
            return self.models.get(role), None
        except VisionModelError as exc:
            return None, FeatureError("model_missing", str(exc))

    @staticmethod
    def _readable(images) -> list[int]:
        return [i for i, im in enumerate(images) if not isinstance(im, FeatureError)]

    # -- one method per feature kind ------------------------------------------------------------------

    def _faces(self, feature, samples, images):
        from likeness.faces import analyze_path

        if hasattr(self.face_backend, "analyze_paths"):  # batched engines (dlib-torch) take the batch at once
            return list(self.face_backend.analyze_paths([s.image for s in samples]))
        return [analyze_path(self.face_backend, s.image) for s in samples]

    def _clip_image(self, feature, samples, images):
        model, error = self._model(feature.role)
        values = [error or im for im in images]
        if error:
            return values
        ok = self._readable(images)
        embeddings = model.encode_images([images[i] for i in ok])
        for k, i in enumerate(ok):
            values[i] = embeddings[k]
        return values

    def _clip_reference(self, feature, samples, images):
        model, error = self._model(feature.role)
        if error:
            return [error] * len(samples)
        todo = {}
        for s in samples:
            if s.reference is not None and (feature.role, str(s.reference)) not in self._references:
                try:
                    todo[str(s.reference)] = load_image(s.reference)
                except ImageError as exc:
                    self._references[(feature.role, str(s.reference))] = FeatureError(f"ref_{exc.status}", str(exc))
        if todo:
            embeddings = model.encode_images(list(todo.values()))
            for path, emb in zip(todo, embeddings):
                self._references[(feature.role, path)] = emb
        return [FeatureError("ref_missing", f"{s.item_id}: no reference photo") if s.reference is None
                else self._references[(feature.role, str(s.reference))] for s in samples]

    def _texts(self, feature, texts: list[str | None], missing: FeatureError):
        model, error = self._model(feature.role)
        if error:
            return [error] * len(texts)
        values: list = [missing if t is None else FeatureError("empty_prompt", "the prompt is empty") for t in texts]
        keep = [i for i, t in enumerate(texts) if t is not None and t.strip()]
        if keep:
            embeddings, truncated = model.encode_texts([texts[i] for i in keep])
            for k, i in enumerate(keep):
                values[i] = TextFeature(texts[i], embeddings[k], truncated[k], model.token_count(texts[i]))
        return values

    def _clip_prompt(self, feature, samples, images):
        return self._texts(feature, [prompt_text(s.meta) for s in samples],
                           FeatureError("no_prompt", "the image's metadata has no prompt"))

    def _clip_background(self, feature, samples, images):
        texts = [s.meta.get("background") or s.meta.get("background_prompt") for s in samples]
        return self._texts(feature, [None if t is None else str(t) for t in texts],
                           FeatureError("no_background", "the image's metadata has no background prompt"))

    def _detectables(self, feature, samples, images):
        values: list = [None] * len(samples)
        queries, todo = {}, []
        for i, s in enumerate(samples):
            listed = [str(d) for d in s.meta.get("detectables") or []]
            kept = [d for d in listed if not is_role_word(d)]
            if not kept:
                why = "no detectables" if not listed else f"only role words ({', '.join(listed)})"
                values[i] = FeatureError("no_detectables", f"{s.item_id}: {why}; excluded from GOA")
            elif isinstance(images[i], FeatureError):
                values[i] = images[i]
            else:
                queries[i] = (kept, [d for d in listed if is_role_word(d)])
                todo.append(i)
        if todo:
            model, error = self._model(feature.role)
            if error:
                for i in todo:
                    values[i] = error
                return values
            found = model.detect([images[i] for i in todo], [queries[i][0] for i in todo])
            for i, det in zip(todo, found):
                values[i] = DetectableFeature(det.queries, queries[i][1], det.scores, det.boxes, det.logits)
        return values

    def _concepts(self, feature, samples, images):
        values: list = [None] * len(samples)
        wanted = {}
        for i, s in enumerate(samples):
            listed = sample_concepts(s)
            if not listed:
                values[i] = FeatureError("no_concepts", f"{s.item_id}: no concept with reference images")
            elif isinstance(images[i], FeatureError):
                values[i] = images[i]
            else:
                wanted[i] = listed
        if not wanted:
            return values
        detector, error = self._model(feature.role)
        clip, error2 = self._model(feature.extra)
        if error or error2:
            for i in wanted:
                values[i] = error or error2
            return values
        todo = list(wanted)
        found = detector.detect([images[i] for i in todo], [list(dict.fromkeys(c["label"] for c in wanted[i])) for i in todo])
        crops_all, owners = [], []
        for i, det in zip(todo, found):
            listed = wanted[i]
            refs, missing = [], []
            for concept in listed:
                embs = []
                for photo in concept["images"]:
                    emb = self._reference_embedding(feature.extra, clip, photo)
                    if isinstance(emb, FeatureError):
                        missing.append(f"{photo}: {emb.problem}")
                    else:
                        embs.append(emb)
                refs.append(np.stack(embs) if embs else np.zeros((0, clip.model.config.projection_dim), np.float32))
            value = ConceptFeature([c["name"] for c in listed], [c["label"] for c in listed], refs, missing_references=missing)
            # Best box per label (the k best when k concepts share a label), kept if it reaches min_box_score.
            for q, label in enumerate(det.queries):
                count = sum(c["label"] == label for c in listed)
                order = np.argsort(-det.scores[:, q])[:count]
                for b in order:
                    if det.scores[b, q] >= self.min_box_score:
                        value.box_labels.append(label)
                        value.box_scores.append(float(det.scores[b, q]))
                        value.boxes.append([float(v) for v in det.boxes[b]])
            for box in value.boxes:
                x0, y0, x1, y1 = box
                crop = images[i].crop((int(x0), int(y0), max(int(x0) + 1, int(np.ceil(x1))), max(int(y0) + 1, int(np.ceil(y1)))))
                crops_all.append(crop)
                owners.append(i)
            values[i] = value
        if crops_all:
            embeddings = clip.encode_images(crops_all)
            for i in todo:
                values[i].crops = embeddings[[k for k, o in enumerate(owners) if o == i]]
        for i in todo:
            if values[i].crops is None:
                values[i].crops = np.zeros((0, clip.model.config.projection_dim), np.float32)
        return values

    def _reference_embedding(self, role: str, clip, photo):
        key = (role, str(photo))
        if key not in self._references:
            try:
                self._references[key] = clip.encode_images([load_image(photo)])[0]
            except ImageError as exc:
                self._references[key] = FeatureError(f"ref_{exc.status}", str(exc))
        return self._references[key]

    def _reward(self, feature, samples, images):
        """One batched reward pass over the samples whose image and prompt are usable."""
        texts = [prompt_text(s.meta) for s in samples]
        values: list = [None] * len(samples)
        todo = []
        for i, text in enumerate(texts):
            if isinstance(images[i], FeatureError):
                values[i] = images[i]
            elif text is None:
                values[i] = FeatureError("no_prompt", "the image's metadata has no prompt")
            elif not text.strip():
                values[i] = FeatureError("empty_prompt", "the prompt is empty")
            else:
                todo.append(i)
        if todo:
            model, error = self._model(feature.role)
            if error:
                for i in todo:
                    values[i] = error
                return values
            raw, truncated = model.raw_scores([images[i] for i in todo], [texts[i] for i in todo])
            for k, i in enumerate(todo):
                values[i] = RewardFeature(texts[i], float(raw[k]), truncated[k], model.token_count(texts[i]))
        return values

    def _relations(self, feature, samples, images):
        values: list = [None] * len(samples)
        todo = {}
        for i, s in enumerate(samples):
            triples = [tuple(t) for t in s.meta.get("relations") or [] if isinstance(t, (list, tuple)) and len(t) == 3]
            if not triples:
                values[i] = FeatureError("no_relations", f"{s.item_id}: the prompt has no relation triples; excluded from RFS")
            elif isinstance(images[i], FeatureError):
                values[i] = images[i]
            else:
                todo[i] = triples
        if todo:
            model, error = self._model(feature.role)
            if error:
                for i in todo:
                    values[i] = error
                return values
            questions = {i: [relation_question(t) for t in triples] for i, triples in todo.items()}
            answers = model.yes_probability([images[i] for i in todo], [questions[i] for i in todo])
            for i, p in zip(todo, answers):
                values[i] = RelationFeature(todo[i], questions[i], p)
        return values

    def _judge(self, feature, samples, images):
        """One batched judge pass (answers cached per image content, question, rubric and model)."""
        from likeness.metrics.rubric import RUBRIC_VERSION, question
        from likeness.models.judge import JudgeRequest

        values: list = [None] * len(samples)
        requests = {}
        for i, s in enumerate(samples):
            if isinstance(images[i], FeatureError):
                values[i] = images[i]
            elif feature.extra == "identity":
                if s.reference is None:
                    values[i] = FeatureError("ref_missing", f"{s.item_id}: no reference photo")
                    continue
                try:
                    reference = load_image(s.reference)
                except ImageError as exc:
                    values[i] = FeatureError(f"ref_{exc.status}", str(exc))
                    continue
                requests[i] = JudgeRequest([reference, images[i]], question("identity"), RUBRIC_VERSION)
            else:
                text = prompt_text(s.meta)
                if text is None or not text.strip():
                    values[i] = FeatureError("no_prompt" if text is None else "empty_prompt",
                                             "the image's metadata has no prompt" if text is None else "the prompt is empty")
                    continue
                requests[i] = JudgeRequest([images[i]], question(feature.extra, text), RUBRIC_VERSION)
        if requests:
            model, error = self._model(feature.role)
            if error:
                for i in requests:
                    values[i] = error
                return values
            answers = model.answer(list(requests.values()))
            for i, answer in zip(requests, answers):
                values[i] = JudgeFeature(feature.extra, RUBRIC_VERSION, answer.text, answer.cached)
        return values
