"""HPSv2 and ImageReward from their published checkpoints, on transformers classes: their own packages need
torchvision and timm, which likeness keeps out.

**HPSv2 / HPS v2.1** (hub ``xswu/HPSv2``: ``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt``) is an open_clip
ViT-H-14 whose state dict sits under the checkpoint's ``state_dict`` key. :func:`openclip_to_clip` renames it onto
transformers' ``CLIPModel``: each fused ``attn.in_proj_weight`` is split into q / k / v (in that order), ``proj``
and ``text_projection`` are transposed (open_clip multiplies ``x @ proj``), sizes come from the tensors (GELU,
LayerNorm eps 1e-5: the LAION ViT-H-14 that HPSv2 fine-tunes). Score = cosine(image, prompt) of the
L2-normalised embeddings, without the logit scale, as ``hpsv2.score`` computes it. Images are resized so the
longer side is 224 (bicubic) and padded black to a square, centred (open_clip's ``ResizeMaxSize``, HPSv2's
evaluation transform); prompts use the CLIP tokenizer, 77 tokens.

**ImageReward v1.0** (hub ``THUDM/ImageReward``: ``ImageReward.pt``) is BLIP's ViT-L/16 at 224 px, its BERT-base
text encoder with cross-attention into the image tokens, and a 5-layer linear head. :func:`imagereward_to_blip`
maps it onto ``BlipVisionModel`` (ViT blocks renamed, fused qkv kept) and ``BlipTextModel`` (same names as
BLIP's text encoder). Score = (head(text encoder output at position 0) - 0.16717362830052426) /
1.0333394966054072, the prompt tokenised by bert-base-uncased ([CLS] first, as the published ``score`` passes
it), padded and truncated to 35 tokens; the image resized (shorter side 224, bicubic), centre-cropped and
normalised with CLIP's mean / std.

Checkpoints are read with ``torch.load(weights_only=True)`` (never an arbitrary pickle), in fp32. A file whose
keys or shapes are not the published layout raises :class:`CheckpointError` naming the keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from likeness.models.loading import pick_device
from likeness.models.vision_language import LOADERS, ClipModel, VisionModelError, _batches, _tiny

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072  # ImageReward's published constants
IMAGEREWARD_MAX_TOKENS = 35
HPS_FILES = ("HPS_v2.1_compressed.pt", "HPS_v2_compressed.pt")
IMAGEREWARD_FILES = ("ImageReward.pt",)
HEAD_WIDTH = 64  # BERT, BLIP's ViTs and open_clip text towers
# open_clip vision towers whose head width is not 64 (ViT-H-14: 80, ViT-g-14: 88, ViT-bigG-14: 104) have 16 heads.
OPENCLIP_VISION_HEADS = {1280: 16, 1408: 16, 1664: 16}


class CheckpointError(ValueError):
    """A checkpoint whose keys or shapes are not the published layout; the message names them."""


# --------------------------------------------------------------------------------------------------------
# Finding and reading a checkpoint file
# --------------------------------------------------------------------------------------------------------


def checkpoint_file(role: str, model_id: str, names: tuple[str, ...]) -> Path:
    """A local file, a folder holding one of ``names``, a tiny id, or ``owner/repo[:filename]`` on the hub."""
    tiny = _tiny(model_id)
    repo, _, filename = model_id.partition(":")
    path = tiny if tiny is not None else Path(repo).expanduser()
    if tiny is None and not path.exists():
        if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
            raise VisionModelError(role, model_id, "no such file or folder, and it is not a hub id (owner/repo or owner/repo:filename)")
        from likeness.models.pretrained import hub_file

        return hub_file(repo, filename or names[0], error=lambda reason: VisionModelError(role, model_id, reason))
    if path.is_dir():
        for name in ((filename,) if filename else names):
            if (path / name).is_file():
                return path / name
        found = sorted(p for ext in ("*.pt", "*.pth", "*.bin", "*.safetensors") for p in path.glob(ext))
        if len(found) == 1 and not filename:
            return found[0]
        raise VisionModelError(role, model_id, f"{path} holds none of {', '.join((filename,) if filename else names)}")
    return path


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (under ``state_dict`` when wrapped, ``module.`` prefixes of DDP removed)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a state dict (a {type(obj).__name__})")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return state


def _first(keys, count: int = 6) -> str:
    keys = list(keys)
    return ", ".join(keys[:count]) + (f" and {len(keys) - count} more" if len(keys) > count else "")


def _need(state: dict, key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"missing key {key!r}: not {what}")
    return state[key]


def _layers(state: dict, prefix: str, what: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not found:
        raise CheckpointError(f"no keys {prefix}N.*: not {what}")
    gaps = sorted(set(range(max(found) + 1)) - found)
    if gaps:
        raise CheckpointError(f"layers {gaps} missing under {prefix}: not {what}")
    return max(found) + 1


def _heads(width: int, table: dict[int, int] | None = None) -> int:
    if table and width in table:
        return table[width]
    if width % HEAD_WIDTH:
        raise CheckpointError(f"cannot tell the attention head count of a {width}-wide tower (not a multiple of {HEAD_WIDTH})")
    return width // HEAD_WIDTH


def _assign(model: torch.nn.Module, plan: list, state: dict, what: str, strict_prefixes: tuple[str, ...],
            ignore: tuple[str, ...] = ()) -> torch.nn.Module:
    """Fill a meta-device ``model`` from ``plan`` [(its key, checkpoint key, transform)]: every checkpoint key
    the plan needs must exist, every key under ``strict_prefixes`` must be used, and every shape must match."""
    missing = sorted({src for _, src, _ in plan if src not in state})
    if missing:
        raise CheckpointError(f"{len(missing)} key(s) missing: {_first(missing)} (not {what})")
    used = {src for _, src, _ in plan}
    unexpected = [k for k in state if k.startswith(strict_prefixes) and k not in used and not k.endswith(ignore)]
    if unexpected:
        raise CheckpointError(f"{len(unexpected)} unexpected key(s): {_first(unexpected)} (not the layout of {what})")
    expected = model.state_dict()
    converted, wrong = {}, []
    for dst, src, fn in plan:
        tensor = fn(state[src].float()) if fn else state[src].float()
        if tuple(tensor.shape) != tuple(expected[dst].shape):
            wrong.append(f"{src} {tuple(state[src].shape)} (as {dst} needs {tuple(expected[dst].shape)})")
        converted[dst] = tensor.contiguous()
    if wrong:
        raise CheckpointError(f"{len(wrong)} tensor(s) of unexpected shape: {_first(wrong, 3)} (not {what})")
    left = sorted(set(expected) - set(converted))
    if left:
        raise CheckpointError(f"the converter left {_first(left)} unset")  # a bug here, not in the file
    model.load_state_dict(converted, strict=True, assign=True)
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (position ids) are not in any state dict
            if not name.endswith("position_ids"):
                raise CheckpointError(f"cannot materialise buffer {name}")
            owner = model.get_submodule(name.rpartition(".")[0])
            owner.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(buffer.shape).clone(), persistent=False)
    return model.eval()


# --------------------------------------------------------------------------------------------------------
# HPSv2: open_clip CLIP -> transformers CLIPModel
# --------------------------------------------------------------------------------------------------------

OPENCLIP = "an open_clip CLIP state dict (HPSv2's layout)"


def _openclip_blocks(src: str, dst: str, layers: int) -> list:
    plan = []
    for i in range(layers):
        s, d = f"{src}transformer.resblocks.{i}.", f"{dst}encoder.layers.{i}."
        for j, name in enumerate("qkv"):  # nn.MultiheadAttention's fused projection: rows [q; k; v]
            plan.append((f"{d}self_attn.{name}_proj.weight", s + "attn.in_proj_weight", lambda t, j=j: t.chunk(3, dim=0)[j]))
            plan.append((f"{d}self_attn.{name}_proj.bias", s + "attn.in_proj_bias", lambda t, j=j: t.chunk(3, dim=0)[j]))
        for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            plan += [(f"{d}{ours}.weight", f"{s}{theirs}.weight", None), (f"{d}{ours}.bias", f"{s}{theirs}.bias", None)]
    return plan


def openclip_to_clip(state: dict, tokenizer):
    """A ``CLIPModel`` holding an open_clip CLIP state dict (sizes read from the tensors)."""
    from transformers import CLIPConfig, CLIPModel

    width, _, patch, _ = _need(state, "visual.conv1.weight", OPENCLIP).shape
    positions = _need(state, "visual.positional_embedding", OPENCLIP).shape[0]
    grid = int(round((positions - 1) ** 0.5))
    if grid * grid + 1 != positions:
        raise CheckpointError(f"visual.positional_embedding has {positions} rows: not a class token + a square grid")
    vision_layers = _layers(state, "visual.transformer.resblocks.", OPENCLIP)
    vocab, text_width = _need(state, "token_embedding.weight", OPENCLIP).shape
    text_layers = _layers(state, "transformer.resblocks.", OPENCLIP)
    if len(tokenizer) > vocab:
        raise CheckpointError(f"the tokenizer has {len(tokenizer)} tokens, the checkpoint's embedding only {vocab}")
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=text_width, num_hidden_layers=text_layers,
                         intermediate_size=_need(state, "transformer.resblocks.0.mlp.c_fc.weight", OPENCLIP).shape[0],
                         num_attention_heads=_heads(text_width), max_position_embeddings=_need(state, "positional_embedding", OPENCLIP).shape[0],
                         hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=width, num_hidden_layers=vision_layers, image_size=grid * patch, patch_size=patch,
                           intermediate_size=_need(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", OPENCLIP).shape[0],
                           num_attention_heads=_heads(width, OPENCLIP_VISION_HEADS), hidden_act="gelu", layer_norm_eps=1e-5),
        projection_dim=_need(state, "visual.proj", OPENCLIP).shape[1],
    )
    v, t = "vision_model.", "text_model."
    plan = [(v + "embeddings.class_embedding", "visual.class_embedding", None),
            (v + "embeddings.patch_embedding.weight", "visual.conv1.weight", None),
            (v + "embeddings.position_embedding.weight", "visual.positional_embedding", None),
            (v + "pre_layrnorm.weight", "visual.ln_pre.weight", None), (v + "pre_layrnorm.bias", "visual.ln_pre.bias", None),
            (v + "post_layernorm.weight", "visual.ln_post.weight", None), (v + "post_layernorm.bias", "visual.ln_post.bias", None),
            ("visual_projection.weight", "visual.proj", lambda x: x.t()),
            (t + "embeddings.token_embedding.weight", "token_embedding.weight", None),
            (t + "embeddings.position_embedding.weight", "positional_embedding", None),
            (t + "final_layer_norm.weight", "ln_final.weight", None), (t + "final_layer_norm.bias", "ln_final.bias", None),
            ("text_projection.weight", "text_projection", lambda x: x.t()),
            ("logit_scale", "logit_scale", lambda x: x.reshape(()))]
    plan += _openclip_blocks("visual.", v, vision_layers) + _openclip_blocks("", t, text_layers)
    with torch.device("meta"):
        model = CLIPModel(config)
    return _assign(model, plan, state, OPENCLIP, strict_prefixes=("",), ignore=("attn_mask",))


class PadToSquare:
    """HPSv2's evaluation transform (open_clip ``ResizeMaxSize``): the longer side to ``size`` (bicubic), padded
    black to ``size`` x ``size`` with the image centred, then CLIP's mean / std."""

    def __init__(self, size: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.size, self.mean, self.std = size, np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def one(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        scale = self.size / max(w, h)
        nw, nh = round(w * scale), round(h * scale)
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.BICUBIC)
        canvas = Image.new("RGB", (self.size, self.size), (0, 0, 0))
        canvas.paste(image, ((self.size - nw) // 2, (self.size - nh) // 2))
        return _normalised(canvas, self.mean, self.std)

    def __call__(self, images, return_tensors="pt"):
        return {"pixel_values": torch.stack([self.one(im) for im in images])}


def _normalised(image: Image.Image, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = (np.asarray(image, np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def load_hps(role: str, model_id: str, tokenizer, device=None, batch_size: int = 16) -> ClipModel:
    """An HPSv2 checkpoint as a :class:`ClipModel` (so CLIP-style features and batching apply unchanged).

    ``tokenizer``: a callable giving the CLIP tokenizer, called once the checkpoint is read."""
    path = checkpoint_file(role, model_id, HPS_FILES)
    try:
        state = read_state(path)
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        raise VisionModelError(role, model_id, f"{path}: {exc}") from None
    tokenizer = tokenizer()
    try:
        model = openclip_to_clip(state, tokenizer)
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        raise VisionModelError(role, model_id, f"{path}: {exc}") from None
    size = model.config.vision_config.image_size
    processor = SimpleNamespace(tokenizer=tokenizer, image_processor=PadToSquare(size))
    torch_device = pick_device(device)
    return ClipModel(role, model_id, model.to(torch_device), processor, torch_device, batch_size)


# --------------------------------------------------------------------------------------------------------
# ImageReward: BLIP ViT + BERT with cross-attention + MLP head -> BlipVisionModel, BlipTextModel, linear head
# --------------------------------------------------------------------------------------------------------

IMAGEREWARD = "an ImageReward state dict (blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*)"


def imagereward_to_blip(state: dict):
    """(vision, text, head) holding an ImageReward state dict (sizes read from the tensors)."""
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    from likeness.models.vision_language import AestheticHead

    v, t = "blip.visual_encoder.", "blip.text_encoder."
    width, _, patch, _ = _need(state, v + "patch_embed.proj.weight", IMAGEREWARD).shape
    positions = _need(state, v + "pos_embed", IMAGEREWARD).shape[1]
    grid = int(round((positions - 1) ** 0.5))
    if grid * grid + 1 != positions:
        raise CheckpointError(f"{v}pos_embed has {positions} positions: not a class token + a square grid")
    layers = _layers(state, v + "blocks.", IMAGEREWARD)
    vision_config = BlipVisionConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=_heads(width),
                                     intermediate_size=_need(state, v + "blocks.0.mlp.fc1.weight", IMAGEREWARD).shape[0],
                                     image_size=grid * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-6)
    plan = [("embeddings.class_embedding", v + "cls_token", None), ("embeddings.position_embedding", v + "pos_embed", None),
            ("embeddings.patch_embedding.weight", v + "patch_embed.proj.weight", None),
            ("embeddings.patch_embedding.bias", v + "patch_embed.proj.bias", None),
            ("post_layernorm.weight", v + "norm.weight", None), ("post_layernorm.bias", v + "norm.bias", None)]
    for i in range(layers):
        s, d = f"{v}blocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in (("layer_norm1", "norm1"), ("self_attn.qkv", "attn.qkv"), ("self_attn.projection", "attn.proj"),
                             ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            plan += [(f"{d}{ours}.weight", f"{s}{theirs}.weight", None), (f"{d}{ours}.bias", f"{s}{theirs}.bias", None)]
    with torch.device("meta"):
        vision = BlipVisionModel(vision_config)
    vision = _assign(vision, plan, state, IMAGEREWARD, strict_prefixes=(v,))

    vocab, hidden = _need(state, t + "embeddings.word_embeddings.weight", IMAGEREWARD).shape
    cross = _need(state, t + "encoder.layer.0.crossattention.self.key.weight", IMAGEREWARD).shape[1]
    if cross != width:
        raise CheckpointError(f"the text encoder attends to {cross}-d image tokens, the vision encoder gives {width}-d")
    text_config = BlipTextConfig(
        vocab_size=vocab, hidden_size=hidden, encoder_hidden_size=cross, num_attention_heads=_heads(hidden),
        num_hidden_layers=_layers(state, t + "encoder.layer.", IMAGEREWARD),
        intermediate_size=_need(state, t + "encoder.layer.0.intermediate.dense.weight", IMAGEREWARD).shape[0],
        max_position_embeddings=_need(state, t + "embeddings.position_embeddings.weight", IMAGEREWARD).shape[0],
        hidden_act="gelu", layer_norm_eps=1e-12, is_decoder=True,  # is_decoder builds the cross-attention layers
        pad_token_id=0, bos_token_id=None, sep_token_id=None)
    with torch.device("meta"):
        text = BlipTextModel(text_config, add_pooling_layer=False)
    plan = [(key, t + key, None) for key in text.state_dict() if not key.endswith("position_ids")]  # BLIP's names, unchanged
    text = _assign(text, plan, state, IMAGEREWARD, strict_prefixes=(t,), ignore=("position_ids", "pooler.dense.weight", "pooler.dense.bias"))

    from likeness.models.vision_language import AESTHETIC_LINEAR_KEYS

    for k in AESTHETIC_LINEAR_KEYS:
        _need(state, f"mlp.layers.{k}.weight", IMAGEREWARD), _need(state, f"mlp.layers.{k}.bias", IMAGEREWARD)
    head_state = {k.removeprefix("mlp."): v.float() for k, v in state.items() if k.startswith("mlp.")}
    try:
        head = AestheticHead.from_state_dict(head_state)  # the same Sequential indices (Linear at 0, 2, 4, 6, 7)
    except ValueError as exc:
        raise CheckpointError(f"mlp: {exc} (not {IMAGEREWARD})") from None
    unexpected = [f"mlp.{k}" for k in head_state if not re.fullmatch(r"layers\.[02467]\.(weight|bias)", k)]
    if unexpected:
        raise CheckpointError(f"unexpected key(s) {_first(unexpected)} (not {IMAGEREWARD})")
    if head.linears[0].in_features != hidden:
        raise CheckpointError(f"mlp.layers.0 takes {head.linears[0].in_features}-d input, the text encoder gives {hidden}-d")
    return vision, text, head


class CenterCrop:
    """ImageReward's transform: shorter side to ``size`` (bicubic; the longer one truncated as torchvision does),
    centre crop ``size`` x ``size``, RGB, CLIP's mean / std."""

    def __init__(self, size: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.size, self.mean, self.std = size, np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def one(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_long = int(self.size * long / short)
        nw, nh = (self.size, new_long) if w <= h else (new_long, self.size)
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size)).convert("RGB")
        return _normalised(image, self.mean, self.std)

    def __call__(self, images) -> torch.Tensor:
        return torch.stack([self.one(im) for im in images])


class ImageRewardModel:
    """ImageReward's raw head output for (image, prompt) pairs, batched; the metric applies the published
    normalisation. Each image is encoded once."""

    def __init__(self, role, model_id, vision, text, head, tokenizer, device, batch_size: int = 16):
        self.role, self.model_id, self.vision, self.text, self.head = role, model_id, vision, text, head
        self.tokenizer, self.device, self.batch_size = tokenizer, device, batch_size
        self.max_tokens = IMAGEREWARD_MAX_TOKENS
        self.preprocess = CenterCrop(vision.config.image_size)
        self.image_calls = 0
        self.images_encoded = 0

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    @torch.no_grad()
    def raw_scores(self, images: list, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """Head outputs (before normalisation) and, per prompt, whether it was cut to 35 tokens."""
        truncated = [self.token_count(t) > self.max_tokens for t in texts]
        out = []
        for chunk in _batches(list(zip(images, texts)), self.batch_size):
            pixels = self.preprocess([im for im, _ in chunk]).to(self.device)
            image_tokens = self.vision(pixel_values=pixels).last_hidden_state
            self.image_calls += 1
            self.images_encoded += len(chunk)
            tokens = self.tokenizer([text for _, text in chunk], padding="max_length", truncation=True,
                                    max_length=self.max_tokens, return_tensors="pt").to(self.device)
            hidden = self.text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                               encoder_hidden_states=image_tokens, is_decoder=False).last_hidden_state
            out.append(self.head(hidden[:, 0, :].float())[:, 0].cpu().numpy())
        return (np.concatenate(out) if out else np.zeros(0, np.float32)), truncated


def blip_tokenizer(tokenizer):
    """bert-base-uncased with the two tokens BLIP adds ([DEC] as bos, [ENC]); normal prompts never use them."""
    if tokenizer.convert_tokens_to_ids("[DEC]") == tokenizer.unk_token_id:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if tokenizer.convert_tokens_to_ids("[ENC]") == tokenizer.unk_token_id:
        tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    return tokenizer


def load_imagereward(role: str, model_id: str, tokenizer, device=None, batch_size: int = 16) -> ImageRewardModel:
    """``tokenizer``: a callable giving bert-base-uncased, called once the checkpoint is read."""
    path = checkpoint_file(role, model_id, IMAGEREWARD_FILES)
    try:
        vision, text, head = imagereward_to_blip(read_state(path))
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        raise VisionModelError(role, model_id, f"{path}: {exc}") from None
    tokenizer = blip_tokenizer(tokenizer())
    if len(tokenizer) > text.config.vocab_size:
        raise VisionModelError(role, model_id, f"its tokenizer has {len(tokenizer)} tokens, the checkpoint's embedding "
                                               f"only {text.config.vocab_size}")
    torch_device = pick_device(device)
    return ImageRewardModel(role, model_id, vision.to(torch_device), text.to(torch_device), head.to(torch_device),
                            tokenizer, torch_device, batch_size)


def load_tokenizer(role: str, model_id: str, device=None, batch_size: int | None = None):
    """A tokenizer by hub id, local folder or tiny id (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    from likeness.models.pretrained import load_pretrained

    return load_pretrained(AutoTokenizer, model_id, need=None, error=lambda reason: VisionModelError(role, model_id, reason))


LOADERS.update({"hps": load_hps, "imagereward": load_imagereward,
                "hps-tokenizer": load_tokenizer, "imagereward-tokenizer": load_tokenizer})
