"""A Qwen2.5-VL judge at toy size (``likeness/tiny-qwen-vl``) and at real sizes with random weights (benchmarks).

The tiny one is the real ``Qwen2_5_VLForConditionalGeneration`` built from a small config, its tokenizer a real
byte-level BPE trained with the ``tokenizers`` library on a few hundred words (Qwen's own vocabulary cannot be
fetched offline) with Qwen's special tokens, its image processor transformers' Qwen2-VL one, and a chat
template written here in Qwen's turn format. Everything is written with ``save_pretrained`` and loaded back
through the same code a downloaded model goes through. Its answers are random text: with it the judge
returns status ``parse_failed``, which is what the tests check.
"""

from __future__ import annotations

from pathlib import Path

import torch

from likeness.models.tiny import tiny_words

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>")
# Qwen's turn format (facts of the format, written here): <|im_start|>role\n ... <|im_end|>\n, an image as
# <|vision_start|><|image_pad|><|vision_end|> (the judge expands the pad to the image's token count).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL-3B-Instruct's published sizes (config.json of the hub repo), for the benchmark.
QWEN25_VL_3B = dict(
    text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
              num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6, tie_word_embeddings=True,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
)
# initializer_range 0.2 (not the default 0.02): the toy model's outputs then depend visibly on token positions and
# pixels, so a test can tell a correctly assembled batch from a wrong one.
TINY = dict(
    text=dict(initializer_range=0.2, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                             "mrope_section": [2, 3, 3]}),
    vision=dict(initializer_range=0.2, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
)


def train_tokenizer(folder: Path, texts: list[str], vocab_size: int = 512, chat_template: str = CHAT_TEMPLATE):
    """A byte-level BPE (Qwen's kind of tokenizer) trained on ``texts``, with Qwen's special tokens; saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  model_max_length=32768)
    tok.chat_template = chat_template
    tok.save_pretrained(folder)
    return tok


def build_qwen_vl(folder: Path, sizes: dict = TINY, seed: int = 0, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 16,
                  dtype=torch.float32, tokenizer_texts: list[str] | None = None) -> Path:
    """A Qwen2.5-VL folder (model + tokenizer + image processor) with random weights at ``sizes``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = tokenizer_texts or [" ".join(tiny_words()), "Reason: the same person. Score: 0 1 2 3 4"]
    tok = train_tokenizer(folder, texts)
    ids = tok.convert_tokens_to_ids
    text = dict(sizes["text"])
    tie = text.pop("tie_word_embeddings", False)
    text.setdefault("vocab_size", len(tok))
    text.update(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(sizes["vision"]), tie_word_embeddings=tie,
                              image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                              vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    model.save_pretrained(folder)
    Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels).save_pretrained(folder)
    return folder


def build_tiny_qwen_vl(folder: Path, seed: int = 0) -> Path:
    return build_qwen_vl(folder, TINY, seed)
