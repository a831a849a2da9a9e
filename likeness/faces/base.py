"""The face-stack interface: detect, align (5 points), embed.

A backend turns RGB images into :class:`Face` records. Everything downstream (identity metrics,
person-photo preparation, face losses) only sees this interface, so swapping dlib for ArcFace
changes numbers, never code. Every backend describes itself as a :class:`FaceProtocol`, which is
stored next to every score it produces.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class FaceProtocol:
    """What a face score means: printed with every table and stored with every result."""

    name: str  # short versioned name, e.g. "dlib-hog-r128/v1"
    detector: str
    aligner: str
    embedder: str
    no_face_policy: str = "score 0, status no_face"
    several_faces_policy: str = "max over all detected faces"
    scale_note: str = ""
    engine: str = ""  # how the numbers were computed when several engines give the same numbers (e.g. batched torch)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.name}: detector={self.detector}; aligner={self.aligner}; embedder={self.embedder}; "
            f"no face -> {self.no_face_policy}; several faces -> {self.several_faces_policy}"
            + (f"; scale: {self.scale_note}" if self.scale_note else "")
            + (f"; engine: {self.engine}" if self.engine else "")
        )


@dataclass
class Face:
    """One detected face in image pixel coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks: np.ndarray | None = None  # (5, 2) x, y: eyes, nose, mouth corners (backend order documented)
    embedding: np.ndarray | None = field(default=None, repr=False)  # L2-normalised float32 vector
    # The recogniser's output before normalising, where the backend has one (InstantID and PhotoMaker v2 feed it raw).
    raw_embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class FaceBackend:
    """Base class. Subclasses implement :meth:`detect` and :meth:`embed`; :meth:`analyze` batches both."""

    protocol: FaceProtocol
    embedding_dim: int

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces (box, score, 5 landmarks) in an HxWx3 uint8 RGB array, largest first."""
        raise NotImplementedError

    def embed(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        """Fill ``embedding`` (L2-normalised) for each face, aligning it first."""
        raise NotImplementedError

    def calibrate(self, cosine):
        """Map raw cosine similarity onto the backend's documented score scale (identity by default)."""
        return cosine

    def analyze(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Detect and embed every face in each image. Batched where the backend can batch."""
        return [self.embed(image, self.detect(image)) for image in images]
