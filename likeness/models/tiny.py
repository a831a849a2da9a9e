"""Built-in tiny base models: real diffusers/transformers classes at toy sizes.

They exist so that every code path (loading, training, LoRA and textual-inversion artifacts,
generation) runs offline in seconds. Their weights are random: **they make noise, not pictures**.

Two ids are accepted wherever a base model is expected:

- ``likeness/tiny-sd``: shaped like Stable Diffusion 1.x (one CLIP text encoder, DDIM scheduler).
- ``likeness/tiny-sdxl``: shaped like SDXL (two text encoders, ``text_time`` added conditioning).

Sizes follow diffusers' own test models: UNet channels (32, 64), cross-attention 32 per text
encoder, CLIP text hidden size 32 with 5 layers and 4 heads. The tokenizer is a real
``CLIPTokenizer`` on a vocabulary built here from ``tiny_words.txt``: every listed word (common
English, prompt vocabulary, a few hundred first and last names) is one token, so methods that
work on whole-word token embeddings (Celeb Basis) behave as on the real vocabulary.

The pipelines are built deterministically from a seed, written with ``save_pretrained`` into a
cache folder once, and always read back with ``from_pretrained`` so the real loading path runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

TINY_MODELS = {"likeness/tiny-sd": "sd1", "likeness/tiny-sdxl": "sdxl"}
# The flow-matching bases (FLUX.1, FLUX.2 [klein], SD3.5, Qwen-Image): built by likeness.models.tiny_flow.
TINY_MODELS.update({"likeness/tiny-flux": "flux1", "likeness/tiny-flux2-klein": "flux2", "likeness/tiny-sd3": "sd3",
                    "likeness/tiny-qwen-image": "qwen-image", "likeness/tiny-qwen-image-edit": "qwen-image"})
# The tiny base of each family, where something must pick one for a method (the demo, the GPU check). Qwen-Image's is
# the edit model: the only method on that family is the Qwen-Image-Edit editor.
TINY_BASES = {"sd1": "likeness/tiny-sd", "sdxl": "likeness/tiny-sdxl", "flux1": "likeness/tiny-flux",
              "flux2": "likeness/tiny-flux2-klein", "sd3": "likeness/tiny-sd3", "qwen-image": "likeness/tiny-qwen-image-edit"}
# Builders of the other tiny ids, registered by the modules that define them (likeness.models.tiny_flow, imported
# by the likeness.models package).
OTHER_BUILDERS: dict = {}
# Bump when the architecture or vocabulary changes, so stale cache folders are not reused.
TINY_VERSION = "v1"
TINY_SEED = 0
# Native resolution: the tiny VAE downsamples by 2, so 64 px images give 32x32 latents.
TINY_RESOLUTION = 64

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS_FILE = Path(__file__).with_name("tiny_words.txt")


def cache_root() -> Path:
    """Where tiny models are saved: ``$LIKENESS_CACHE`` or ``~/.cache/likeness``."""
    return Path(os.environ.get("LIKENESS_CACHE", Path.home() / ".cache" / "likeness"))


def is_tiny(model_id: str) -> bool:
    return str(model_id) in TINY_MODELS


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2/CLIP convention)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tiny_words() -> list[str]:
    """The whole-token words, deduplicated, in file order."""
    words: dict[str, None] = {}
    for line in WORDS_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        for word in line.split():
            words[word.lower()] = None
    return list(words)


def build_vocabulary(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """CLIP-style ``vocab`` and ``merges`` in which every word of ``words`` is a single token.

    Merges build each word from the right: ``(c[n-2], c[n-1]</w>)``, then ``(c[n-3], ...)``. The
    right side of every merge ends in ``</w>``, and only the last symbol of a word does, so the only
    pair BPE can ever merge is (second-to-last, last). That makes whole-word tokenization
    independent of merge ranks and of the other words in the list.
    """
    symbols = _byte_symbols()
    vocab_tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    seen = set(vocab_tokens)
    for word in words:
        chars = [symbols[b] for b in word.encode("utf-8")]
        suffix = chars[-1] + "</w>"
        for ch in reversed(chars[:-1]):
            merged = ch + suffix
            if merged not in seen:
                merges.append(f"{ch} {suffix}")
                vocab_tokens.append(merged)
                seen.add(merged)
            suffix = merged
    vocab_tokens += [BOS, EOS]
    return {token: i for i, token in enumerate(vocab_tokens)}, merges


def build_tokenizer(folder: Path):
    """Write ``vocab.json`` + ``merges.txt`` into ``folder`` and load a real ``CLIPTokenizer`` from them."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocabulary(tiny_words())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _text_config(tokenizer, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=TINY_RESOLUTION,
    )


def _unet(**family_specific):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        **family_specific,
    )


def _sd_scheduler_config() -> dict:
    # The beta schedule every SD 1.x/2.x/XL checkpoint was trained with.
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        set_alpha_to_one=False,
    )


def build_tiny_sd(tokenizer_dir: Path, seed: int = TINY_SEED):
    """A Stable-Diffusion-1.x-shaped pipeline with random weights (deterministic from ``seed``)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = build_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    unet = _unet(cross_attention_dim=32)
    torch.manual_seed(seed + 1)
    vae = _vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**_sd_scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl(tokenizer_dir: Path, seed: int = TINY_SEED):
    """An SDXL-shaped pipeline: two text encoders (the second with projection) and ``text_time`` conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    unet = _unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 32 (pooled text) + 6 * 8 (size/crop ids)
        cross_attention_dim=64,  # 32 + 32 from the two text encoders
    )
    torch.manual_seed(seed + 1)
    vae = _vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, projection_dim=32))
    scheduler_config = _sd_scheduler_config()
    scheduler_config.pop("clip_sample")
    scheduler_config.pop("set_alpha_to_one")
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**scheduler_config),
        force_zeros_for_empty_prompt=True,
    )


def tiny_model_path(model_id: str) -> Path:
    """Folder holding the saved tiny pipeline ``model_id``; built and saved on first use.

    Written to a temporary folder and renamed into place, so concurrent processes never see a
    half-written model.
    """
    if model_id not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {model_id!r}; known: {', '.join(TINY_MODELS)}")
    return _tiny_model_path(model_id, str(cache_root()))


@lru_cache(maxsize=None)
def _tiny_model_path(model_id: str, root: str) -> Path:
    family = TINY_MODELS[model_id]
    target = Path(root) / "tiny" / f"{model_id.split('/')[-1]}-{TINY_VERSION}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        if family in ("sd1", "sdxl"):
            builder = build_tiny_sdxl if family == "sdxl" else build_tiny_sd
        else:
            builder = OTHER_BUILDERS[model_id]
        pipe = builder(staging / "_tokenizer_src")
        pipe.save_pretrained(staging)
        if getattr(pipe, "likeness_after_save", None) is not None:  # parts save_pretrained cannot write
            pipe.likeness_after_save(staging)
        shutil.rmtree(staging / "_tokenizer_src")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
