"""The offline default face backend: dlib HOG (or MMOD CNN) detector, 5-point landmarks, ResNet descriptor.

Models come from the ``face-recognition-models`` wheel (CC0). The 68-point model in that wheel is
trained on non-commercial data and is never loaded. We locate the files without importing the
module (its ``__init__`` needs ``pkg_resources``).

Scale: the dlib descriptor was trained for Euclidean distance (same person below 0.6 on raw
descriptors, whose norm is about 1.39), so its cosine is compressed: strangers still score
0.75-0.87. :meth:`DlibBackend.calibrate` maps cosine c to (c - C0) / (1 - C0), C0 = 0.815, which puts
strangers near 0 and identical faces at 1, the scale ArcFace/FaceNet readers expect. C0 has two
independent justifications that agree: it is where dlib's own decision threshold (raw distance
0.6 -> cosine 0.907) lands exactly on 0.5, and it is the mean cosine between different people on
our real test photos (0.816, 23 pairs of 4 people). The raw cosine is always kept next to it.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path

import numpy as np

from likeness.faces import BACKENDS
from likeness.faces.align import ARCFACE_TEMPLATE, similarity_transform, apply_transform
from likeness.faces.base import Face, FaceBackend, FaceProtocol
from likeness.faces.dlib_files import dlib_model_dir  # noqa: F401  (re-exported: callers import it from here)

STRANGER_COSINE = 0.815
# HOG cost grows with pixels: detection runs on a copy of at most DETECT_MAX_PIXELS (boxes are mapped
# back), upsampled once when that copy is small (faces down to ~40 px instead of ~80 px).
DETECT_MAX_PIXELS = 2_000_000
UPSAMPLE_BELOW_PIXELS = 500_000
# MTCNN runs on a copy of at most 1 MP (a 1024x1024 generated image is seen at full size).
MTCNN_MAX_PIXELS = 1024 * 1024
# Protocol v2 of the MTCNN face protocol (the identity metrics' default, likeness.faces.METRIC_DETECTOR): an image
# whose only faces are below MTCNN's minimum size gets the status face_too_small (still scored 0, as no_face).
# When MTCNN finds nothing, a second look for faces this small (px) tells "face too small" from "no face".
SMALL_FACE_PX = 4


def _serialised(method):
    """Run ``method`` under the backend's lock: dlib's detector, shape predictor and ResNet keep scratch
    buffers, so two threads in one backend (two demo visitors) crash the process (segfault / abort)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _arcface_points(parts: np.ndarray) -> np.ndarray:
    """dlib's 5 points (two corners per eye, base of the nose) in the likeness 5-point order.

    dlib has no mouth points: the mouth corners are placed where the ArcFace template puts them
    relative to the two eye centres (exact similarity from 2 points), so aligned crops match the
    ArcFace geometry. The nose point is dlib's nose base (a little below the tip).
    """
    eye_right_img = parts[0:2].mean(0)
    eye_left_img = parts[2:4].mean(0)
    eyes = np.stack([eye_left_img, eye_right_img])
    to_image = similarity_transform(ARCFACE_TEMPLATE[:2], eyes)
    mouth = apply_transform(to_image, ARCFACE_TEMPLATE[3:])
    return np.vstack([eyes, parts[4:5], mouth]).astype(np.float32)


