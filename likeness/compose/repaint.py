"""Repainting a composite with a diffusers inpainting pipeline (Gen4Gen stage 3).

Defaults are the paper's: SDXL inpainting (``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``),
strength 0.9, 60 steps, guidance 6, softened mask edges. The pipeline is loaded with
``AutoPipelineForInpainting.from_pretrained`` from a hub id, a local folder, or a tiny id
(``likeness/tiny-sd-inpaint``, ``likeness/tiny-sdxl-inpaint``; random weights, for tests), so any
diffusers inpainting checkpoint works (9-channel UNets, or text-to-image checkpoints in diffusers'
4-channel latent-blending mode).

A background comes from an image, or from a prompt: the same pipeline with an all-white mask at
strength 1.0 (inpainting everything is text-to-image), so no second model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

DEFAULT_REPAINT_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
PAPER_SETTINGS = {"strength": 0.9, "num_inference_steps": 60, "guidance_scale": 6.0}
NEGATIVE_PROMPT = "blurry, deformed, cut-out, sticker, collage, duplicate, watermark, text"


def resolve_inpaint_model(model_id: str | Path) -> Path:
    from likeness.models.loading import resolve_model_path
    from likeness.models.tiny_inpaint import is_tiny_inpaint, tiny_inpaint_path

    if is_tiny_inpaint(str(model_id)):
        return tiny_inpaint_path(str(model_id))
    return resolve_model_path(model_id)


class Repainter:
    """Lazy-loading wrapper: ``repaint(image, mask, prompt, seed)`` and ``background(prompt, size, seed)``."""

    def __init__(self, model: str | Path = DEFAULT_REPAINT_MODEL, *, strength: float = 0.9,
                 num_inference_steps: int = 60, guidance_scale: float = 6.0, negative_prompt: str | None = NEGATIVE_PROMPT,
                 device=None, dtype=None, pipe=None):
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        self.model = str(model)
        self.strength, self.steps, self.guidance = float(strength), int(num_inference_steps), float(guidance_scale)
        self.negative_prompt = negative_prompt
        self.device, self.dtype = device, dtype
        self._pipe = pipe

    @property
    def pipe(self):
        if self._pipe is None:
            from diffusers import AutoPipelineForInpainting

            from likeness.models.loading import pick_device, pick_dtype

            path = resolve_inpaint_model(self.model)
            device = pick_device(self.device)
            pipe = AutoPipelineForInpainting.from_pretrained(path, dtype=pick_dtype(device, self.dtype))
            pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
        return self._pipe

    def settings(self) -> dict:
        return {"model": self.model, "strength": self.strength, "num_inference_steps": self.steps,
                "guidance_scale": self.guidance, "negative_prompt": self.negative_prompt}

    def _call(self, image: Image.Image, mask: Image.Image, prompt: str, seed: int, strength: float) -> Image.Image:
        width, height = image.size
        if width % 8 or height % 8:
            raise ValueError(f"canvas {width}x{height} must be a multiple of 8 for the inpainting VAE")
        out = self.pipe(prompt=prompt, negative_prompt=self.negative_prompt, image=image.convert("RGB"),
                        mask_image=mask.convert("L"), height=height, width=width, strength=strength,
                        num_inference_steps=self.steps, guidance_scale=self.guidance,
                        generator=torch.Generator("cpu").manual_seed(int(seed)))
        result = out.images[0]
        return result if result.size == image.size else result.resize(image.size, Image.Resampling.LANCZOS)

    @torch.no_grad()
    def repaint(self, image: Image.Image, mask: Image.Image, prompt: str, seed: int) -> Image.Image:
        """Inpaint where ``mask`` is white (soft values blend), at the configured strength."""
        return self._call(image, mask, prompt, seed, self.strength)

    @torch.no_grad()
    def background(self, prompt: str, size: tuple[int, int], seed: int) -> Image.Image:
        blank = Image.new("RGB", size, (127, 127, 127))
        full = Image.new("L", size, 255)
        return self._call(blank, full, prompt, seed, 1.0)

