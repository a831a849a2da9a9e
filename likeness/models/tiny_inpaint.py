"""Tiny inpainting pipelines (random weights, real diffusers classes) for offline tests of repainting.

- ``likeness/tiny-sd-inpaint``: ``StableDiffusionInpaintPipeline`` with a 9-channel UNet (4 noisy
  latent + 1 mask + 4 masked-image latent channels), the layout of real SD inpainting checkpoints;
- ``likeness/tiny-sdxl-inpaint``: ``StableDiffusionXLInpaintPipeline`` with a 9-channel UNet, the layout
  of ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``.

Built from the tiny text-to-image components (:mod:`likeness.models.tiny`), saved with
``save_pretrained`` once and always read back with ``from_pretrained``.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from likeness.models import tiny

TINY_INPAINT_MODELS = {"likeness/tiny-sd-inpaint": "sd1", "likeness/tiny-sdxl-inpaint": "sdxl"}


def is_tiny_inpaint(model_id: str) -> bool:
    return str(model_id) in TINY_INPAINT_MODELS


def _inpaint_unet(text_to_image_unet):
    from diffusers import UNet2DConditionModel

    config = dict(text_to_image_unet.config)
    config["in_channels"] = 9
    torch.manual_seed(tiny.TINY_SEED + 10)
    return UNet2DConditionModel.from_config(config)


def build_tiny_inpaint(model_id: str, staging: Path):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    family = TINY_INPAINT_MODELS[model_id]
    if family == "sdxl":
        base = tiny.build_tiny_sdxl(staging / "_tokenizer_src")
        return StableDiffusionXLInpaintPipeline(
            vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=base.text_encoder_2,
            tokenizer=base.tokenizer, tokenizer_2=base.tokenizer_2, unet=_inpaint_unet(base.unet),
            scheduler=base.scheduler, requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    base = tiny.build_tiny_sd(staging / "_tokenizer_src")
    return StableDiffusionInpaintPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=_inpaint_unet(base.unet),
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_inpaint_path(model_id: str) -> Path:
    if model_id not in TINY_INPAINT_MODELS:
        raise KeyError(f"unknown tiny inpainting model {model_id!r}; known: {', '.join(TINY_INPAINT_MODELS)}")
    return _tiny_inpaint_path(model_id, str(tiny.cache_root()))


@lru_cache(maxsize=None)
def _tiny_inpaint_path(model_id: str, root: str) -> Path:
    target = Path(root) / "tiny" / f"{model_id.split('/')[-1]}-{tiny.TINY_VERSION}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build_tiny_inpaint(model_id, staging).save_pretrained(staging)
        shutil.rmtree(staging / "_tokenizer_src", ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
