"""The mask interface: a :class:`Segmenter` turns a photo into a person mask and a face mask.

Why an interface: every masked loss in likeness (StellarNet's person-masked MSE, ``masked_loss`` of
the other trained methods) decides which pixels count, and the masks can come from very different
places (a segmentation network, the dataset's own annotations, a geometric heuristic). They all
return the same :class:`Masks`, in the pixel grid of the photo they were given, and say where they
came from (``source``), so an artifact can record which masks trained it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# A person mask covering less than this fraction of the photo is treated as "no person".
MIN_PERSON_FRACTION = 0.005


class MaskError(ValueError):
    """A mask could not be used (wrong size, wrong type, unreadable). The message names the file."""

    def __init__(self, path: str | Path, problem: str, status: str = "bad_mask"):
        self.path = str(path)
        self.problem = problem
        self.status = status
        super().__init__(f"{path}: {problem}")


class MaskMissingError(MaskError):
    """The dataset has no mask for this photo (a chain of segmenters then tries the next one)."""

    def __init__(self, path: str | Path, problem: str = "no mask found for this photo"):
        super().__init__(path, problem, status="missing_mask")


class NoPersonError(ValueError):
    """The segmenter found no person in the photo: training or encoding it would learn the background."""

    def __init__(self, path: str | Path, detail: str = ""):
        self.path = str(path)
        self.status = "no_person"
        super().__init__(f"{path}: no person found in this photo{' (' + detail + ')' if detail else ''}; "
                         f"use a photo where the person is visible")


@dataclass
class Masks:
    """Person and face masks of one photo: float32 arrays of shape (height, width) with values in {0, 1}."""

    person: np.ndarray
    face: np.ndarray
    source: str  # which backend (and file) produced them, e.g. "celebamask:0_bg.png", "heuristic"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL reports image sizes."""
        return int(self.person.shape[1]), int(self.person.shape[0])

    def warp(self, size: int | tuple[int, int], coeffs=None) -> "Masks":
        """The masks under the same geometry as an image: a PIL affine transform (``coeffs``) into
        ``size``, or a plain resize when ``coeffs`` is None. Nearest-neighbour, so they stay binary."""
        size = (size, size) if isinstance(size, int) else tuple(size)

        def one(mask):
            img = Image.fromarray((mask * 255).astype(np.uint8))
            if coeffs is None:
                img = img.resize(size, Image.Resampling.NEAREST)
            else:
                img = img.transform(size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.NEAREST)
            return (np.asarray(img) > 127).astype(np.float32)

        return Masks(one(self.person), one(self.face), self.source)

    def center_square(self, size: int) -> "Masks":
        """The masks after :func:`center_square` of their photo."""
        return Masks(center_square(self.person, size), center_square(self.face, size), self.source)


def center_square(array_or_image, size: int):
    """Centre-crop to a square and resize to ``size``: how a portrait dataset's photos (and their masks,
    nearest-neighbour) are framed for training."""
    is_mask = isinstance(array_or_image, np.ndarray)
    img = Image.fromarray((array_or_image * 255).astype(np.uint8)) if is_mask else array_or_image
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    img = img.resize((size, size), Image.Resampling.NEAREST if is_mask else Image.Resampling.BICUBIC)
    return (np.asarray(img) > 127).astype(np.float32) if is_mask else img


def check_mask(mask, size: tuple[int, int], where: str | Path) -> np.ndarray:
    """A caller-supplied mask as float32 {0, 1} of the photo's ``size`` (width, height), or :class:`MaskError`.

    Accepted: a 2-D bool / integer / float array (floats must lie in [0, 1]; values > 0.5 count), or a
    single-channel PIL image. Anything else (wrong shape, colour image, NaN, out of range) is refused.
    """
    if isinstance(mask, Image.Image):
        if mask.mode not in ("1", "L", "P", "I", "I;16"):
            raise MaskError(where, f"mask image has mode {mask.mode}; expected a single-channel (L/1/P) image")
        mask = np.asarray(mask)
    if not isinstance(mask, np.ndarray):
        raise MaskError(where, f"mask must be a 2-D array or image, not {type(mask).__name__}")
    if mask.ndim != 2:
        raise MaskError(where, f"mask has shape {mask.shape}; expected (height, width) = ({size[1]}, {size[0]})")
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise MaskError(where, f"mask is {mask.shape[1]}x{mask.shape[0]} px but the photo is {size[0]}x{size[1]} px",
                        status="mask_size")
    if mask.dtype == bool:
        return mask.astype(np.float32)
    if np.issubdtype(mask.dtype, np.integer):
        top = 1 if mask.max(initial=0) <= 1 else 255
        if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
            raise MaskError(where, "integer mask values must lie in 0..255")
        return (mask.astype(np.float32) / top > 0.5).astype(np.float32)
    if np.issubdtype(mask.dtype, np.floating):
        if not np.isfinite(mask).all() or mask.min(initial=0) < 0 or mask.max(initial=0) > 1:
            raise MaskError(where, "float mask values must be finite and lie in [0, 1]")
        return (mask > 0.5).astype(np.float32)
    raise MaskError(where, f"mask has dtype {mask.dtype}; expected bool, integer or float")


class Segmenter:
    """Base class: :meth:`segment` one photo. Backends register in ``likeness.segmentation.SEGMENTERS``.

    ``face`` (a :class:`likeness.faces.Face` in photo coordinates) and ``path`` (where the photo came
    from) are hints: the heuristic needs the face, dataset masks need the path, a network needs neither.
    """

    name: str = ""

    def segment(self, image: Image.Image, *, face=None, path: str | Path | None = None) -> Masks:
        raise NotImplementedError

    def describe(self) -> dict:
        """What an artifact records about the masks that trained it."""
        return {"segmenter": self.name}

    def segment_person(self, image: Image.Image, *, face=None, path: str | Path | None = None) -> Masks:
        """:meth:`segment`, with its masks checked (:func:`check_mask`: a backend returning masks of the wrong
        size or type is a :class:`MaskError`) and photos whose person mask is (nearly) empty refused with
        :class:`NoPersonError`."""
        masks = self.segment(image, face=face, path=path)
        where = f"{self.name} mask of {path or '<image>'}"
        masks = Masks(check_mask(masks.person, image.size, where), check_mask(masks.face, image.size, where), masks.source)
        fraction = float(masks.person.mean()) if masks.person.size else 0.0
        if fraction < MIN_PERSON_FRACTION:
            raise NoPersonError(path or "<image>", f"{self.name} person mask covers {fraction:.2%} of the photo")
        return masks
