"""``arcface-torch``: the ``arcface`` backend's detection and 5-point alignment, with the recogniser run in torch.

Why: onnxruntime runs one image's faces at a time on the CPU here; the torch iresnet
(:mod:`likeness.faces.iresnet`) batches faces across images and runs on a GPU when there is one. It
is the network the differentiable identity loss uses, so evaluation and training see the same embedder.

Weights are the user's: by default the recogniser ONNX found in ``model_dir`` (its graph and
initializers run in torch); ``weights=`` an InsightFace recogniser ``.onnx`` or an arcface_torch ``.pth``
instead (then ``model_dir`` needs only the detector). Detection stays on onnxruntime, exactly as in the
``arcface`` backend (same SCRFD decoding, thresholds, NMS), so boxes and points are the same.

With the folder's own ONNX the embeddings equal onnxruntime's within 1e-4 (tested), so the protocol
keeps the ``arcface`` backend's name and its ``engine`` field records the torch engine; a ``.pth``
is a different recogniser file and gets its own name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from likeness.faces import BACKENDS
from likeness.faces.arcface import ArcFaceBackend, aligned_crops
from likeness.faces.base import Face, FaceProtocol


class ArcFaceEmbedder:
    """The torch recogniser alone: aligned 112 px ArcFace crops -> embeddings, in batches, on ``device``.

    For callers that align faces themselves (Celeb Basis takes the preparation backend's 5 points)."""

    def __init__(self, weights: str | Path, arch: str | None = None, batch_size: int = 32, device=None):
        import torch

        from likeness.faces.iresnet import load_iresnet

        self.weights = Path(weights)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = load_iresnet(self.weights, arch=arch).to(self.device)
        self.embedding_dim = int(getattr(self.net, "embedding_dim", 0) or self._probe_dim())

    def _probe_dim(self) -> int:
        import torch

        with torch.no_grad():
            return int(self.net(torch.zeros(1, 3, 112, 112, device=self.device)).shape[-1])

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) crops in 0..255 -> (N, D) raw embeddings (float32 numpy)."""
        import torch

        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(crops[start : start + self.batch_size], dtype=np.float32))
            with torch.no_grad():
                out.append(self.net(batch.to(self.device).permute(0, 3, 1, 2)).float().cpu().numpy())
        return np.concatenate(out).reshape(len(crops), -1) if out else np.zeros((0, self.embedding_dim), np.float32)


@BACKENDS.register("arcface-torch")
class ArcFaceTorchBackend(ArcFaceBackend):
    """``model_dir``: the InsightFace-style folder (detector ONNX, and the recogniser ONNX unless ``weights``);
    ``weights``: a recogniser ``.onnx`` / ``.pth`` (optional); ``arch``: check a ``.pth`` is this iresnet
    (r50, r100...); ``batch_size``: faces per torch batch; ``device``: default cuda when available."""

    def __init__(self, model_dir: str | Path, weights: str | Path | None = None, arch: str | None = None,
                 batch_size: int = 32, device: str | None = None, det_size: int = 640, det_threshold: float = 0.5,
                 nms_threshold: float = 0.4):
        self._weights = Path(weights) if weights is not None else None
        if self._weights is not None and not self._weights.is_file():  # before the folder scan: name the file asked for
            raise FileNotFoundError(f"{self._weights}: ArcFace weights not found (an InsightFace recogniser .onnx "
                                    "or arcface_torch .pth)")
        super().__init__(model_dir, det_size=det_size, det_threshold=det_threshold, nms_threshold=nms_threshold)
        source = self._weights or self._rec_path
        self.embedder = ArcFaceEmbedder(source, arch=arch, batch_size=batch_size, device=device)
        self.net, self.device, self.batch_size = self.embedder.net, self.embedder.device, self.embedder.batch_size
        self.embedding_dim = self.embedder.embedding_dim
        engine = (f"likeness torch {'port of the ONNX graph' if source.suffix.lower() == '.onnx' else 'iresnet'} "
                  f"({source.name}; equal to onnxruntime within 1e-4 on the same ONNX) in batches of {self.batch_size} "
                  f"on {self.device.type}")
        if self._weights is None:  # the same recogniser file as the arcface backend: same numbers, same name
            self.protocol = replace(self.protocol, engine=engine)
        else:
            self.protocol = FaceProtocol(
                name=f"arcface-{self._det_path.stem}-{source.stem}/v1",
                detector=f"{self._det_path.name} (SCRFD decoding, {det_size} px, score > {det_threshold}, "
                         f"NMS IoU {nms_threshold})",
                aligner="5-point similarity transform to the ArcFace 112x112 template",
                embedder=f"{source.name} (iresnet {self.net.arch}, {self.embedding_dim}-d), L2-normalised",
                scale_note="plain cosine: strangers near 0",
                engine=engine,
            )

    def _needs_onnx_recogniser(self) -> bool:
        return self._weights is None

    def _fill(self, faces_per_image: list[list[Face]], crops_per_image: list[np.ndarray]) -> None:
        crops = [c for c in crops_per_image if c is not None and len(c)]
        if not crops:
            return
        vectors = iter(self.embedder(np.concatenate(crops)))
        for faces in faces_per_image:
            for face in faces:
                vector = next(vectors)
                face.embedding = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
                face.raw_embedding = vector.astype(np.float32)

    def embed(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        if faces:
            self._fill([faces], [aligned_crops(image, faces)])
        return faces

    def analyze(self, images: list[np.ndarray]) -> list[list[Face]]:
        faces = [self.detect(image) for image in images]
        self._fill(faces, [aligned_crops(image, f) if f else None for image, f in zip(images, faces)])
        return faces

    def analyze_paths(self, paths) -> list:
        """:class:`~likeness.faces.cache.FaceResult` per file (``analyze_path``'s statuses), the faces of all files
        embedded in shared batches."""
        from likeness.data.images import ImageError, image_to_array, load_image
        from likeness.faces.cache import FaceResult

        results, faces, crops = [], [], []
        for path in paths:
            found, crop = [], None
            try:
                image = load_image(path)
            except ImageError as exc:
                results.append(FaceResult(status=exc.status, problem=str(exc)))
            else:
                try:
                    array = image_to_array(image)
                    found = self.detect(array)
                    crop = aligned_crops(array, found) if found else None
                except Exception as exc:  # one file's failure must not stop an evaluation (as analyze_path)
                    found, crop = [], None
                    results.append(FaceResult(status="failed", problem=f"{path}: face backend failed "
                                              f"({type(exc).__name__}: {exc})", size=image.size))
                else:
                    results.append(FaceResult(status="ok", faces=found, size=image.size) if found else
                                   FaceResult(status="no_face", problem=f"{path}: no face detected", size=image.size))
            faces.append(found)
            crops.append(crop)
        self._fill(faces, crops)
        return results
