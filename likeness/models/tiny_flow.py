"""Built-in tiny flow-matching bases: FLUX.1, FLUX.2 [klein], SD3.5 and Qwen-Image(-Edit) at toy sizes.

The real diffusers / transformers classes, built from configs after a fixed seed (sizes follow diffusers' own
fast tests of these pipelines), saved with ``save_pretrained`` and read back with ``from_pretrained`` like every
tiny model (see :mod:`likeness.models.tiny`). Random weights: **they make noise, not pictures**.

- ``likeness/tiny-flux``: ``FluxPipeline`` (CLIP + T5 text encoders, ``FluxTransformer2DModel`` with the
  distilled-guidance embedding of FLUX.1 [dev]); ``FluxKontextPipeline`` loads the same folder.
- ``likeness/tiny-flux2-klein``: ``Flux2KleinPipeline`` (Qwen3 text encoder, ``Flux2Transformer2DModel``,
  ``AutoencoderKLFlux2``); takes a list of reference images.
- ``likeness/tiny-sd3``: ``StableDiffusion3Pipeline`` (two CLIP encoders with projection + T5, ``SD3Transformer2DModel``).
- ``likeness/tiny-qwen-image``: ``QwenImagePipeline`` (Qwen2.5-VL text encoder, ``QwenImageTransformer2DModel``,
  ``AutoencoderKLQwenImage``).
- ``likeness/tiny-qwen-image-edit``: ``QwenImageEditPlusPipeline``: the same, plus the ``Qwen2VLProcessor`` that
  feeds the reference images to the Qwen2.5-VL vision tower.

Tokenizers are built here, offline: CLIP from the tiny word list (:func:`likeness.models.tiny.build_tokenizer`);
T5 as a Unigram (sentencepiece-style) tokenizer whose pieces are ``▁word`` for every tiny word plus single
characters; Qwen2 as byte-level BPE over the 256 byte symbols (no merges: every byte is a token) plus the chat and
vision special tokens the pipelines use. So the Qwen tokenizers are real ``Qwen2Tokenizer`` objects but spend one
token per byte: the real models' fixed prompt-template offsets (Qwen-Image drops its 34 template tokens) cut
elsewhere in the tiny ones, which only changes which random embeddings the random transformer sees.
"""

from __future__ import annotations

from pathlib import Path

import torch

from likeness.models.tiny import OTHER_BUILDERS, _byte_symbols, _text_config, build_tokenizer, tiny_words

TINY_FLOW_SEED = 0

