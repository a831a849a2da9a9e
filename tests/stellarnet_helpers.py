"""Tiny models and a tiny portrait dataset for the StellarNet and segmentation tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def build_tiny_clip_vision(folder: Path, seed: int = 0) -> Path:
    """A CLIP vision tower at toy size (hidden 32, 2 layers, 32 px input), saved with its processor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_tiny_segformer(folder: Path, labels=("background", "skin", "hair", "cloth"), bias=None, seed: int = 0) -> Path:
    """A SegFormer at toy size; ``bias`` (one value per label, classifier weights zeroed) fixes its answer."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)
    config = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=16, num_labels=len(labels),
                             id2label={i: n for i, n in enumerate(labels)}, label2id={n: i for i, n in enumerate(labels)})
    model = SegformerForSemanticSegmentation(config)
    if bias is not None:
        with torch.no_grad():
            model.decode_head.classifier.weight.zero_()
            model.decode_head.classifier.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def colour_mask(size: int, *, skin=True) -> Image.Image:
    """A CelebAMask-HQ colour label map: hair on top, a skin ellipse, cloth at the bottom, background around."""
    from likeness.segmentation.celebamask import LABELS, PALETTE

    colour = {name: tuple(int(c) for c in PALETTE[LABELS.index(name)]) for name in LABELS}
    img = Image.new("RGB", (size, size), colour["background"])
    draw = ImageDraw.Draw(img)
    draw.ellipse((size * 0.2, size * 0.05, size * 0.8, size * 0.6), fill=colour["hair"])
    if skin:
        draw.ellipse((size * 0.3, size * 0.15, size * 0.7, size * 0.65), fill=colour["skin"])
        draw.rectangle((size * 0.45, size * 0.4, size * 0.55, size * 0.5), fill=colour["nose"])
    draw.rectangle((size * 0.15, size * 0.75, size * 0.85, size - 1), fill=colour["cloth"])
    return img


def build_portraits(root: Path, source: Path, *, people: int = 3, size: int = 96) -> Path:
    """A Stellar-layout portrait folder: ``<id>/0.jpg`` + ``0_bg.png`` (half size, as CelebAMask-HQ) +
    ``0_attributes.json``; plus ``090/`` without a mask and ``091/`` with an unreadable photo."""
    photo = Image.open(source).convert("RGB")
    rng = np.random.default_rng(0)
    for i in range(people):
        folder = root / f"{i:03d}"
        folder.mkdir(parents=True)
        left, top = (int(v) for v in rng.integers(0, photo.size[0] // 3, size=2))
        crop = photo.crop((left, top, left + photo.size[0] // 2, top + photo.size[1] // 2)).resize((size, size))
        crop.save(folder / "0.jpg", quality=95)
        colour_mask(size // 2).save(folder / "0_bg.png")
        (folder / "0_attributes.json").write_text(json.dumps(
            {"attributes": {"Male": 1, "Young": -1}, "identity": f"id-{i:03d}", "original_filename": f"{i:06d}.jpg"}))
    (root / "090").mkdir()
    photo.resize((size, size)).save(root / "090" / "0.jpg")  # no mask
    (root / "091").mkdir()
    (root / "091" / "0.jpg").write_bytes(b"not a jpeg")  # unreadable
    colour_mask(size // 2).save(root / "091" / "0_bg.png")
    return root
