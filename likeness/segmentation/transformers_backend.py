"""A transformers semantic-segmentation model (hub id or local folder) as the mask source.

Any model the Auto classes load works: SegFormer / BEiT / DPT style (``AutoModelForSemanticSegmentation``)
or Mask2Former / MaskFormer style (``AutoModelForUniversalSegmentation``), with its image processor's
``post_process_semantic_segmentation`` giving a per-pixel label at the photo's size. Human-parsing
models (ATR, LIP, CelebAMask-HQ face parsing) and scene models with a ``person`` class both fit:

- person labels: ``person_labels`` if given (ids or names); else the model's ``person`` class when it
  has one (ADE20K, COCO); else every label except background (a human-parsing model);
- face labels: ``face_labels`` if given; else the labels whose names are face parts (``face``, ``skin``,
  ``nose``, ``eye``, ``brow``, ``mouth``, ``lip``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from likeness.segmentation.base import Masks, Segmenter

BACKGROUND_NAMES = {"background", "bg", "unlabeled", "unlabelled", "void", "null"}
PERSON_NAMES = {"person", "people", "human", "person;individual;someone;somebody;mortal;soul"}
FACE_WORDS = re.compile(r"(^|[_\- ;])(face|skin|nose|eyes?|(l|r|left|right)[_\- ]?(eye|brow)|brows?|eyebrows?|mouth|"
                        r"(u|l|upper|lower)[_\- ]?lip|lips?|teeth)($|[_\- ;])", re.IGNORECASE)


class SegmentationModelError(ValueError):
    """The segmentation model could not be loaded or its labels do not say what a person is."""


def _resolve(labels, id2label: dict[int, str], what: str) -> list[int]:
    by_name = {name.lower(): i for i, name in id2label.items()}
    ids = []
    for label in labels:
        if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            if int(label) not in id2label:
                raise SegmentationModelError(f"{what} label id {label} is not in the model's labels 0..{max(id2label)}")
            ids.append(int(label))
        elif str(label).lower() in by_name:
            ids.append(by_name[str(label).lower()])
        else:
            raise SegmentationModelError(f"{what} label {label!r} is not among the model's labels: "
                                         f"{', '.join(id2label.values())}")
    return ids


def default_person_labels(id2label: dict[int, str]) -> list[int]:
    person = [i for i, name in id2label.items() if name.lower() in PERSON_NAMES]
    if person:
        return person
    rest = [i for i, name in id2label.items() if name.lower() not in BACKGROUND_NAMES]
    if len(rest) == len(id2label):
        raise SegmentationModelError(f"cannot tell which labels are a person: no 'person' and no 'background' label "
                                     f"among {', '.join(id2label.values())}; pass person_labels")
    return rest


def default_face_labels(id2label: dict[int, str]) -> list[int]:
    return [i for i, name in id2label.items() if FACE_WORDS.search(name)]


class TransformersSegmenter(Segmenter):
    """Masks from a semantic-segmentation network; ``model`` is a hub id or a ``save_pretrained`` folder."""

    name = "transformers"

    def __init__(self, model: str | Path, *, person_labels=None, face_labels=None, device=None, revision=None):
        from transformers import AutoConfig, AutoImageProcessor

        from likeness.models.loading import pick_device

        from likeness.models.pretrained import load_pretrained

        self.model_id = str(model)

        def refused(reason):
            return SegmentationModelError(f"segmentation model {self.model_id!r} could not be loaded: {reason}; "
                                          f"give a hub id or a folder written by save_pretrained")

        config = load_pretrained(AutoConfig, self.model_id, revision=revision, error=refused)
        self.processor = load_pretrained(AutoImageProcessor, self.model_id, revision=revision, error=refused)
        self.device = pick_device(device)
        self.model = self._load_model(self.model_id, config, revision, refused)
        self.model.to(self.device).eval()
        id2label = {int(k): str(v) for k, v in (self.model.config.id2label or {}).items()}
        self.id2label = id2label
        self.person_ids = (_resolve(person_labels, id2label, "person") if person_labels is not None
                           else default_person_labels(id2label))
        self.face_ids = _resolve(face_labels, id2label, "face") if face_labels is not None else default_face_labels(id2label)
        digest = hashlib.sha256(json.dumps(self.model.config.to_dict(), sort_keys=True, default=str).encode())
        self.revision = revision or ("sha256:" + digest.hexdigest()[:16])

    @staticmethod
    def _load_model(model_id, config, revision, refused):
        from transformers import AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation

        from likeness.models.pretrained import load_pretrained

        errors = []
        for auto in (AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation):
            try:  # the other kind answers "Unrecognized configuration class"
                return load_pretrained(auto, model_id, revision=revision, error=SegmentationModelError)
            except SegmentationModelError as exc:
                errors.append(str(exc))
        raise refused(f"{type(config).__name__} is not a semantic or universal segmentation model ({'; '.join(errors)})")

    @torch.no_grad()
    def label_map(self, image) -> np.ndarray:
        """One label id per pixel of ``image`` (H x W int64)."""
        inputs = self.processor(images=image, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        outputs = self.model(**inputs)
        (labels,) = self.processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])
        return labels.cpu().numpy().astype(np.int64)

    def segment(self, image, *, face=None, path=None) -> Masks:
        labels = self.label_map(image.convert("RGB"))
        person = np.isin(labels, self.person_ids).astype(np.float32)
        face_mask = np.isin(labels, self.face_ids).astype(np.float32) * person if self.face_ids else np.zeros_like(person)
        return Masks(person=person, face=face_mask, source=f"transformers:{self.model_id}")

    def describe(self) -> dict:
        return {"segmenter": self.name, "model": self.model_id, "revision": self.revision,
                "person_labels": [self.id2label[i] for i in self.person_ids],
                "face_labels": [self.id2label[i] for i in self.face_ids]}
