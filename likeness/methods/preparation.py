"""Person-photo preparation shared by every method: find the face, frame it, mask it, augment it.

Why one shared module: every method's training signal depends on how the person is framed and
which pixels count, so methods must not each invent their own cropping. The steps:

1. :func:`prepare_photo` reads the photo (``load_image``), detects faces with the face stack
   (``likeness.faces``), keeps the largest one (and says so when there were several), and warps a
   square crop centred on that face with the eyes levelled: ``framing="face"`` (the face fills about
   half the crop, as in Textual Inversion / Celeb Basis training crops) or ``"upper_body"`` (head and
   shoulders). It also builds two masks in crop coordinates:

   - **person mask** and **face mask** from a :mod:`likeness.segmentation` backend, computed on the
     whole photo and warped with the crop: the dataset's own masks (CelebAMask-HQ) when present, a
     segmentation model when one is named, else the heuristic ellipses around the face box
     (:mod:`likeness.segmentation.heuristic`). ``PreparedPhoto.mask_source`` says which.

2. :func:`augment` draws one training view from a prepared photo: horizontal flip, colour jitter
   and scale-and-paste (the whole crop shrunk to a random fraction and pasted at a random spot on
   black, as Celeb Basis does). Masks follow the same geometry. Randomness comes only from the
   ``numpy.random.Generator`` passed in, so a training step can be replayed exactly.

3. :func:`caption` draws a caption from templates in the Stellar ``{}`` convention.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from likeness.data.images import image_to_array, load_image
from likeness.faces.base import Face, FaceBackend

log = logging.getLogger(__name__)

# Crop side in face-box widths, and where the face centre sits (fraction of the crop from the top).
FRAMINGS = {"face": (2.0, 0.5), "upper_body": (3.6, 0.36)}

CAPTION_TEMPLATES = (
    "a photo of {}",
    "a close-up photo of {}",
    "a portrait of {}",
    "a good photo of {}",
    "a cropped photo of {}",
    "a bright photo of {}",
    "a dark photo of {}",
    "a photo of the face of {}",
    "a rendering of {}",
    "a picture of {}",
)


class NoFaceError(ValueError):
    """No face was found in an identity photo: training on it would learn the background."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.status = "no_face"
        super().__init__(f"{path}: no face found in this identity photo; use a photo where the face is visible "
                         f"and at least ~40 px wide")


@dataclass
class PreparedPhoto:
    """One identity photo framed around the chosen face, with masks in the same pixel grid."""

    source: Path
    image: Image.Image  # size x size RGB
    face_mask: np.ndarray  # size x size float32 in {0, 1}
    person_mask: np.ndarray  # size x size float32 in {0, 1}
    face: Face  # the chosen face, in the original photo's coordinates
    n_faces: int
    notes: list[str] = field(default_factory=list)
    landmarks: np.ndarray | None = None  # (5, 2) the face's 5 points in crop pixels (for identity losses)
    mask_source: str = "heuristic"  # which segmentation backend made the masks (see likeness.segmentation)


def _default_backend() -> FaceBackend:
    from likeness.faces import get_backend

    return get_backend()


def prepare_photo(
    path: str | Path,
    *,
    backend: FaceBackend | None = None,
    size: int = 512,
    framing: str = "face",
    segmenter=None,
) -> PreparedPhoto:
    """Detect, choose the largest face, crop + level the eyes, and build face/person masks.

    ``segmenter``: a :class:`likeness.segmentation.Segmenter` or its name (default ``auto``).
    Raises ``ImageError`` (unreadable file), :class:`NoFaceError` or a ``MaskError``, naming the file.
    """
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, not {framing!r}")
    path = Path(path)
    image = load_image(path)
    faces = (backend or _default_backend()).detect(image_to_array(image))
    if not faces:
        raise NoFaceError(path)
    face = max(faces, key=lambda f: f.area)
    notes = []
    if len(faces) > 1:
        notes.append(f"{path}: {len(faces)} faces found; using the largest ({face.area:.0f} px^2)")
        log.warning(notes[-1])

    x0, y0, x1, y1 = face.box
    face_w, face_h = x1 - x0, y1 - y0
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    angle = 0.0
    if face.landmarks is not None and len(face.landmarks) >= 2:
        eyes = sorted(np.asarray(face.landmarks[:2], dtype=np.float64).tolist())  # left-to-right in the image
        angle = math.atan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0])
    widths, centre_row = FRAMINGS[framing]
    side = max(face_w, face_h) * widths
    scale = side / size  # source pixels per output pixel
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # Output pixel (u, v) -> source pixel: rotate by the eye angle about the face centre.
    du, dv = size / 2, size * centre_row
    coeffs = (cos, -sin, centre[0] - cos * du + sin * dv, sin, cos, centre[1] - sin * du - cos * dv)
    crop = image.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)

    # Masks in the photo's pixels, warped exactly like the crop.
    from likeness.segmentation import get_segmenter

    masks = get_segmenter(segmenter).segment(image, face=face, path=path).warp(size, coeffs)
    landmarks = None
    if face.landmarks is not None:
        # PIL samples with pixel centres at +0.5, the detectors' points have them at integers.
        linear = np.array([[coeffs[0], coeffs[1]], [coeffs[3], coeffs[4]]])
        shift = np.array([coeffs[2], coeffs[5]])
        source = np.asarray(face.landmarks, dtype=np.float64) + 0.5
        landmarks = ((source - shift) @ np.linalg.inv(linear).T - 0.5).astype(np.float32)
    return PreparedPhoto(path, crop, masks.face, masks.person, face, len(faces), notes, landmarks=landmarks,
                         mask_source=masks.source)


