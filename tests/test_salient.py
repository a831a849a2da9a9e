"""Foreground extraction: alpha channel, an IS-Net-style ONNX model, a transformers model; refine; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from likeness.segmentation.salient import (
    AlphaBackend,
    ForegroundError,
    OnnxBackend,
    TransformersBackend,
    extract_foreground,
    get_salient_backend,
    mask_quality,
)
from likeness.testing.tiny_salient import saliency_onnx


def object_photo(path, box=(20, 30, 68, 54), size=(96, 96)):
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste((180, 40, 40), box)
    img.save(path)
    truth = np.zeros(size[::-1], dtype=bool)
    truth[box[1]:box[3], box[0]:box[2]] = True
    return path, truth


def iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def test_alpha_channel_foreground_is_cropped_with_quality(tmp_path):
    rgba = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
    rgba.paste((10, 200, 10, 255), (10, 5, 40, 35))
    rgba.save(tmp_path / "a.png")
    fg = extract_foreground(tmp_path / "a.png", "alpha")
    assert fg.box == (10, 5, 40, 35) and fg.image.size == (30, 30) and fg.aspect == 1.0
    assert fg.quality.coverage == pytest.approx(900 / 2400) and fg.quality.confidence == 1.0
    assert fg.quality.fragments == 1 and fg.quality.score == 1.0
    assert np.asarray(fg.image)[..., 3].min() == 255


def test_alpha_backend_refuses_opaque_photos(tmp_path):
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "o.jpg")
    with pytest.raises(ForegroundError, match="no alpha channel") as info:
        extract_foreground(tmp_path / "o.jpg", AlphaBackend())
    assert info.value.status == "no_alpha" and "o.jpg" in str(info.value)


def test_onnx_isnet_style_model_and_repeat_and_refine(tmp_path):
    backend = get_salient_backend(str(saliency_onnx(tmp_path / "sal.onnx")))
    assert isinstance(backend, OnnxBackend) and backend.size == (32, 32)
    path, truth = object_photo(tmp_path / "p.png")
    single = extract_foreground(path, backend, passes=1)
    refined = extract_foreground(path, backend, passes=3)
    assert single.quality.passes == 1 and refined.quality.passes >= 2
    full_single = np.zeros_like(truth)
    x0, y0, x1, y1 = single.box
    full_single[y0:y1, x0:x1] = single.mask > 0.5
    full_refined = np.zeros_like(truth)
    x0, y0, x1, y1 = refined.box
    full_refined[y0:y1, x0:x1] = refined.mask > 0.5
    assert iou(full_refined, truth) >= iou(full_single, truth) and iou(full_refined, truth) > 0.9
    assert 0.0 < refined.quality.agreement <= 1.0
    assert abs(refined.aspect - 48 / 24) < 0.2


def test_no_foreground_and_corrupt_photos_are_errors_with_status(tmp_path):
    backend = OnnxBackend(saliency_onnx(tmp_path / "sal.onnx"))
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "white.png")
    with pytest.raises(ForegroundError, match="no foreground") as info:
        extract_foreground(tmp_path / "white.png", backend)
    assert info.value.status == "no_foreground"
    Image.new("RGB", (64, 64), (0, 0, 0)).save(tmp_path / "black.png")
    with pytest.raises(ForegroundError) as info:
        extract_foreground(tmp_path / "black.png", backend)
    assert info.value.status == "whole_image"
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ForegroundError) as info:
        extract_foreground(tmp_path / "bad.png", backend)
    assert info.value.status == "unreadable" and "bad.png" in str(info.value)


def test_transformers_segmentation_model_from_a_folder(tmp_path):
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=16,
                             num_labels=2, image_size=64)
    model = SegformerForSemanticSegmentation(config)
    # A zeroed classifier gives a known output (p = 0.5 everywhere) through the real loading + forward path.
    with torch.no_grad():
        model.decode_head.classifier.weight.zero_()
        model.decode_head.classifier.bias.copy_(torch.tensor([0.0, 0.0]))
    model.save_pretrained(tmp_path / "seg")
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "seg")
    backend = get_salient_backend(f"transformers:{tmp_path / 'seg'}")
    assert isinstance(backend, TransformersBackend) and backend.processor is not None
    image = Image.new("RGB", (80, 48), (90, 90, 90))
    mask = backend.predict(image)
    assert mask.shape == (48, 80) and mask.dtype == np.float32
    np.testing.assert_allclose(mask, 0.5, atol=1e-5)  # zero classifier: both classes equally likely
    quality = mask_quality(mask)
    assert quality.confidence == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(FileNotFoundError, match="could not be loaded"):
        TransformersBackend(tmp_path / "nothing-here")


def test_mask_quality_counts_fragments():
    mask = np.zeros((50, 50), dtype=np.float32)
    mask[5:15, 5:15] = 1.0
    mask[30:40, 30:45] = 1.0
    q = mask_quality(mask, agreement=0.9, passes=2)
    assert q.fragments == 2 and q.largest_fraction == pytest.approx(150 / 250)
    assert q.score == pytest.approx(1.0 * 0.6 * 0.9)


# -- GrabCut: ordinary photos (no alpha channel), offline --------------------------------------------------


def test_grabcut_finds_the_object_of_a_synthetic_photo(tmp_path):
    # A textured red object on a noisy white-ish background: colour models + the graph cut must find it.
    rng = np.random.default_rng(0)
    pixels = np.clip(235 + rng.normal(0, 12, (96, 96, 3)), 0, 255)
    pixels[30:70, 25:75] = np.clip([170, 40, 40] + rng.normal(0, 15, (40, 50, 3)), 0, 255)
    truth = np.zeros((96, 96), bool)
    truth[30:70, 25:75] = True
    fg = extract_foreground(Image.fromarray(pixels.astype(np.uint8)), "grabcut")
    found = np.zeros((96, 96), bool)
    x0, y0, x1, y1 = fg.box
    found[y0:y1, x0:x1] = fg.mask > 0.5
    assert iou(found, truth) > 0.9 and fg.backend == "grabcut"


def test_auto_uses_alpha_when_present_else_grabcut_on_a_real_photo(astronaut_path, tmp_path):
    """The default segmenter on an ordinary JPEG (skimage's astronaut): a foreground is found (she and her
    helmet, not the whole photo), by GrabCut; an RGBA photo still uses its alpha channel."""
    fg = extract_foreground(astronaut_path)  # default: auto
    assert fg.backend == "grabcut"
    assert 0.1 < fg.quality.coverage < 0.8
    x0, y0, x1, y1 = fg.box
    assert x0 < 200 and x1 > 260 and y0 < 90 and y1 > 300  # the box holds her face (about x 170-260, y 60-150)
    rgba = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
    rgba.paste((10, 200, 10, 255), (10, 5, 40, 35))
    rgba.save(tmp_path / "a.png")
    cut = extract_foreground(tmp_path / "a.png", "auto")
    assert cut.backend == "alpha" and cut.box == (10, 5, 40, 35)
    assert get_salient_backend("auto").describe() == "auto(alpha|grabcut)"


@pytest.mark.faces_data
def test_grabcut_finds_the_person_in_real_portraits(faces_dir):
    for photo in (faces_dir / "obama" / "0.jpg", faces_dir / "biden" / "0.jpg"):
        fg = extract_foreground(photo, "auto")
        assert fg.backend == "grabcut" and 0.15 < fg.quality.coverage < 0.9, (photo, fg.quality)
