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


@pytest.fixture(scope="session")
def arcface_dir(tmp_path_factory) -> Path:
    """The tiny InsightFace-style ArcFace pack (:mod:`likeness.testing.tiny_arcface`: a detector that finds the
    bright faces of ``face_photos``, a 16-d recogniser), exported once; read only."""
    from likeness.testing.tiny_arcface import export_tiny_arcface

    return export_tiny_arcface(tmp_path_factory.mktemp("arcface"))


@pytest.fixture(scope="session")
def face_photos(tmp_path_factory) -> dict:
    """Two 'people' the tiny ArcFace detector finds (``ann``, ``bob``: a bright block on different textures) and a
    photo without a face (``wall``): ``{name: path}``; read only."""
    from PIL import Image

    from likeness.testing.tiny_arcface import face_image

    folder = tmp_path_factory.mktemp("faces")
    paths = {}
    for name, seed in (("ann", 0), ("bob", 1)):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(face_image(seed)).save(paths[name])
    paths["wall"] = folder / "wall.png"
    Image.new("RGB", (320, 320), (40, 40, 40)).save(paths["wall"])
    return paths


# --- generation core (issue 3): tiny base models and short-trained artifacts --------------------------


@pytest.fixture
def one_thread():
    """Tiny models are all small ops: on a shared 2-core machine, torch's threading overhead makes them
    ~20x slower than one thread. Restored after the test so other tests keep the default."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Build the tiny SD / SDXL pipelines once into a temp cache (offline); {model id: saved folder}."""
    import os

    os.environ["LIKENESS_CACHE"] = str(tmp_path_factory.mktemp("likeness-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from likeness.models.tiny import TINY_MODELS, tiny_model_path

    return {model_id: tiny_model_path(model_id) for model_id in TINY_MODELS}


def _train_artifact(tmp_path_factory, astronaut_path, method, base_model, **config):
    import torch

    from likeness.methods import personalize

    out = tmp_path_factory.mktemp(f"{method}-{base_model.split('/')[-1]}") / "artifact"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return personalize(method, {"astro": [astronaut_path]}, out, base_model, progress=False, **config)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ti_artifact(tiny_models, tmp_path_factory, astronaut_path):
    """Textual Inversion on tiny-sd, 4 steps (2 vectors, so multi-vector loading is exercised)."""
    return _train_artifact(tmp_path_factory, astronaut_path, "textual-inversion", "likeness/tiny-sd",
                           max_steps=4, gradient_accumulation_steps=1, num_vectors=2, learning_rate=5e-2)


@pytest.fixture(scope="session")
def lora_artifact(tiny_models, tmp_path_factory, astronaut_path):
    """DreamBooth-LoRA on tiny-sd, 4 steps, with a text-encoder LoRA too."""
    return _train_artifact(tmp_path_factory, astronaut_path, "dreambooth-lora", "likeness/tiny-sd",
                           max_steps=4, learning_rate=1e-2, train_text_encoder=True)