@BACKENDS.register("dlib")
class DlibBackend(FaceBackend):
    embedding_dim = 128

    def __init__(self, detector: str = "hog", upsample: int | None = None, model_dir: str | Path | None = None):
        import dlib

        detector = {"mmod": "cnn"}.get(detector, detector)
        if detector not in ("hog", "cnn", "mtcnn"):
            raise ValueError(f"dlib detector must be 'hog', 'mmod' (alias 'cnn') or 'mtcnn', not {detector!r}")
        self._dlib = dlib
        self._lock = threading.RLock()
        self._small_detector = None
        models = Path(model_dir) if model_dir else dlib_model_dir()
        self.detector_kind = detector
        self.upsample = upsample
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        elif detector == "mtcnn":
            from likeness.faces.mtcnn import MTCNN

            self._detector = MTCNN()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(str(models / "mmod_human_face_detector.dat"))
        self._shapes = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        upsample_text = f"1 below {UPSAMPLE_BELOW_PIXELS / 1e6:g} MP, else 0" if upsample is None else str(upsample)
        detector_text = f"dlib {'HOG' if detector == 'hog' else 'MMOD CNN'} on a copy <= {DETECT_MAX_PIXELS / 1e6:g} MP, upsample {upsample_text}"
        aligner = "dlib 5-point shape predictor, 150 px face chip (padding 0.25)"
        if detector == "mtcnn":
            from likeness.faces.mtcnn import FACTOR, MIN_FACE, THRESHOLDS

            detector_text = (f"MTCNN in torch (mtcnn 1.0.0 weights; min face {MIN_FACE} px, thresholds "
                             f"{'/'.join(map(str, THRESHOLDS))}, factor {FACTOR}) on a copy <= {MTCNN_MAX_PIXELS} px; "
                             f"no face found: a second pass down to {SMALL_FACE_PX} px names face_too_small (scored 0)")
            aligner = "MTCNN 5 points -> dlib's 150 px chip geometry (least-squares similarity, padding 0.25)"
        self.protocol = FaceProtocol(
            name=f"dlib-{detector}-r128-cal/{'v2' if detector == 'mtcnn' else 'v1'}",
            detector=detector_text,
            aligner=aligner,
            embedder="dlib ResNet-34 128-d descriptor (face-recognition-models 0.3.0), L2-normalised",
            scale_note=f"calibrated = (cos - {STRANGER_COSINE}) / (1 - {STRANGER_COSINE}): strangers ~0, "
            "dlib's same-person threshold = 0.5, identical = 1; raw cosine kept as raw_cosine",
        )

    def calibrate(self, cosine):
        return (np.asarray(cosine, dtype=np.float64) - STRANGER_COSINE) / (1.0 - STRANGER_COSINE)

    @_serialised
    def detect(self, image: np.ndarray) -> list[Face]:
        if self.detector_kind == "mtcnn":
            return self._detect_mtcnn(image)
        height, width = image.shape[:2]
        scale = min(1.0, (DETECT_MAX_PIXELS / (height * width)) ** 0.5)
        small = image
        if scale < 1.0:
            from PIL import Image

            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        upsample = self.upsample if self.upsample is not None else int(small.shape[0] * small.shape[1] < UPSAMPLE_BELOW_PIXELS)
        if self.detector_kind == "hog":
            rects, scores, _ = self._detector.run(small, upsample, 0.0)
            found = list(zip(rects, scores))
        else:
            found = [(d.rect, d.confidence) for d in self._detector(small, upsample)]
        faces = []
        for rect, score in found:
            box = (rect.left() / scale, rect.top() / scale, (rect.right() + 1) / scale, (rect.bottom() + 1) / scale)
            x0, y0, x1, y1 = max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                faces.append(Face(box=(x0, y0, x1, y1), score=float(score)))
        faces.sort(key=lambda f: f.area, reverse=True)
        for face in faces:
            face.landmarks = _arcface_points(self._parts(image, face))
        return faces

    @_serialised
    def small_faces(self, image: np.ndarray) -> list[Face]:
        """Faces below the detector's minimum size, for an image where :meth:`detect` found none (MTCNN only:
        its pyramid run from a smaller minimum face). They are never scored: they name the status
        ``face_too_small``, which tells a user "make the face bigger" rather than "there is no face"."""
        if self.detector_kind != "mtcnn":
            return []
        if self._small_detector is None:
            from likeness.faces.mtcnn import MTCNN

            self._small_detector = MTCNN(min_face=SMALL_FACE_PX)
        return self._detect_mtcnn(image, self._small_detector)

    def _detect_mtcnn(self, image: np.ndarray, detector=None) -> list[Face]:
        height, width = image.shape[:2]
        scale = min(1.0, (MTCNN_MAX_PIXELS / (height * width)) ** 0.5)
        small = image
        if scale < 1.0:
            from PIL import Image

            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
            scale = size[0] / width
        boxes, scores, points = (detector or self._detector).detect(small)
        faces = []
        for box, score, pts in zip(boxes / scale, scores, points):
            x0, y0, x1, y1 = max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                faces.append(Face(box=(float(x0), float(y0), float(x1), float(y1)), score=float(score),
                                  landmarks=((pts + 0.5) / scale - 0.5).astype(np.float32)))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    @_serialised
    def chips(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(N, 150, 150, 3) uint8 dlib face chips: dlib's own extraction from its 5 shape points (HOG / MMOD), or
        the MTCNN points mapped onto the same chip geometry."""
        if not faces:
            return np.zeros((0, 150, 150, 3), dtype=np.uint8)
        if self.detector_kind == "mtcnn":
            from likeness.faces.dlib_resnet import dlib_chip_template, face_chip

            template = dlib_chip_template(points="mtcnn")
            return np.stack([face_chip(image, f.landmarks, template) for f in faces])
        shapes = self._dlib.full_object_detections([self._shapes(image, self._rect(f)) for f in faces])
        return np.stack([np.asarray(c) for c in self._dlib.get_face_chips(image, shapes, size=150, padding=0.25)])

    def _rect(self, face: Face):
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        return self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1)

    def _parts(self, image: np.ndarray, face: Face) -> np.ndarray:
        shape = self._shapes(image, self._rect(face))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)

    @_serialised
    def embed(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        if not faces:
            return faces
        if self.detector_kind == "mtcnn":
            vectors = np.asarray(self._encoder.compute_face_descriptor(list(self.chips(image, faces))), dtype=np.float32)
        else:
            shapes = self._dlib.full_object_detections([self._shapes(image, self._rect(f)) for f in faces])
            vectors = np.asarray(self._encoder.compute_face_descriptor(image, shapes), dtype=np.float32)
        for face, vector in zip(faces, vectors.reshape(len(faces), -1)):
            face.embedding = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return faces
