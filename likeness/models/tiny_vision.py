"""Tiny vision-language models: real transformers classes (CLIP, OWL-ViT, BLIP VQA) and the LAION aesthetic
head at toy sizes, random weights, built from configs and written with ``save_pretrained``.

They let every text-image metric run offline in seconds (tests, ``likeness bench`` smoke runs). Their numbers
mean nothing. Accepted wherever a model id is: ``likeness/tiny-clip``, ``likeness/tiny-clip-vision`` (the image
encoder of PhotoVerse and StellarNet on the tiny bases), ``likeness/tiny-owlvit``,
``likeness/tiny-blip-vqa``, ``likeness/tiny-aesthetic`` (the head for ``likeness/tiny-clip`` embeddings),
``likeness/tiny-hps`` and ``likeness/tiny-imagereward`` (checkpoints in the published HPSv2 / ImageReward key
layouts, see ``likeness.models.reward_models``, with their tokenizers beside them).
The CLIP tokenizers are real ``CLIPTokenizer``s on the vocabulary of ``likeness.models.tiny``; BLIP's is a
real ``BertTokenizer`` on the same words.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import torch

from likeness.models.tiny import BOS, EOS, build_vocabulary, cache_root, tiny_words

TINY_VISION_VERSION = "v1"
TINY_IMAGE = 32
TINY_PROJECTION = 16
TINY_VISION_MODELS = ("likeness/tiny-clip", "likeness/tiny-owlvit", "likeness/tiny-blip-vqa", "likeness/tiny-aesthetic",
                      "likeness/tiny-hps", "likeness/tiny-imagereward", "likeness/tiny-qwen-vl")


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


def build_tiny_clip_vision(folder: Path, seed: int = 0) -> Path:
    """A ``CLIPVisionModel`` alone (6 layers, so PhotoVerse's 5 feature layers are distinct) with its image
    processor: the image encoder of the encoder-based methods on the tiny bases."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**{**_small(image_size=TINY_IMAGE, patch_size=8), "num_hidden_layers": 6},
                                     projection_dim=TINY_PROJECTION)).save_pretrained(folder)
    size = {"shortest_edge": TINY_IMAGE}
    CLIPImageProcessor(size=size, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}).save_pretrained(folder)
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


# --------------------------------------------------------------------------------------------------------
# The published HPSv2 and ImageReward key layouts, at any size (tiny for tests, real size for the benchmark)
# --------------------------------------------------------------------------------------------------------


