"""Generated-looking images made from real photos, shared by the identity tests and benchmarks/detectors.py.

What AI images do to faces, built by hand: smooth skin (bilateral filter + a little blur), odd lighting (gamma
and a colour cast), small faces in wide scenes (a photo pasted small on a large synthetic background), stylised
renders (posterised, palette-quantised, dark edges), and two people side by side.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def shrink(image: Image.Image, side: int = 400) -> Image.Image:
    """Upright RGB, longest side ``side`` px (MTCNN cost grows with pixels)."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)


def smooth_skin(image: Image.Image) -> Image.Image:
    from skimage.restoration import denoise_bilateral

    array = np.asarray(image, dtype=np.float64) / 255
    out = denoise_bilateral(array, sigma_color=0.08, sigma_spatial=4, channel_axis=-1)
    return Image.fromarray((out * 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))


def odd_lighting(image: Image.Image, gamma: float = 2.2, cast=(1.25, 0.8, 0.6)) -> Image.Image:
    array = (np.asarray(image, dtype=np.float64) / 255) ** gamma
    return Image.fromarray((np.clip(array * np.array(cast), 0, 1) * 255).round().astype(np.uint8))


def stylised(image: Image.Image) -> Image.Image:
    flat = ImageOps.posterize(image, 3).quantize(colors=12, method=Image.Quantize.MEDIANCUT).convert("RGB")
    edges = ImageOps.invert(image.convert("L").filter(ImageFilter.FIND_EDGES)).point(lambda v: 255 if v > 200 else 0)
    inked = Image.composite(flat, Image.new("RGB", image.size, 0), edges)
    return Image.blend(flat, inked, 0.5)


def scene(size=(1024, 768), seed: int = 0) -> Image.Image:
    """A synthetic wide background: colour gradients and blocky noise, no face."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.3 + 0.4 * x, 0.5 + 0.3 * y, 0.7 - 0.3 * x * y], -1)
    noise = rng.normal(0, 0.05, (h // 16 + 1, w // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
    return Image.fromarray((np.clip(base + noise, 0, 1) * 255).astype(np.uint8))


def small_in_scene(image: Image.Image, face_box, face_width: float, size=(1024, 768), seed: int = 0):
    """``image`` scaled so its face (``face_box`` in image px) is ``face_width`` px wide, pasted on a wide scene.
    Returns (scene, where the face box landed)."""
    scale = face_width / (face_box[2] - face_box[0])
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    out = scene(size, seed)
    at = (size[0] // 3, size[1] // 2 - small.height // 2)
    out.paste(small, at)
    box = tuple(v * scale + at[i % 2] for i, v in enumerate(face_box))
    return out, box


def side_by_side(*images: Image.Image, height: int = 200, gap: int = 30) -> Image.Image:
    """People next to each other on a plain grey canvas, each scaled to ``height``."""
    scaled = [im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS) for im in images]
    canvas = Image.new("RGB", (sum(s.width for s in scaled) + gap * (len(scaled) + 1), height + 2 * gap), (128, 128, 128))
    x = gap
    for s in scaled:
        canvas.paste(s, (x, gap))
        x += s.width + gap
    return canvas