def prepare_photos(paths, *, backend: FaceBackend | None = None, size: int = 512, framing: str = "face",
                   segmenter=None) -> list[PreparedPhoto]:
    """Prepare several photos with one backend instance."""
    backend = backend or _default_backend()
    return [prepare_photo(p, backend=backend, size=size, framing=framing, segmenter=segmenter) for p in paths]


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations to draw. Defaults are the mild ones DreamBooth/TI examples use (flip only)."""

    flip: bool = True
    color_jitter: float = 0.0  # max relative change of brightness, contrast and saturation
    scale_range: tuple[float, float] | None = None  # e.g. (0.1, 1.0): shrink-and-paste on black (Celeb Basis)


def augment(photo: PreparedPhoto, rng: np.random.Generator, aug: Augmentation = Augmentation(), *, with_points: bool = False):
    """One training view: (RGB float32 HxWx3 in [-1, 1], face mask HxW, person mask HxW), plus the face's
    5 points moved with the view ((5, 2) crop pixels, or None) when ``with_points``. Same randomness either way."""
    image = photo.image
    masks = [Image.fromarray((m * 255).astype(np.uint8)) for m in (photo.face_mask, photo.person_mask)]
    points = None if photo.landmarks is None else np.asarray(photo.landmarks, dtype=np.float64).copy()
    if aug.flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        masks = [m.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for m in masks]
        if points is not None:  # mirrored, and image-left / image-right swap roles
            points[:, 0] = image.size[0] - 1 - points[:, 0]
            points = points[[1, 0, 2, 4, 3]]
    if aug.color_jitter > 0:
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhancer(image).enhance(1.0 + rng.uniform(-aug.color_jitter, aug.color_jitter))
    if aug.scale_range is not None:
        size = image.size[0]
        side = max(8, int(round(size * rng.uniform(*aug.scale_range))))
        left, top = (int(rng.integers(0, size - side + 1)) for _ in range(2))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(image.resize((side, side), Image.Resampling.BICUBIC), (left, top))
        image = canvas
        pasted = []
        for m in masks:
            blank = Image.new("L", (size, size), 0)
            blank.paste(m.resize((side, side), Image.Resampling.NEAREST), (left, top))
            pasted.append(blank)
        masks = pasted
        if points is not None:
            points = (points + 0.5) * (side / size) - 0.5 + np.array([left, top])
    pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    face_mask, person_mask = ((np.asarray(m, dtype=np.float32) > 127).astype(np.float32) for m in masks)
    if with_points:
        return pixels, face_mask, person_mask, None if points is None else points.astype(np.float32)
    return pixels, face_mask, person_mask


def caption(subject: str, rng: np.random.Generator, templates=CAPTION_TEMPLATES) -> str:
    """A random caption with ``subject`` in place of ``{}``."""
    return templates[int(rng.integers(len(templates)))].replace("{}", subject)


def identity_photos(path: str | Path) -> list[Path]:
    """The photos of one person: the file itself, or every image file in a folder (sorted by name)."""
    from likeness.data.identities import is_image_file

    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        photos = sorted(p for p in path.iterdir() if is_image_file(p))
        if not photos:
            raise FileNotFoundError(f"{path}: folder has no image files (.jpg, .png, ...)")
        return photos
    raise FileNotFoundError(f"{path}: identity photo or folder does not exist")


def prepare_identities(identities, *, size: int, framing: str, backend: FaceBackend | None = None, segmenter=None,
                       accept=None):
    """``{name: [PreparedPhoto]}`` for ``[(name, photos)]``, plus notes on skipped photos.

    A photo without a face (or unreadable) is skipped with a note when the person has other usable
    photos; if none is usable the error for the first bad photo is raised, naming the file.
    ``accept(photo)``, when given, may refuse a prepared photo the same way, by raising one of those errors.
    """
    from likeness.data.images import ImageError
    from likeness.segmentation import MaskError, NoPersonError

    backend = backend or _default_backend()
    prepared, notes = {}, []
    for name, photos in identities:
        good, errors = [], []
        for path in photos:
            try:
                photo = prepare_photo(path, backend=backend, size=size, framing=framing, segmenter=segmenter)
                if accept is not None:
                    accept(photo)
            except (ImageError, NoFaceError, MaskError, NoPersonError) as exc:
                errors.append(exc)
                continue
            good.append(photo)
            notes.extend(photo.notes)
        if not good:
            raise errors[0]
        for exc in errors:
            notes.append(f"skipped {exc}")
            log.warning("identity %s: skipped %s", name, exc)
        prepared[name] = good
    return prepared, notes


def photo_batches(prepared: dict, subjects: dict, *, batch_size: int, aug: Augmentation, mask: str | None = None,
                  templates=CAPTION_TEMPLATES):
    """A ``make_batch(step, micro, rng)`` for :func:`likeness.methods.training.train`: random person,
    random photo, random augmentation and caption, all drawn from ``rng``."""
    import torch

    from likeness.methods.training import Batch

    names = sorted(prepared)

    def make_batch(step: int, micro: int, rng: np.random.Generator) -> Batch:
        pixels, masks, captions, points, people = [], [], [], [], []
        for _ in range(batch_size):
            name = names[int(rng.integers(len(names)))]
            photo = prepared[name][int(rng.integers(len(prepared[name])))]
            image, face_mask, person_mask, face_points = augment(photo, rng, aug, with_points=True)
            pixels.append(torch.from_numpy(image).permute(2, 0, 1))
            masks.append(torch.from_numpy(face_mask if mask == "face" else person_mask)[None])
            captions.append(caption(subjects[name], rng, templates))
            points.append(face_points)
            people.append(name)
        return Batch(pixels=torch.stack(pixels), captions=captions, mask=torch.stack(masks) if mask else None,
                     points=None if any(p is None for p in points) else torch.from_numpy(np.stack(points)),
                     identities=people)

    return make_batch
