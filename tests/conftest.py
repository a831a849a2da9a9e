"""Shared fixtures. Keep this small: put helpers for one test file in that file."""

from __future__ import annotations

from pathlib import Path

import pytest

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Real face photos (<repo>/../shared/data/faces: obama/ biden/ alex_lacamoire/ _edge/); skip when absent."""
    if not (FACES_DIR / "obama" / "0.jpg").exists():
        pytest.skip(f"real face photos not found at {FACES_DIR}")
    return FACES_DIR


@pytest.fixture(scope="session")
def astronaut_path(tmp_path_factory) -> Path:
    """skimage's public-domain astronaut photo (one face), saved as a JPEG."""
    from PIL import Image
    from skimage.data import astronaut

    path = tmp_path_factory.mktemp("astronaut") / "astronaut.jpg"
    Image.fromarray(astronaut()).save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def dlib_backend():
    from likeness.faces import get_backend

    return get_backend("dlib")


@pytest.fixture(scope="session")
def face_cache(dlib_backend):
    """One FaceCache for the whole session, so each real photo costs one dlib pass across all tests."""
    from likeness.faces import FaceCache

    return FaceCache(dlib_backend)
