"""Reading images defensively.

Every image that enters likeness goes through :func:`load_image`, so corrupt, truncated, 16-bit,
palette, RGBA, grayscale and EXIF-rotated files all come out as the same thing (an 8-bit RGB
``PIL.Image``) or as an :class:`ImageError` that names the file and the problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Larger images are refused rather than allowed to exhaust memory (a 20k x 20k RGB is 1.2 GB).
MAX_PIXELS = 16384 * 16384
# Smaller images carry no usable face or content.
MIN_SIDE = 16


class ImageError(ValueError):
    """An image could not be used. ``status`` is a short machine-readable reason."""

    def __init__(self, path: str | Path, problem: str, status: str = "unreadable"):
        self.path = str(path)
        self.problem = problem
        self.status = status
        super().__init__(f"{path}: {problem}")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer grayscale: rescale to the 8-bit range instead of clipping to white.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels onto white, as a viewer would show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(path: str | Path, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image, or raise :class:`ImageError` saying why not."""
    path = Path(path)
    if not path.exists():
        raise ImageError(path, "file does not exist", status="missing")
    if path.is_dir():
        raise ImageError(path, "is a directory, not an image", status="unreadable")
    if path.stat().st_size == 0:
        raise ImageError(path, "file is empty", status="unreadable")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(
                        path, f"image is too large ({width}x{height} px, limit {max_pixels} px)", status="too_large"
                    )
                img.load()  # decode now so truncation is caught here
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, f"image is too large ({exc})", status="too_large") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not a recognised image format (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"cannot decode image ({exc})") from None
    if min(rgb.size) < min_side:
        raise ImageError(path, f"image is too small ({rgb.size[0]}x{rgb.size[1]} px, minimum side {min_side})", status="too_small")
    return rgb


def image_to_array(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8, C-contiguous (what dlib and onnx preprocessing expect)."""
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
