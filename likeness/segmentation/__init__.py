"""Masks of what is in an image: person and face masks behind one interface (``SEGMENTERS``); see :mod:`likeness.segmentation.base`.

>>> from likeness.segmentation import get_segmenter
>>> seg = get_segmenter("auto")                      # dataset masks when present, else the heuristic
>>> seg = get_segmenter("transformers", model="org/human-parsing-segformer")  # or a local folder
>>> masks = seg.segment_person(image, path=photo)   # Masks(person, face, source)

Backends:

- ``transformers``: a semantic-segmentation network by hub id or folder (:mod:`.transformers_backend`);
- ``celebamask``: CelebAMask-HQ's own annotations (``*_bg.png`` colour masks, mask-anno part files);
- ``heuristic``: ellipses around the detected face, the offline fall-back (:mod:`.heuristic`);
- ``auto``: ``celebamask`` when the photo has dataset masks, else ``model`` (when one is named),
  else ``heuristic``. Each :class:`Masks` names the backend that made it.

Salient objects (not people) are masked by :mod:`likeness.segmentation.salient`, used by ``compose``.
"""

from __future__ import annotations

from likeness.registry import Registry
from likeness.segmentation.base import (  # noqa: F401
    MIN_PERSON_FRACTION,
    Masks,
    MaskError,
    MaskMissingError,
    NoPersonError,
    Segmenter,
    center_square,
    check_mask,
)

SEGMENTERS: Registry[Segmenter] = Registry("segmenter")
DEFAULT_SEGMENTER = "auto"

_instances: dict[tuple, Segmenter] = {}


@SEGMENTERS.register("heuristic")
def _heuristic(face_backend: str = "dlib", **_):
    from likeness.segmentation.heuristic import HeuristicSegmenter

    return HeuristicSegmenter(face_backend=face_backend)


@SEGMENTERS.register("celebamask")
def _celebamask(face_labels=None, **_):
    from likeness.segmentation.celebamask import FACE_LABELS, CelebAMaskSegmenter

    return CelebAMaskSegmenter(face_labels=face_labels or FACE_LABELS)


@SEGMENTERS.register("transformers")
def _transformers(model=None, person_labels=None, face_labels=None, device=None, revision=None, **_):
    from likeness.segmentation.transformers_backend import TransformersSegmenter

    if not model:
        raise ValueError("the transformers segmenter needs model=<hub id or folder of a segmentation model>")
    return TransformersSegmenter(model, person_labels=person_labels, face_labels=face_labels, device=device,
                                 revision=revision)


class AutoSegmenter(Segmenter):
    """Dataset masks when the photo has them, else the next backend (a model if named, else the heuristic)."""

    name = "auto"

    def __init__(self, chain: list[Segmenter]):
        self.chain = chain

    def segment(self, image, *, face=None, path=None) -> Masks:
        for backend in self.chain[:-1]:
            try:
                return backend.segment(image, face=face, path=path)
            except MaskMissingError:
                continue
        return self.chain[-1].segment(image, face=face, path=path)

    def describe(self) -> dict:
        return {"segmenter": self.name, "chain": [b.describe() for b in self.chain]}


@SEGMENTERS.register("auto")
def _auto(model=None, face_backend: str = "dlib", **kwargs):
    chain = [_celebamask(**kwargs)]
    chain.append(_transformers(model=model, **kwargs) if model else _heuristic(face_backend=face_backend))
    return AutoSegmenter(chain)


def get_segmenter(spec: "str | Segmenter | None" = None, **kwargs) -> Segmenter:
    """A segmenter by name (built once per name and options), or ``spec`` itself when it already is one.

    ``spec`` may also be ``"transformers:<model>"`` or a bare path/hub id of a segmentation model, both
    meaning the transformers backend with that model.
    """
    if isinstance(spec, Segmenter):
        return spec
    spec = spec or DEFAULT_SEGMENTER
    if isinstance(spec, dict):
        kwargs = {**{k: v for k, v in spec.items() if k != "segmenter"}, **kwargs}
        spec = spec.get("segmenter", DEFAULT_SEGMENTER)
    name = str(spec)
    if name.startswith("transformers:"):
        name, kwargs = "transformers", {**kwargs, "model": name.split(":", 1)[1]}
    elif name not in SEGMENTERS and ("/" in name or "\\" in name):
        name, kwargs = "transformers", {**kwargs, "model": name}
    key = (name, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key not in _instances:
        _instances[key] = SEGMENTERS.create(name, **kwargs)
    return _instances[key]


__all__ = [
    "SEGMENTERS", "DEFAULT_SEGMENTER", "AutoSegmenter", "Masks", "MaskError", "MaskMissingError", "NoPersonError",
    "Segmenter", "center_square", "check_mask", "get_segmenter",
]