def _random_state(shapes: dict[str, tuple], seed: int, std: float) -> dict[str, torch.Tensor]:
    """Random tensors for a key -> shape table: norms' weights near 1, everything else N(0, std)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[-1]).expand(shape).clone()
            continue
        t = torch.randn(shape, generator=g) * std
        is_norm = re.search(r"(^|\.)(ln_\w+|norm\d?|LayerNorm)\.weight$", key) is not None
        state[key] = 1.0 + t if is_norm else t
    return state


def openclip_shapes(width=1280, layers=32, patch=14, image_size=224, text_width=1024, text_layers=24,
                    context=77, vocab=49408, embed=1024, mlp_ratio=4) -> dict[str, tuple]:
    """Key -> shape of an open_clip CLIP state dict (the layout of HPSv2's checkpoints; defaults: ViT-H-14)."""
    def blocks(prefix, w, n):
        out = {}
        for i in range(n):
            p = f"{prefix}transformer.resblocks.{i}."
            out.update({p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "attn.in_proj_weight": (3 * w, w),
                        p + "attn.in_proj_bias": (3 * w,), p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
                        p + "ln_2.weight": (w,), p + "ln_2.bias": (w,), p + "mlp.c_fc.weight": (mlp_ratio * w, w),
                        p + "mlp.c_fc.bias": (mlp_ratio * w,), p + "mlp.c_proj.weight": (w, mlp_ratio * w), p + "mlp.c_proj.bias": (w,)})
        return out

    grid = image_size // patch
    shapes = {"visual.class_embedding": (width,), "visual.positional_embedding": (grid * grid + 1, width),
              "visual.proj": (width, embed), "visual.conv1.weight": (width, 3, patch, patch),
              "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,)}
    shapes.update(blocks("visual.", width, layers))
    shapes.update({"visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,)})
    shapes.update({"positional_embedding": (context, text_width), "text_projection": (text_width, embed),
                   "logit_scale": (), "token_embedding.weight": (vocab, text_width)})
    shapes.update(blocks("", text_width, text_layers))
    shapes.update({"ln_final.weight": (text_width,), "ln_final.bias": (text_width,)})
    return shapes


def imagereward_shapes(width=1024, layers=24, patch=16, image_size=224, text_width=768, text_layers=12,
                       vocab=30524, positions=512, head=(1024, 128, 64, 16), mlp_ratio=4) -> dict[str, tuple]:
    """Key -> shape of ImageReward.pt (BLIP ViT-L/16 + BERT-base with cross-attention + the MLP head)."""
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    grid = image_size // patch
    shapes = {v + "cls_token": (1, 1, width), v + "pos_embed": (1, grid * grid + 1, width),
              v + "patch_embed.proj.weight": (width, 3, patch, patch), v + "patch_embed.proj.bias": (width,)}
    for i in range(layers):
        p = f"{v}blocks.{i}."
        shapes.update({p + "norm1.weight": (width,), p + "norm1.bias": (width,), p + "attn.qkv.weight": (3 * width, width),
                       p + "attn.qkv.bias": (3 * width,), p + "attn.proj.weight": (width, width), p + "attn.proj.bias": (width,),
                       p + "norm2.weight": (width,), p + "norm2.bias": (width,), p + "mlp.fc1.weight": (mlp_ratio * width, width),
                       p + "mlp.fc1.bias": (mlp_ratio * width,), p + "mlp.fc2.weight": (width, mlp_ratio * width),
                       p + "mlp.fc2.bias": (width,)})
    shapes.update({v + "norm.weight": (width,), v + "norm.bias": (width,)})
    shapes.update({t + "embeddings.position_ids": (1, positions), t + "embeddings.word_embeddings.weight": (vocab, text_width),
                   t + "embeddings.position_embeddings.weight": (positions, text_width),
                   t + "embeddings.LayerNorm.weight": (text_width,), t + "embeddings.LayerNorm.bias": (text_width,)})
    h, inter = text_width, mlp_ratio * text_width
    for i in range(text_layers):
        p = f"{t}encoder.layer.{i}."
        for part, kv in (("attention", h), ("crossattention", width)):
            shapes.update({f"{p}{part}.self.query.weight": (h, h), f"{p}{part}.self.query.bias": (h,),
                           f"{p}{part}.self.key.weight": (h, kv), f"{p}{part}.self.key.bias": (h,),
                           f"{p}{part}.self.value.weight": (h, kv), f"{p}{part}.self.value.bias": (h,),
                           f"{p}{part}.output.dense.weight": (h, h), f"{p}{part}.output.dense.bias": (h,),
                           f"{p}{part}.output.LayerNorm.weight": (h,), f"{p}{part}.output.LayerNorm.bias": (h,)})
        shapes.update({p + "intermediate.dense.weight": (inter, h), p + "intermediate.dense.bias": (inter,),
                       p + "output.dense.weight": (h, inter), p + "output.dense.bias": (h,),
                       p + "output.LayerNorm.weight": (h,), p + "output.LayerNorm.bias": (h,)})
    # BLIP's contrastive projections travel in the file; ImageReward's score does not use them.
    shapes.update({"blip.vision_proj.weight": (256, width), "blip.vision_proj.bias": (256,),
                   "blip.text_proj.weight": (256, text_width), "blip.text_proj.bias": (256,)})
    sizes = (text_width,) + tuple(head) + (1,)
    for k, (i, o) in zip(AESTHETIC_LINEAR_KEYS, zip(sizes[:-1], sizes[1:])):  # same Sequential indices as LAION's
        shapes.update({f"mlp.layers.{k}.weight": (o, i), f"mlp.layers.{k}.bias": (o,)})
    return shapes


def save_hps_checkpoint(path: Path, shapes: dict, seed: int = 0, std: float = 0.05, dtype=torch.float32) -> Path:
    """As HPSv2 publishes it: ``torch.save({"state_dict": open_clip state dict})``."""
    state = {k: v.to(dtype) for k, v in _random_state(shapes, seed, std).items()}
    if "logit_scale" in state:
        state["logit_scale"] = torch.tensor(4.6052, dtype=dtype)  # log(100), CLIP's trained value
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, path)
    return path


def save_imagereward_checkpoint(path: Path, shapes: dict, seed: int = 0, std: float = 0.05) -> Path:
    """As ImageReward publishes it: ``torch.save(state_dict)`` of its whole model (blip.* + mlp.*)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_random_state(shapes, seed, std), path)
    return path


def bert_tokenizer(folder: Path, words: list[str] | None = None):
    """A real ``BertTokenizer`` (uncased) on a small vocabulary, saved with ``save_pretrained``."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = words or [w for w in dict.fromkeys(tiny_words() + [",", ".", "'", "s"]) if " " not in w]
    vocab_file = folder / "_vocab.txt"
    vocab_file.write_text("\n".join(specials + words) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(vocab_file), model_max_length=512)
    tok.save_pretrained(folder)
    vocab_file.unlink()
    return tok


TINY_HPS = dict(width=128, layers=2, patch=8, image_size=32, text_width=128, text_layers=2, context=77, embed=16)
TINY_IMAGEREWARD = dict(width=128, layers=2, patch=8, image_size=32, text_width=128, text_layers=2, positions=40,
                        head=(24, 12, 8, 4))


def build_tiny_hps(folder: Path, seed: int = 0) -> Path:
    """``HPS_v2.1_compressed.pt`` in open_clip's layout at toy size (2 heads a tower) + a CLIP tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = _clip_tokenizer(folder / "_tokenizer", 77)
    tok.save_pretrained(folder)
    shutil.rmtree(folder / "_tokenizer")
    save_hps_checkpoint(folder / "HPS_v2.1_compressed.pt", openclip_shapes(vocab=len(tok), **TINY_HPS), seed)
    return folder


def build_tiny_imagereward(folder: Path, seed: int = 0) -> Path:
    """``ImageReward.pt`` in its published layout at toy size (2 heads a tower) + a BERT tokenizer."""
    tok = bert_tokenizer(folder)
    # BLIP adds [DEC] and [ENC] to bert-base-uncased: the published embedding has 30522 + 2 rows.
    save_imagereward_checkpoint(folder / "ImageReward.pt", imagereward_shapes(vocab=len(tok) + 2, **TINY_IMAGEREWARD), seed)
    return folder


def build_tiny_qwen_vl(folder: Path, seed: int = 0) -> Path:
    """The judge's tiny Qwen2.5-VL (``likeness.models.tiny_judge``)."""
    from likeness.models.tiny_judge import build_tiny_qwen_vl as build

    return build(folder, seed)


BUILDERS = {"likeness/tiny-clip": build_tiny_clip, "likeness/tiny-owlvit": build_tiny_owlvit,
            "likeness/tiny-blip-vqa": build_tiny_blip_vqa, "likeness/tiny-aesthetic": build_tiny_aesthetic,
            "likeness/tiny-hps": build_tiny_hps, "likeness/tiny-imagereward": build_tiny_imagereward,
            "likeness/tiny-qwen-vl": build_tiny_qwen_vl}


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


# The image encoder of the encoder-based methods (PhotoVerse, StellarNet) on the tiny bases.
TINY_VISION_MODELS += ("likeness/tiny-clip-vision",)
BUILDERS["likeness/tiny-clip-vision"] = build_tiny_clip_vision
