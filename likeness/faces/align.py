"""5-point similarity alignment onto the standard ArcFace 112x112 template.

Landmark order everywhere in likeness: eye on the image's left, eye on the image's right, nose,
mouth corner on the image's left, mouth corner on the image's right (the InsightFace convention).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Where the five points sit in an aligned 112x112 ArcFace crop (published with ArcFace / InsightFace).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the least-squares similarity (rotation, uniform scale, shift) taking src to dst.

    Closed form of Umeyama (1991): centre both point sets, take the SVD of their covariance.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection is not a similarity
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    src_var = (src_c**2).sum() / len(src)
    scale = (s * d).sum() / src_var if src_var > 0 else 1.0
    shift = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, shift[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def template(size: int = 112) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` crop."""
    return ARCFACE_TEMPLATE * (size / 112.0)


def warp(image: np.ndarray | Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """Apply a 2x3 image->crop matrix, bilinear, outside pixels black."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]  # PIL wants crop->image
    return img.transform((size, size), Image.Transform.AFFINE, tuple(inverse.ravel()), resample=Image.Resampling.BILINEAR)


def align_face(image: np.ndarray | Image.Image, landmarks: np.ndarray, size: int = 112) -> Image.Image:
    """Aligned ``size`` x ``size`` face crop from 5 landmarks (ArcFace template)."""
    return warp(image, similarity_transform(landmarks, template(size)), size)
