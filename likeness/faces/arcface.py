"""ArcFace backend: an InsightFace-style model folder (SCRFD-like detector ONNX + ArcFace ONNX) on onnxruntime.

Point it at a folder such as an unpacked ``buffalo_l`` or ``antelopev2`` pack. The two models are
recognised by their signatures, not their file names: the recogniser takes ``N x 3 x 112 x 112``
and returns one ``N x D`` embedding; the detector returns per-stride scores, box distances and
5-point offsets (9 outputs for strides 8/16/32 with 2 anchors, or 15 for 5 strides with 1 anchor).
Other models in the folder (landmarks, gender/age) are ignored. The weights are the user's: the
public InsightFace packs are licensed for non-commercial research only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from likeness.faces import BACKENDS
from likeness.faces.align import similarity_transform, template, warp
from likeness.faces.base import Face, FaceBackend, FaceProtocol


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own message does not always name the file
        raise ValueError(f"{path}: unreadable ONNX model ({type(exc).__name__}: {exc})") from None


def _is_recogniser(session) -> bool:
    shape = session.get_inputs()[0].shape
    return len(session.get_outputs()) == 1 and len(shape) == 4 and list(shape[2:]) == [112, 112]


def _is_detector(session) -> bool:
    return len(session.get_outputs()) in (6, 9, 10, 15)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores)
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return keep


def aligned_crops(image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """(N, 112, 112, 3) float32 crops in 0..255, each face's 5 points moved onto the ArcFace template."""
    target = template(112)
    return np.stack([np.asarray(warp(image, similarity_transform(f.landmarks, target), 112), dtype=np.float32) for f in faces])


@BACKENDS.register("arcface")
class ArcFaceBackend(FaceBackend):
    def __init__(self, model_dir: str | Path, det_size: int = 640, det_threshold: float = 0.5, nms_threshold: float = 0.4):
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: ArcFace model folder does not exist")
        self.detector = self.recogniser = None
        for path in sorted(model_dir.glob("*.onnx")):
            session = _session(path)
            if self.recogniser is None and _is_recogniser(session):
                self.recogniser, rec_path = session, path
            elif self.detector is None and _is_detector(session):
                self.detector, det_path = session, path
        if self.detector is None or (self.recogniser is None and self._needs_onnx_recogniser()):
            missing = "detector (SCRFD-like, 6/9/10/15 outputs)" if self.detector is None else "recogniser (N x 3 x 112 x 112 -> N x D)"
            raise ValueError(f"{model_dir}: no {missing} ONNX model found")
        self.det_size = det_size
        self.det_threshold = det_threshold
        self.nms_threshold = nms_threshold
        n_out = len(self.detector.get_outputs())
        self._levels = 3 if n_out in (6, 9) else 5
        self._strides = (8, 16, 32, 64, 128)[: self._levels]
        self._anchors = 2 if self._levels == 3 else 1
        self._has_points = n_out in (9, 15)
        if not self._has_points:
            raise ValueError(f"{det_path}: detector has no 5-point outputs; alignment needs them")
        self._det_path, self._rec_path = det_path, (rec_path if self.recogniser is not None else None)
        if self.recogniser is None:  # a subclass brings its own recogniser
            return
        self.embedding_dim = int(self.recogniser.get_outputs()[0].shape[-1])
        self.protocol = FaceProtocol(
            name=f"arcface-{det_path.stem}-{rec_path.stem}/v1",
            detector=f"{det_path.name} (SCRFD decoding, {det_size} px, score > {det_threshold}, NMS IoU {nms_threshold})",
            aligner="5-point similarity transform to the ArcFace 112x112 template",
            embedder=f"{rec_path.name} ({self.embedding_dim}-d), L2-normalised",
            scale_note="plain cosine: strangers near 0",
        )

    def _needs_onnx_recogniser(self) -> bool:
        return True

    def calibrate(self, cosine):
        return np.asarray(cosine, dtype=np.float64)

    def _input_size(self) -> tuple[int, int]:
        shape = self.detector.get_inputs()[0].shape
        fixed = all(isinstance(v, int) for v in shape[2:])
        return (shape[3], shape[2]) if fixed else (self.det_size, self.det_size)

    def detect(self, image: np.ndarray) -> list[Face]:
        in_w, in_h = self._input_size()
        height, width = image.shape[:2]
        scale = min(in_w / width, in_h / height)
        new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
        canvas = np.zeros((in_h, in_w, 3), dtype=np.float32)
        canvas[:new_h, :new_w] = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self.detector.run(None, {self.detector.get_inputs()[0].name: blob.astype(np.float32)})
        boxes, scores, points = [], [], []
        for level, stride in enumerate(self._strides):
            level_scores, level_boxes, level_points = (
                np.asarray(outputs[level + k * self._levels]) for k in range(3)
            )
            level_scores, level_boxes, level_points = (
                a[0] if a.ndim == 3 else a for a in (level_scores, level_boxes, level_points)
            )
            rows, cols = in_h // stride, in_w // stride
            ys, xs = np.mgrid[:rows, :cols]
            centres = np.repeat(np.stack([xs, ys], -1).reshape(-1, 2) * stride, self._anchors, axis=0).astype(np.float32)
            keep = np.where(level_scores.reshape(-1) >= self.det_threshold)[0]
            distances = level_boxes.reshape(-1, 4)[keep] * stride
            c = centres[keep]
            boxes.append(np.hstack([c - distances[:, :2], c + distances[:, 2:]]))
            points.append(level_points.reshape(-1, 5, 2)[keep] * stride + c[:, None, :])
            scores.append(level_scores.reshape(-1)[keep])
        boxes, scores, points = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
        faces = []
        for i in nms(boxes, scores, self.nms_threshold) if len(scores) else []:
            x0, y0, x1, y1 = boxes[i] / scale
            box = (max(0.0, float(x0)), max(0.0, float(y0)), min(float(width), float(x1)), min(float(height), float(y1)))
            if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
                faces.append(Face(box=box, score=float(scores[i]), landmarks=(points[i] / scale).astype(np.float32)))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def embed(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        if not faces:
            return faces
        blob = ((aligned_crops(image, faces) - 127.5) / 127.5).transpose(0, 3, 1, 2).astype(np.float32)
        name = self.recogniser.get_inputs()[0].name
        batch_dim = self.recogniser.get_inputs()[0].shape[0]
        if isinstance(batch_dim, int):  # fixed batch size (often 1): run in chunks of it
            vectors = np.concatenate([self.recogniser.run(None, {name: blob[i : i + batch_dim]})[0] for i in range(0, len(blob), batch_dim)])
        else:
            vectors = self.recogniser.run(None, {name: blob})[0]
        vectors = vectors.reshape(len(faces), -1)
        for face, vector in zip(faces, vectors):
            face.embedding = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
            face.raw_embedding = vector.astype(np.float32)
        return faces
