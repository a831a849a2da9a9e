"""The face stack: detect, align (5 points), embed, behind one small backend interface.

>>> from likeness.faces import get_backend, analyze_path, largest_face_crop
>>> backend = get_backend("dlib")                 # offline default
>>> result = analyze_path(backend, "photo.jpg")   # FaceResult: status + faces (largest first)
>>> crop = largest_face_crop(image, backend)      # FaceCrop: face, 5 landmarks, aligned crop

Backends: ``dlib`` (HOG/MMOD + 5-point + ResNet, offline), ``dlib-torch`` (the same, batched in torch),
``arcface`` (an InsightFace-style folder of ONNX models) and ``arcface-torch`` (its recogniser in torch). Each carries a :class:`FaceProtocol` stored with every score.
"""

from __future__ import annotations

from likeness.registry import Registry
from likeness.faces.base import Face, FaceBackend, FaceProtocol

BACKENDS: Registry[FaceBackend] = Registry("face backend")
DEFAULT_BACKEND = "dlib"
# The detector identity metrics use with the dlib backends: MTCNN, as the official Stellar code (HOG misses faces in
# generated images: painted, tilted, small, stylised; docs/identity-evaluation.md has the numbers). Photo preparation
# for training keeps the backend's own default (HOG).
METRIC_DETECTOR = "mtcnn"


def metric_backend_options(name: str = DEFAULT_BACKEND, options: dict | None = None) -> dict:
    """``options`` for a face backend used by identity metrics: the dlib backends get ``detector=mtcnn`` unless
    a detector is given."""
    options = dict(options or {})
    if name in ("dlib", "dlib-torch"):
        options.setdefault("detector", METRIC_DETECTOR)
    return options

_instances: dict[tuple, FaceBackend] = {}


def get_backend(name: str = DEFAULT_BACKEND, **kwargs) -> FaceBackend:
    """A backend by name, built once per (name, options) so models load once per process."""
    key = (name, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key not in _instances:
        _instances[key] = BACKENDS.create(name, **kwargs)
    return _instances[key]


# Imported after BACKENDS exists: these modules register themselves into it.
from likeness.faces import arcface, arcface_torch, dlib_backend, engine  # noqa: E402,F401
from likeness.faces.cache import FaceCache, FaceResult, analyze_path  # noqa: E402
from likeness.faces.crop import FaceCrop, largest_face_crop  # noqa: E402

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "METRIC_DETECTOR", "Face", "FaceBackend", "FaceCache", "FaceCrop",
    "FaceProtocol", "FaceResult", "metric_backend_options",
    "analyze_path", "get_backend", "largest_face_crop",
]
