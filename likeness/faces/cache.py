"""One face pass per file: results keyed by file content, kept in memory and optionally on disk.

Reference photos are analysed once per evaluation (not once per generated image, as the official
Stellar code does) and, with a cache folder, once per machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from likeness.data.images import ImageError, image_to_array, load_image
from likeness.faces.base import Face, FaceBackend


@dataclass
class FaceResult:
    """Faces found in one file, largest first, or the reason there are none.

    status: ok, no_face, face_too_small (faces only below the detector's minimum size: scored as no face),
    missing, unreadable, too_small (the image), too_large, failed.
    """

    status: str
    faces: list[Face] = field(default_factory=list)
    problem: str = ""
    size: tuple[int, int] | None = None  # width, height of the decoded image

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def embeddings(self) -> np.ndarray:
        return np.stack([f.embedding for f in self.faces]) if self.faces else np.zeros((0, 0), np.float32)


def analyze_path(backend: FaceBackend, path: str | Path) -> FaceResult:
    """Detect and embed every face of an image file. Never raises for a bad file: the status says why."""
    try:
        image = load_image(path)
    except ImageError as exc:
        return FaceResult(status=exc.status, problem=str(exc))
    array = image_to_array(image)
    try:
        faces = backend.analyze([array])[0]
    except Exception as exc:  # a backend failure on one file must not stop an evaluation
        return FaceResult(status="failed", problem=f"{path}: face backend failed ({type(exc).__name__}: {exc})", size=image.size)
    if not faces:
        return no_face_result(backend, array, path, image.size)
    return FaceResult(status="ok", faces=faces, size=image.size)


def no_face_result(backend: FaceBackend, array: np.ndarray, path, size) -> FaceResult:
    """The result for an image where the detector found nothing: ``face_too_small`` when the backend sees faces
    below its minimum size (``small_faces``; MTCNN), else ``no_face``."""
    try:
        small = backend.small_faces(array) if hasattr(backend, "small_faces") else []
    except Exception:  # the second look is only a diagnosis; the image has no scorable face either way
        small = []
    if small:
        side = max(max(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in small)
        return FaceResult(status="face_too_small", size=size, problem=(
            f"{path}: {len(small)} face(s) of at most {side:.0f} px, below the detector's minimum size; scored as no "
            "face (generate or crop so the face is larger)"))
    return FaceResult(status="no_face", problem=f"{path}: no face detected", size=size)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FaceCache:
    """``get(path)`` analyses a file once per content (sha256) and protocol; ``directory`` persists it."""

    def __init__(self, backend: FaceBackend, directory: str | Path | None = None):
        self.backend = backend
        self.directory = Path(directory) / backend.protocol.name.replace("/", "_") if directory else None
        self._memory: dict[str, FaceResult] = {}
        self._digests: dict[tuple, str] = {}  # (path, mtime, size) -> sha256: hash each file once
        self.hits = 0
        self.misses = 0

    def get(self, path: str | Path) -> FaceResult:
        path = Path(path)
        if not path.is_file():
            # Not cached: the file may appear later, and "missing" must name this path.
            return analyze_path(self.backend, path)
        stat = path.stat()
        identity = (str(path), stat.st_mtime_ns, stat.st_size)
        key = self._digests.get(identity) or self._digests.setdefault(identity, file_digest(path))
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        result = self._load(key)
        if result is None:
            self.misses += 1
            result = analyze_path(self.backend, path)
            self._save(key, result)
        else:
            self.hits += 1
        self._memory[key] = result
        return result

    def _file(self, key: str) -> Path | None:
        return self.directory / f"{key}.npz" if self.directory else None

    def _save(self, key: str, result: FaceResult) -> None:
        target = self._file(key)
        if target is None or result.status == "failed":
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        faces = result.faces
        header = {"status": result.status, "problem": result.problem, "size": result.size,
                  "boxes": [list(f.box) for f in faces], "scores": [f.score for f in faces]}
        tmp = target.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            header=np.array(json.dumps(header)),
            landmarks=np.array([f.landmarks for f in faces], dtype=np.float32).reshape(len(faces), 5, 2),
            embeddings=np.array([f.embedding for f in faces], dtype=np.float32).reshape(len(faces), -1),
        )
        tmp.replace(target)

    def _load(self, key: str) -> FaceResult | None:
        target = self._file(key)
        if target is None or not target.exists():
            return None
        try:
            with np.load(target) as data:
                header = json.loads(str(data["header"]))
                landmarks, embeddings = data["landmarks"], data["embeddings"]
        except Exception:  # a damaged cache entry is recomputed, never trusted
            return None
        faces = [
            Face(box=tuple(box), score=score, landmarks=landmarks[i], embedding=embeddings[i])
            for i, (box, score) in enumerate(zip(header["boxes"], header["scores"]))
        ]
        size = tuple(header["size"]) if header["size"] else None
        return FaceResult(status=header["status"], faces=faces, problem=header["problem"], size=size)
