"""Captions: templates, the Gen4Gen prompting strategy, and a vision-language captioner (tiny BLIP)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from likeness.compose.captions import MAX_WORDS, TemplateCaptioner, VLMCaptioner, ensure_tokens

PHRASES = ["<mochi> dog", "<kettle> teapot", "<anna> person"]


def test_gen4gen_strategy_has_global_token_repeated_concepts_and_background():
    text = TemplateCaptioner().caption(PHRASES, "a sunny garden", np.random.default_rng(0))
    assert text == ("<gen4gen> a photo of <mochi> dog, <kettle> teapot and <anna> person, with <mochi> dog, "
                    "<kettle> teapot and <anna> person, in the background a sunny garden")


def test_plain_templates_are_seeded():
    cap = TemplateCaptioner("plain")
    a = [cap.caption(PHRASES[:2], "on a beach", np.random.default_rng(s)) for s in range(6)]
    b = [cap.caption(PHRASES[:2], "on a beach", np.random.default_rng(s)) for s in range(6)]
    assert a == b and all("<mochi> dog and <kettle> teapot" in t and t.endswith("on a beach") for t in a)
    assert "<gen4gen>" not in a[0]
    with pytest.raises(ValueError, match="strategy"):
        TemplateCaptioner("fancy")


def test_ensure_tokens_rewrites_class_nouns_and_appends_missing_concepts():
    text = ensure_tokens("A dog sleeps next to the teapot.", PHRASES, ["dog", "teapot", "person"])
    assert text == "a <mochi> dog sleeps next to a <kettle> teapot, with <anna> person"


@pytest.fixture
def tiny_blip(tmp_path):
    """A BLIP captioning model with a real BertTokenizer on a small vocabulary, saved and reloaded."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "dog", "teapot", "in",
             "the", "garden", "on", "table", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32, bos_token_id=5,
                         pad_token_id=0, eos_token_id=3, sep_token_id=3))
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(tmp_path / "blip")
    processor.save_pretrained(tmp_path / "blip")
    return tmp_path / "blip"


def test_vlm_captioner_describes_then_applies_the_strategy(tiny_blip):
    captioner = VLMCaptioner(tiny_blip, prompt="a photo of", max_new_tokens=12)  # BLIP-style conditional captioning
    image = Image.new("RGB", (48, 48), (120, 60, 60))
    described = captioner.describe(image)
    assert described and len(described.split()) <= MAX_WORDS
    assert captioner.describe(image) == described  # greedy decoding: deterministic
    text = captioner.caption(PHRASES[:2], "a garden", np.random.default_rng(0), image=image, class_nouns=["dog", "teapot"])
    assert text.startswith("<gen4gen> ") and text.endswith("in the background a garden")
    assert text.count("<mochi> dog") >= 2 and text.count("<kettle> teapot") >= 2
    with pytest.raises(FileNotFoundError, match="could not be loaded"):
        VLMCaptioner(tiny_blip.parent / "absent")