# Chat and vision tokens of the Qwen2/2.5/3 vocabularies that the pipelines' templates and the VL processor use.
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>", "<think>", "</think>")
# The structure of Qwen3's chat template (user turn, assistant prompt, empty thinking block when thinking is off).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def build_t5_tokenizer(folder: Path):
    """A real ``T5TokenizerFast`` (Unigram) on the tiny word list, saved into ``folder`` and read back."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    for word in tiny_words():
        piece = "▁" + word
        if piece not in seen:
            pieces.append((piece, -1.0))
            seen.add(piece)
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-<>{}_":
        if ch not in seen:
            pieces.append((ch, -8.0))
            seen.add(ch)
    folder.mkdir(parents=True, exist_ok=True)
    T5TokenizerFast(vocab=pieces, extra_ids=0).save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder, model_max_length=512)


def build_qwen_tokenizer(folder: Path):
    """A real ``Qwen2Tokenizer`` (byte-level BPE, one token per byte) with the Qwen chat / vision special tokens."""
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|endoftext|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in QWEN_SPECIAL if t != "<|endoftext|>"]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return Qwen2Tokenizer.from_pretrained(folder)


def _t5_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))


def _flow_vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035, **extra)


def build_tiny_flux(work: Path, seed: int = TINY_FLOW_SEED):
    """FLUX.1-[dev]-shaped: CLIP-L-like + T5 text encoders, double and single stream blocks, distilled guidance."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer = build_tokenizer(work / "clip")
    tokenizer_2 = build_t5_tokenizer(work / "t5")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(seed + 2)
    text_encoder_2 = _t5_encoder(tokenizer_2)
    torch.manual_seed(seed + 3)
    vae = _flow_vae(1)
    # FLUX.1 [dev]'s scheduler: resolution-dependent shift of the sigmas.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def build_tiny_sd3(work: Path, seed: int = TINY_FLOW_SEED):
    """SD3.5-shaped: two CLIP encoders with projection and T5, an MMDiT transformer, a 16-channel-style VAE (4 here)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer = build_tokenizer(work / "clip")
    tokenizer_3 = build_t5_tokenizer(work / "t5")
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                        pooled_projection_dim=64, out_channels=4)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=32))
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=32))
    torch.manual_seed(seed + 3)
    text_encoder_3 = _t5_encoder(tokenizer_3)
    torch.manual_seed(seed + 4)
    vae = _flow_vae(4)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tokenizer, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def build_tiny_flux2_klein(work: Path, seed: int = TINY_FLOW_SEED):
    """FLUX.2-[klein]-shaped: a Qwen3 text encoder read at layers (9, 18, 27) as the pipeline does by default
    (so the tiny Qwen3 has 28 layers, each 16 wide), ``Flux2Transformer2DModel`` and ``AutoencoderKLFlux2``."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_qwen_tokenizer(work / "qwen")
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
                                          guidance_embeds=False)
    torch.manual_seed(seed + 1)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16,
                                                num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=2,
                                                head_dim=8, max_position_embeddings=1024,
                                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                                                eos_token_id=tokenizer.eos_token_id))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLFlux2(sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                             up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1,
                             latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer)


def _qwen_vl_parts(work: Path, seed: int):
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_qwen_tokenizer(work / "qwen")
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    torch.manual_seed(seed + 1)
    z_dim = 4
    vae = AutoencoderKLQwenImage(base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    torch.manual_seed(seed + 2)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, "bos_token_id": tokenizer.eos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"), vision_token_id=ids("<|vision_pad|>"))
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                                time_shift_type="exponential")
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)


def build_tiny_qwen_image(work: Path, seed: int = TINY_FLOW_SEED):
    """Qwen-Image-shaped: Qwen2.5-VL text encoder (vision tower unused here), MMDiT, the Qwen-Image 3-D VAE."""
    from diffusers import QwenImagePipeline

    return QwenImagePipeline(**_qwen_vl_parts(work, seed))


def build_tiny_qwen_image_edit(work: Path, seed: int = TINY_FLOW_SEED):
    """Qwen-Image-Edit-2509-shaped: :func:`build_tiny_qwen_image` plus the VL processor for reference images.

    The processor folder holds what a real one holds for images (image-processor config, tokenizer files); it is
    written by ``likeness_after_save`` because transformers cannot save a ``Qwen2VLProcessor`` without a video
    processor, which needs torchvision (see :func:`likeness.models.families.qwen_vl_processor`)."""
    import json

    from diffusers import QwenImageEditPlusPipeline
    from transformers import Qwen2VLImageProcessor

    parts = _qwen_vl_parts(work, seed)
    pipe = QwenImageEditPlusPipeline(processor=None, **parts)

    def after_save(folder: Path) -> None:
        Qwen2VLImageProcessor().save_pretrained(folder / "processor")
        parts["tokenizer"].save_pretrained(folder / "processor")
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text())
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
        index_path.write_text(json.dumps(index, indent=2))

    pipe.likeness_after_save = after_save
    return pipe


FLOW_BUILDERS = {
    "likeness/tiny-flux": ("flux1", build_tiny_flux),
    "likeness/tiny-flux2-klein": ("flux2", build_tiny_flux2_klein),
    "likeness/tiny-sd3": ("sd3", build_tiny_sd3),
    "likeness/tiny-qwen-image": ("qwen-image", build_tiny_qwen_image),
    "likeness/tiny-qwen-image-edit": ("qwen-image", build_tiny_qwen_image_edit),
}
OTHER_BUILDERS.update({model_id: builder for model_id, (_, builder) in FLOW_BUILDERS.items()})
