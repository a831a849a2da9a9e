"""Compositing cut-outs on a canvas, and the masks the repainting step needs.

Each cut-out is resized to its box (the planner already gave the box the cut-out's aspect ratio; any
other box is first fitted inside with :func:`likeness.compose.layout.fit_box`) and alpha-composited.
Per-concept masks record which canvas pixels show that concept (alpha > 0.5), so every stored
mask and box of a dataset entry can be checked against the image.

The repaint mask is "everything but the objects", with softened edges: the object masks are eroded
by ``edge`` pixels and the complement blurred, so the inpainting model blends each object's border
into the new background instead of leaving a cut-out seam (Gen4Gen's softened mask edges).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from likeness.compose.layout import Box, Layout, fit_box


@dataclass
class Composite:
    image: Image.Image  # RGB canvas with the objects pasted
    masks: dict[str, np.ndarray]  # concept -> bool HxW (where it is visible)
    boxes: dict[str, Box]  # the box each cut-out was actually pasted into

    @property
    def objects(self) -> np.ndarray:
        out = np.zeros(self.image.size[::-1], dtype=bool)
        for mask in self.masks.values():
            out |= mask
        return out


def fit_background(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover ``size`` and centre-crop (a background never gets distorted)."""
    return ImageOps.fit(image.convert("RGB"), size, Image.Resampling.LANCZOS)


def composite(cutouts: dict[str, Image.Image], layout: Layout, background: Image.Image | None = None,
              fill=(127, 127, 127)) -> Composite:
    """Paste each RGBA cut-out into its layout box on ``background`` (or a flat ``fill``)."""
    size = tuple(layout.canvas)
    canvas = fit_background(background, size) if background is not None else Image.new("RGB", size, fill)
    canvas = canvas.convert("RGBA")
    masks, placed = {}, {}
    for name, box in layout.boxes.items():
        cut = cutouts[name].convert("RGBA")
        box = fit_box(box, cut.width / cut.height)
        resized = cut.resize((box.width, box.height), Image.Resampling.LANCZOS)
        layer = Image.new("RGBA", size, (0, 0, 0, 0))
        layer.paste(resized, (box.x0, box.y0))
        canvas = Image.alpha_composite(canvas, layer)
        masks[name] = np.asarray(layer.getchannel("A")) > 127
        placed[name] = box
    return Composite(image=canvas.convert("RGB"), masks=masks, boxes=placed)


def repaint_mask(objects: np.ndarray, edge: int = 4, blur: float = 3.0) -> Image.Image:
    """L-mode mask, white = repaint: the complement of the objects eroded by ``edge`` px, blurred."""
    keep = Image.fromarray((objects * 255).astype(np.uint8), mode="L")
    if edge > 0:
        keep = keep.filter(ImageFilter.MinFilter(2 * edge + 1))
    paint = ImageOps.invert(keep)
    if blur > 0:
        paint = paint.filter(ImageFilter.GaussianBlur(blur))
    return paint


def paste_back(repainted: Image.Image, original: Image.Image, paint_mask: Image.Image) -> Image.Image:
    """Keep the composite's object pixels where the mask says "keep" (soft blend at the edges): the
    VAE round trip of the inpainting model would otherwise blur the concepts' fine details."""
    return Image.composite(repainted.convert("RGB"), original.convert("RGB"), paint_mask)
