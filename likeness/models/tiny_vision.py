"""Tiny vision-language models: real transformers classes (CLIP, OWL-ViT, BLIP VQA) and the LAION aesthetic
head at toy sizes, random weights, built from configs and written with ``save_pretrained``.

They let every text-image metric run offline in seconds (tests, ``likeness bench`` smoke runs). Their numbers
mean nothing. Accepted wherever a model id is: ``likeness/tiny-clip``, ``likeness/tiny-owlvit``,
``likeness/tiny-blip-vqa``, ``likeness/tiny-aesthetic`` (the head for ``likeness/tiny-clip`` embeddings).
The CLIP tokenizers are real ``CLIPTokenizer``s on the vocabulary of ``likeness.models.tiny``; BLIP's is a
real ``BertTokenizer`` on the same words.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from likeness.models.tiny import BOS, EOS, build_vocabulary, cache_root, tiny_words

TINY_VISION_VERSION = "v1"
TINY_IMAGE = 32
TINY_PROJECTION = 16
TINY_VISION_MODELS = ("likeness/tiny-clip", "likeness/tiny-owlvit", "likeness/tiny-blip-vqa", "likeness/tiny-aesthetic")


def _clip_tokenizer(folder: Path, max_length: int):
    import json

    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocabulary(tiny_words())
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length,
                         bos_token=BOS, eos_token=EOS, pad_token=EOS)


def _small(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, **extra)


def build_tiny_clip(folder: Path, seed: int = 0, max_length: int = 77, image_size: int = TINY_IMAGE) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _clip_tokenizer(folder / "_tokenizer", max_length)
    config = CLIPConfig(
        text_config=_small(vocab_size=len(tok), max_position_embeddings=max_length, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=_small(image_size=image_size, patch_size=8),
        projection_dim=TINY_PROJECTION,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    shutil.rmtree(folder / "_tokenizer")
    return folder


def build_tiny_owlvit(folder: Path, seed: int = 0) -> Path:
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    tok = _clip_tokenizer(folder / "_tokenizer", 16)
    config = OwlViTConfig(
        text_config=_small(vocab_size=len(tok), max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=_small(image_size=TINY_IMAGE, patch_size=8),
        projection_dim=32,  # OWL-ViT's class head needs projection_dim == text hidden size (512 at full size)
    )
    torch.manual_seed(seed)
    OwlViTForObjectDetection(config).save_pretrained(folder)
    size = {"height": TINY_IMAGE, "width": TINY_IMAGE}
    OwlViTProcessor(image_processor=OwlViTImageProcessor(size=size, crop_size=size), tokenizer=tok).save_pretrained(folder)
    shutil.rmtree(folder / "_tokenizer")
    return folder


def build_tiny_blip_vqa(folder: Path, seed: int = 0) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    words = [w for w in dict.fromkeys(tiny_words() + ["yes", "no", "is", "there", "the", "a", "?", "'", "s"]) if " " not in w]
    vocab_file = folder / "_vocab.txt"
    vocab_file.write_text("\n".join(specials + words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(vocab_file), bos_token="[DEC]", model_max_length=64)
    ids = tok.convert_tokens_to_ids
    config = BlipConfig(
        text_config=_small(vocab_size=len(tok), encoder_hidden_size=32, max_position_embeddings=64,
                           bos_token_id=ids("[DEC]"), sep_token_id=ids("[SEP]"), pad_token_id=ids("[PAD]")),
        vision_config=_small(image_size=TINY_IMAGE, patch_size=8),
        projection_dim=TINY_PROJECTION,
    )
    torch.manual_seed(seed)
    BlipForQuestionAnswering(config).save_pretrained(folder)
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE, "width": TINY_IMAGE})
    BlipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    vocab_file.unlink()
    return folder


# The LAION aesthetic predictor's Linear layers sit at these indices of its nn.Sequential (the
# published file's keys); vision_language reads real files with the same list.
AESTHETIC_LINEAR_KEYS = (0, 2, 4, 6, 7)


def build_tiny_aesthetic(folder: Path, seed: int = 0, dim: int = TINY_PROJECTION) -> Path:
    """The LAION head's layer layout (keys layers.{0,2,4,6,7}) on ``dim``-d embeddings, as safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    sizes = [(dim, 24), (24, 12), (12, 8), (8, 4), (4, 1)]
    state = {}
    for k, (i, o) in zip(AESTHETIC_LINEAR_KEYS, sizes):
        layer = torch.nn.Linear(i, o)
        state[f"layers.{k}.weight"], state[f"layers.{k}.bias"] = layer.weight.data.clone(), layer.bias.data.clone()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "aesthetic.safetensors"))
    return folder


BUILDERS = {"likeness/tiny-clip": build_tiny_clip, "likeness/tiny-owlvit": build_tiny_owlvit,
            "likeness/tiny-blip-vqa": build_tiny_blip_vqa, "likeness/tiny-aesthetic": build_tiny_aesthetic}


def tiny_vision_path(model_id: str) -> Path:
    """Build once into the likeness cache (atomic rename), then always load from the saved folder."""
    target = cache_root() / "tiny-vision" / TINY_VISION_VERSION / model_id.split("/")[-1]
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    BUILDERS[model_id](staging / "model")
    try:
        (staging / "model").rename(target)
    except OSError:  # another process won the race; its folder is as good as ours
        pass
    shutil.rmtree(staging, ignore_errors=True)
    return target
