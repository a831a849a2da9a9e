"""Base models: the tiny pipelines, their tokenizer, loading, family detection and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from likeness.models import FamilyMismatchError, ModelNotFoundError, detect_family, load_pipeline, pick_dtype
from likeness.models.tiny import build_vocabulary, tiny_words

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_tokenizer_keeps_every_listed_word_whole(tiny_models):
    pipe = load_pipeline("likeness/tiny-sd")
    tok = pipe.tokenizer
    split = [w for w in tiny_words() if len(tok(w, add_special_tokens=False).input_ids) != 1]
    assert split == []
    # Names Celeb Basis needs, and prompt words, are single tokens; unknown words fall back to pieces.
    assert len(tok("barack obama", add_special_tokens=False).input_ids) == 2
    assert len(tok("qzxv", add_special_tokens=False).input_ids) > 1
    assert len(tiny_words()) > 850


def test_vocabulary_merges_build_words_from_the_right():
    vocab, merges = build_vocabulary(["ab", "abc", "bc"])
    assert merges == ["a b</w>", "b c</w>", "a bc</w>"]
    assert {"ab</w>", "abc</w>", "bc</w>", "<|startoftext|>", "<|endoftext|>"} <= set(vocab)
    assert len(vocab) == 512 + 3 + 2


def test_tiny_models_load_with_family_and_make_deterministic_noise(tiny_models):
    sd = load_pipeline("likeness/tiny-sd")
    xl = load_pipeline("likeness/tiny-sdxl")
    assert (sd.likeness_info.family, xl.likeness_info.family) == ("sd1", "sdxl")
    assert type(xl).__name__ == "StableDiffusionXLPipeline" and xl.text_encoder_2 is not None
    assert sd.dtype == torch.float32 and sd.device.type == "cpu"
    run = lambda pipe, seed: pipe("a photo of a person", num_inference_steps=2, output_type="np",  # noqa: E731
                                  generator=torch.Generator().manual_seed(seed)).images[0]
    np.testing.assert_array_equal(run(sd, 3), run(sd, 3))
    assert np.abs(run(sd, 3) - run(sd, 4)).max() > 1e-3
    assert run(xl, 3).shape == (64, 64, 3)


def test_tiny_build_is_deterministic(tmp_path):
    from likeness.models.tiny import build_tiny_sd

    a = build_tiny_sd(tmp_path / "a").unet.state_dict()
    b = build_tiny_sd(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_model_offline_names_it_and_says_how_to_provide_it(tiny_models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        load_pipeline("someone/no-such-model")
    message = str(err.value)
    assert "someone/no-such-model" in message and "HF_HUB_OFFLINE" in message and "save_pretrained" in message


def _hub_at(monkeypatch, port: int) -> None:
    from huggingface_hub import constants

    from likeness.models import loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(loading, "_REACHABLE", {})


def test_unreachable_hub_counts_as_offline_and_says_so(tiny_models, monkeypatch):
    """A machine without network gets the clear error at once, not after huggingface_hub's retries."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _hub_at(monkeypatch, port)
    with pytest.raises(ModelNotFoundError) as err:
        load_pipeline("someone/no-such-model")
    message = str(err.value)
    assert "the hub (127.0.0.1) cannot be reached" in message and "someone/no-such-model" in message


def test_reachable_hub_is_not_offline_and_a_proxy_skips_the_probe(monkeypatch):
    import socket

    from likeness.models.loading import hub_reachable, offline

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        _hub_at(monkeypatch, server.getsockname()[1])
        assert hub_reachable() and not offline()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _hub_at(monkeypatch, port)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_reachable() and not offline()
    monkeypatch.delenv("HTTPS_PROXY")
    assert not hub_reachable() and offline()


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_pipeline(tmp_path)


def test_family_mismatch_is_refused_before_loading(tiny_models):
    with pytest.raises(FamilyMismatchError, match="sdxl.*made for sd1"):
        load_pipeline("likeness/tiny-sdxl", expect_family="sd1")


@pytest.mark.parametrize(
    "index,unet,family",
    [
        ({"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 768}, "sd1"),
        ({"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 1024}, "sd2"),
        ({"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": []}, {"addition_embed_type": "text_time"}, "sdxl"),
    ],
)
def test_detect_family_from_configs(tmp_path, index, unet, family):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "unet" / "config.json").write_text(json.dumps(unet))
    assert detect_family(tmp_path) == family


def test_dtype_choice():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype(torch.device("cpu"), "fp8")
