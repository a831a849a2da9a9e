"""The one loading path for transformers models and published files (likeness.models.pretrained)."""

from __future__ import annotations

import time

import pytest
import torch

from likeness.models.pretrained import (
    TINY_IMAGE_ENCODER,
    ModelUnavailableError,
    image_encoder_for,
    load_pretrained,
    resolve_file,
)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty likeness cache (the tiny image encoder is built into it) and no hub."""
    monkeypatch.setenv("LIKENESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_tiny_bases_default_to_the_tiny_image_encoder():
    from likeness.methods.photoverse.method import DEFAULT_IMAGE_ENCODERS

    assert image_encoder_for("likeness/tiny-sd", DEFAULT_IMAGE_ENCODERS["sd1"]) == TINY_IMAGE_ENCODER
    assert image_encoder_for("likeness/tiny-sdxl", None) == TINY_IMAGE_ENCODER
    assert image_encoder_for("org/real-base", DEFAULT_IMAGE_ENCODERS["sd1"]) == DEFAULT_IMAGE_ENCODERS["sd1"]
    assert image_encoder_for("org/real-sdxl", None) is None  # StellarNet on a real base: the user names one


def test_tiny_image_encoder_loads_offline_on_the_requested_device_and_dtype(offline_cache):
    from transformers import CLIPVisionModel

    from likeness.methods.photoverse.method import ImageEncoder

    model = load_pretrained(CLIPVisionModel, TINY_IMAGE_ENCODER, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    encoder = ImageEncoder.from_pretrained(TINY_IMAGE_ENCODER, num_layers=5)
    assert encoder.layers == [1, 2, 3, 4, 5]  # six layers: PhotoVerse's five feature layers are distinct
    assert next(encoder.model.parameters()).dtype == torch.float32


def test_missing_models_fail_fast_with_one_clear_message(offline_cache, tmp_path):
    from transformers import CLIPVisionModel

    tic = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match=r"image encoder 'nobody/absent-model' could not be loaded: "
                                                    r"HF_HUB_OFFLINE is set.*hf download nobody/absent-model"):
        load_pretrained(CLIPVisionModel, "nobody/absent-model", what="image encoder")
    assert time.perf_counter() - tic < 10  # no minute of hub retries
    with pytest.raises(ModelUnavailableError, match="not a hub id"):
        load_pretrained(CLIPVisionModel, str(tmp_path / "nothing" / "here"), what="image encoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="has no config.json"):
        load_pretrained(CLIPVisionModel, str(tmp_path / "empty"), what="image encoder")
    with pytest.raises(FileNotFoundError, match="hub repository did not provide.*HF_HUB_OFFLINE"):
        resolve_file("nobody/absent-weights", "model.safetensors", what="adapter weights")


def test_method_errors_keep_their_types(offline_cache):
    from likeness.methods.photoverse.method import EncoderWeightsError, ImageEncoder
    from likeness.methods.stellarnet.method import ImageEncoder as StellarImageEncoder
    from likeness.methods.stellarnet.method import WeightsError

    with pytest.raises(EncoderWeightsError, match="'nobody/clip'.*HF_HUB_OFFLINE is set"):
        ImageEncoder.from_pretrained("nobody/clip")
    with pytest.raises(WeightsError, match="'nobody/clip'.*HF_HUB_OFFLINE is set"):
        StellarImageEncoder("nobody/clip")
    assert StellarImageEncoder(TINY_IMAGE_ENCODER).dim == 32
