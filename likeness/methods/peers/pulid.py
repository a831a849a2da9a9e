"""PuLID (Guo et al., 2024; v1 and v1.1, SDXL): ID tokens from ArcFace + EVA02-CLIP, added to every cross-attention.

Encoding a photo, as the published pipeline does:

1. the largest face's ArcFace embedding (InsightFace's raw ``embedding``, antelopev2 in the recipe; here the
   ``arcface`` backend, ``face_model_dir``);
2. the face aligned onto the FFHQ 5-point template at 512 px (facexlib's ``FaceRestoreHelper`` layout, grey
   border 135/133/132); its parsing whitens background, clothes, hat, ears, earrings, neck and necklace,
   and the rest becomes greyscale (``0.299 R + 0.587 G + 0.114 B``);
3. that picture, resized to 336 px (bicubic) and CLIP-normalised, through EVA02-CLIP-L-14-336's vision
   tower (:mod:`likeness.models.eva_clip`): its L2-normalised CLIP embedding, and the token sequences
   entering blocks 4, 8, 12, 16 and 20 (PuLID's multi-level features);
4. the ID encoder on ``[ArcFace (512) ; EVA embedding (768)]`` and the five feature levels:
   v1 ``IDEncoder`` (an MLP to 5 tokens + per level an MLP of the class token plus the mean of an MLP of
   the patch tokens: 10 tokens) or v1.1 ``IDFormer`` (a Perceiver of 32 queries + the 5 ArcFace tokens
   over ArcFace tokens + each level's mapped features, two layers per level; 32 tokens). The
   unconditional tokens are the encoder's output for zero inputs.

Generation: every cross-attention layer (``attn2``) gets ``id_to_k`` / ``id_to_v`` (published as
``id_adapter_attn_layers.<n>``, numbered over all attention processors as IP-Adapter's are). The ID
tokens, with ``num_zero`` zero tokens appended, are attended to with the text attention's query; the
result is added to the text attention's output before ``to_out`` with ``id_scale``, in one of the
published modes: ``off`` (plain sum), ``v1`` (only the part orthogonal to the text output, "extremely
style") or ``v2`` (fidelity, the default: the text-parallel part is kept in proportion to the attention
the query pays to the first 5 ID tokens). The classifier-free negative half gets the unconditional tokens.

Published files: ``pulid_v1.bin`` / ``pulid_v1.1.safetensors`` (hub ``guozinan/PuLID``; ``id_adapter.*`` +
``id_adapter_attn_layers.*``) and ``EVA02_CLIP_L_336_psz14_s6B.pt`` (hub ``QuanSun/EVA-CLIP``; its
``visual.*`` tensors). Differences from the published pipeline (see docs/methods.md): landmarks come from
the ArcFace backend's detector, not facexlib's RetinaFace; the parsing is a user-given segmentation model
(``parsing_model``, CelebAMask-HQ label names such as ``jonathandinu/face-parsing``) or, without one, the
heuristic face ellipse of :mod:`likeness.segmentation.heuristic` (hair is then whitened too); sampling is
the base pipeline's own scheduler (the published demos use SDXL-Lightning, 4 steps, guidance 1.2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from likeness.methods.base import METHODS, PublishedFile
from likeness.methods.peers.common import (
    CheckpointError,
    TuningFreeMethod,
    arcface_for,
    attention_layout,
    cfg_pair,
    check_layout,
    empty_unet,
    largest_face,
    raw_embedding,
    read_state_dict,
    recorded_file,
    resolve_file,
    save_crop,
    split_prefixes,
    weights_record,
)
from likeness.methods.peers.photomaker import perceive, perceiver_layers
from likeness.models.eva_clip import IMAGE_MEAN, IMAGE_STD, EVAVisionConfig, EVAVisionTower, rope_tables

HUB = "guozinan/PuLID"
EVA_HUB = "QuanSun/EVA-CLIP"
EVA_FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"
WEIGHT_NAMES = {"v1": "pulid_v1.bin", "v1.1": "pulid_v1.1.safetensors"}
TAPS = (4, 8, 12, 16, 20)  # EVA blocks whose inputs PuLID takes (0 < i <= 20, i % 4 == 0)
LEVELS = len(TAPS)
HEAD_WIDTH = 64  # IDFormer's attention heads (16 of 64)
ORTHO_TOKENS = 5  # v2 weighs the text-parallel part by the attention on the first 5 ID tokens, as published
def default_num_zero(version: str, ortho: str) -> int:
    """The published demos' zero tokens: v1 8 in its "fidelity" mode (ortho v2) and 16 in "extremely style"
    (ortho v1); v1.1 20 (its slider's default) in every mode."""
    if version == "v1.1":
        return 20
    return 16 if ortho == "v1" else 8


def num_zero(options: dict) -> int:
    """The artifact's ``num_zero`` option, or the published default for its version and ortho mode."""
    chosen = options.get("num_zero")
    return int(default_num_zero(options["version"], options["ortho"]) if chosen is None else chosen)
ORTHO_MODES = ("v2", "v1", "off")
# facexlib's FFHQ template for a 512 px aligned face (eyes, nose, mouth corners) and its border colour.
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
ALIGN_SIZE = 512
BORDER = (135, 133, 132)
# Parsing labels PuLID whitens (facexlib BiSeNet ids 0, 16, 18, 7, 8, 9, 14, 15), by their CelebAMask-HQ names.
WHITENED = ("background", "cloth", "hat", "l_ear", "r_ear", "ear_r", "neck", "neck_l")


def _mlp(sizes: tuple[int, int, int, int]) -> nn.Sequential:
    """Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear (PuLID's mapping block)."""
    a, b, c, d = sizes
    return nn.Sequential(nn.Linear(a, b), nn.LayerNorm(b), nn.LeakyReLU(), nn.Linear(b, c), nn.LayerNorm(c),
                         nn.LeakyReLU(), nn.Linear(c, d))


def _mlp_sizes(shapes: dict, prefix: str) -> tuple[int, int, int, int]:
    first, second, last = (_need(shapes, f"{prefix}.{i}.weight") for i in (0, 3, 6))
    return first[1], first[0], second[0], last[0]


def _need(shapes: dict, key: str) -> tuple:
    if key not in shapes:
        raise KeyError(key)
    return tuple(shapes[key])


class IDEncoder(nn.Module):
    """PuLID v1's ``id_adapter``: ``body`` maps [ArcFace; EVA embedding] to ``tokens`` tokens; per feature level,
    ``mapping_<i>`` of the class token + mean over patches of ``mapping_patch_<i>``: one token each."""

    version = "v1"

    def __init__(self, body: tuple, mapping: tuple, context: int):
        super().__init__()
        self.context = context
        self.tokens = body[3] // context
        self.body = _mlp(body)
        for i in range(LEVELS):
            setattr(self, f"mapping_{i}", _mlp(mapping))
            setattr(self, f"mapping_patch_{i}", _mlp(mapping))

    @classmethod
    def from_shapes(cls, shapes: dict) -> "IDEncoder":
        mapping = _mlp_sizes(shapes, "mapping_0")
        return cls(_mlp_sizes(shapes, "body"), mapping, mapping[3])

    @property
    def input_width(self) -> int:
        return self.body[0].in_features

    @property
    def feature_width(self) -> int:
        return self.mapping_0[0].in_features

    @property
    def output_width(self) -> int:
        return self.context

    def forward(self, cond: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        tokens = self.body(cond).reshape(-1, self.tokens, self.context)
        levels = [getattr(self, f"mapping_{i}")(h[:, :1]) + getattr(self, f"mapping_patch_{i}")(h[:, 1:]).mean(1, keepdim=True)
                  for i, h in enumerate(hidden)]
        return torch.cat([tokens, *levels], dim=1)


class IDFormer(nn.Module):
    """PuLID v1.1's ``id_adapter``: ``latents`` (queries) + the ArcFace tokens attend, two layers per feature
    level, to [ArcFace tokens ; ``mapping_<i>`` of that level's tokens]; the queries, times ``proj_out``, are the ID tokens."""

    version = "v1.1"

    def __init__(self, dim: int, queries: int, output: int, depth: int, heads: int, ff_hidden: int,
                 id_mapping: tuple, mapping: tuple):
        super().__init__()
        if depth % LEVELS:
            raise ValueError(f"IDFormer depth {depth} is not a multiple of {LEVELS} (one group of layers per feature level)")
        self.dim, self.queries, self.per_level = dim, queries, depth // LEVELS
        self.id_tokens = id_mapping[3] // dim
        self.latents = nn.Parameter(torch.zeros(1, queries, dim))
        self.proj_out = nn.Parameter(torch.zeros(dim, output))
        self.layers = perceiver_layers(dim, heads, HEAD_WIDTH, depth, ff_hidden)
        for i in range(LEVELS):
            setattr(self, f"mapping_{i}", _mlp(mapping))
        self.id_embedding_mapping = _mlp(id_mapping)

    @classmethod
    def from_shapes(cls, shapes: dict) -> "IDFormer":
        _, queries, dim = _need(shapes, "latents")
        output = _need(shapes, "proj_out")[1]
        depth = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("layers.")), default=-1)
        heads = max(1, _need(shapes, "layers.0.0.to_q.weight")[0] // HEAD_WIDTH)
        ff_hidden = _need(shapes, "layers.0.1.1.weight")[0]
        return cls(dim, queries, output, depth, heads, ff_hidden, _mlp_sizes(shapes, "id_embedding_mapping"),
                   _mlp_sizes(shapes, "mapping_0"))

    @property
    def input_width(self) -> int:
        return self.id_embedding_mapping[0].in_features

    @property
    def feature_width(self) -> int:
        return self.mapping_0[0].in_features

    @property
    def output_width(self) -> int:
        return self.proj_out.shape[1]

    def forward(self, cond: torch.Tensor, hidden: list[torch.Tensor]) -> torch.Tensor:
        """``cond``: (B, width) for one photo or (B, photos, width); ``hidden``: per level (B, tokens of all photos, D)."""
        photos = cond.shape[1] if cond.ndim == 3 else 1
        ids = self.id_embedding_mapping(cond).reshape(-1, self.id_tokens * photos, self.dim)
        latents = torch.cat([self.latents.expand(ids.shape[0], -1, -1), ids], dim=1)
        for i in range(LEVELS):
            context = torch.cat([ids, getattr(self, f"mapping_{i}")(hidden[i])], dim=1)
            latents = perceive(self.layers[i * self.per_level:(i + 1) * self.per_level], context, latents)
        return latents[:, :self.queries] @ self.proj_out


def id_encoder_from(path, state: dict, prefix: str = "id_adapter") -> nn.Module:
    """The ID encoder the file's ``<prefix>.*`` shapes describe (v1 ``body.*``, v1.1 ``latents``), checked key by key
    (PuLID-FLUX publishes the same IDFormer as ``pulid_encoder.*``)."""
    from accelerate import init_empty_weights

    kind = IDFormer if "latents" in state else IDEncoder
    given = {k: tuple(v.shape) for k, v in state.items()}
    try:
        with init_empty_weights():
            shapes = {k: tuple(v.shape) for k, v in kind.from_shapes(given).state_dict().items()}
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a valid PuLID {kind.version} checkpoint; missing key {prefix}.{exc.args[0]}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    check_layout(path, {f"{prefix}.{k}": v for k, v in state.items()}, {f"{prefix}.{k}": v for k, v in shapes.items()},
                 f"PuLID {kind.version} {prefix}")
    encoder = kind.from_shapes(given)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def attn_layer_shapes(unet) -> dict[str, tuple]:
    """``id_adapter_attn_layers.<n>.id_to_{k,v}.weight`` shapes for ``unet``: ``n`` counts every attention processor
    (self-attention ones carry no weights), as the published ``nn.ModuleList(unet.attn_processors.values())`` does."""
    shapes = {}
    for index, (_, hidden, cross) in enumerate(attention_layout(unet)):
        if cross is not None:
            for which in ("id_to_k", "id_to_v"):
                shapes[f"id_adapter_attn_layers.{index}.{which}.weight"] = (hidden, cross)
    return shapes


def load_pulid(path: Path, unet, version: str | None = None) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Read and check a published PuLID file against ``unet`` (a meta-device one will do); returns
    (ID encoder with weights, ``{processor index: (id_to_k, id_to_v)}`` state)."""
    state = read_state_dict(path)
    nested = split_prefixes(state, ("id_adapter", "id_adapter_attn_layers"))
    if not nested["id_adapter"] or not nested["id_adapter_attn_layers"]:
        raise CheckpointError(f"{path}: not a PuLID file (needs id_adapter.* and id_adapter_attn_layers.* keys; found "
                              f"{', '.join(sorted(state)[:5]) or 'no keys'})")
    found = "v1.1" if "latents" in nested["id_adapter"] else "v1"
    if version is not None and found != version:
        raise CheckpointError(f"{path}: is a PuLID {found} file, but version {version!r} was asked"
                              + (" (v1.1 files have id_adapter.latents)" if found == "v1.1" else ""))
    cross = unet.config.cross_attention_dim
    widths = {tuple(v.shape)[1] for k, v in nested["id_adapter_attn_layers"].items() if v.ndim == 2}
    if widths and widths != {cross}:
        raise CheckpointError(f"{path}: made for cross-attention dim {sorted(widths)[0]} (another base model); this base "
                              f"model's UNet has cross-attention dim {cross}")
    encoder = id_encoder_from(path, nested["id_adapter"])
    if encoder.output_width != cross:
        raise CheckpointError(f"{path}: ID tokens of width {encoder.output_width}; this base model's UNet takes {cross}")
    attn = {f"id_adapter_attn_layers.{k}": v for k, v in nested["id_adapter_attn_layers"].items()}
    check_layout(path, attn, attn_layer_shapes(unet), "PuLID id_adapter_attn_layers")
    return encoder, attn


# -- EVA02-CLIP --------------------------------------------------------------------------------------------


def visual_state(path: Path, state: dict) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of an EVA-CLIP checkpoint (also under ``module.`` / ``state_dict.`` / ``model.``), or a
    file holding the tower alone."""
    for prefix in ("visual.", "module.visual.", "state_dict.visual.", "model.visual."):
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    if "patch_embed.proj.weight" in state:
        return dict(state)
    raise CheckpointError(f"{path}: not an EVA-CLIP checkpoint (no visual.* keys; found {', '.join(sorted(state)[:5]) or 'no keys'})")


def load_eva(path: Path) -> EVAVisionTower:
    """The EVA02-CLIP vision tower from a published checkpoint, every key and shape checked; rotary tables the file
    carries (``rope.freqs_cos`` ...) must equal the ones computed here."""
    from accelerate import init_empty_weights

    visual = visual_state(path, read_state_dict(path))
    try:
        config = EVAVisionConfig.from_shapes({k: tuple(v.shape) for k, v in visual.items()})
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a valid EVA02-CLIP vision tower; missing key visual.{exc.args[0]}") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: visual.{exc}") from None
    if config.layers <= max(TAPS):
        raise CheckpointError(f"{path}: EVA-CLIP tower of {config.layers} blocks; PuLID takes the inputs of blocks "
                              f"{', '.join(map(str, TAPS))}, so it needs at least {max(TAPS) + 1}")
    cos, sin = rope_tables(config)
    for key in [k for k in visual if k.endswith(("rope.freqs_cos", "rope.freqs_sin"))]:
        table = visual.pop(key)
        ours = cos if key.endswith("cos") else sin
        # A file saved in half precision carries the tables rounded to it (fp16: up to 2.4e-4 off): compare at
        # that precision, one unit in the last place of 1.0 (the tables are cosines and sines).
        atol = torch.finfo(table.dtype).eps if table.dtype in (torch.float16, torch.bfloat16) else 1e-4
        if tuple(table.shape) != tuple(ours.shape) or not torch.allclose(table.float(), ours, atol=atol, rtol=0):
            raise CheckpointError(f"{path}: visual.{key} differs from the rotary table of this tower "
                                  f"(shape {tuple(table.shape)}, expected {tuple(ours.shape)})")
    with init_empty_weights():
        expected = {k: tuple(v.shape) for k, v in EVAVisionTower(config).state_dict().items()}
    check_layout(path, {f"visual.{k}": v for k, v in visual.items()}, {f"visual.{k}": v for k, v in expected.items()},
                 "EVA02-CLIP vision tower")
    tower = EVAVisionTower(config)
    tower.load_state_dict({k: v.float() for k, v in visual.items()}, strict=True)
    return tower.eval()


# -- the face picture EVA-CLIP sees ---------------------------------------------------------------------------


def align_ffhq(image: Image.Image, landmarks: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """The face on facexlib's 512 px FFHQ template (similarity fit of the 5 points, grey border); also the matrix."""
    from likeness.faces.align import similarity_transform

    matrix = similarity_transform(landmarks, FFHQ_TEMPLATE * (ALIGN_SIZE / 512.0))
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    crop = image.convert("RGB").transform((ALIGN_SIZE, ALIGN_SIZE), Image.Transform.AFFINE, tuple(inverse.ravel()),
                                          resample=Image.Resampling.BILINEAR, fillcolor=BORDER)
    return crop, matrix


class FaceParser:
    """Which pixels of the aligned face PuLID whitens: a CelebAMask-HQ-labelled segmentation model when given,
    else the heuristic face ellipse (everything outside it)."""

    def __init__(self, model: str | None):
        self.model = model
        self.segmenter = None
        if model:
            from likeness.segmentation.transformers_backend import TransformersSegmenter

            self.segmenter = TransformersSegmenter(model)
            names = {v.lower(): k for k, v in self.segmenter.id2label.items()}
            self.whitened = [names[n] for n in WHITENED if n in names]
            if "background" not in names:
                raise ValueError(f"parsing model {model!r} has no 'background' label (labels: "
                                 f"{', '.join(sorted(names)[:8])}); PuLID needs CelebAMask-HQ-style face parsing")

    def background(self, crop: Image.Image, face, matrix: np.ndarray) -> np.ndarray:
        """(512, 512) bool: True where the picture turns white."""
        if self.segmenter is not None:
            return np.isin(self.segmenter.label_map(crop), self.whitened)
        from likeness.faces.align import apply_transform
        from likeness.faces.base import Face
        from likeness.segmentation.heuristic import heuristic_masks

        x0, y0, x1, y1 = face.box
        corners = apply_transform(matrix, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64))
        box = (*corners.min(0), *corners.max(0))
        aligned = Face(box=tuple(float(v) for v in box), score=1.0, landmarks=apply_transform(matrix, face.landmarks))
        return heuristic_masks((ALIGN_SIZE, ALIGN_SIZE), aligned).face < 0.5


def face_features_image(crop: Image.Image, background: np.ndarray) -> torch.Tensor:
    """(1, 3, 512, 512) in [0, 1]: white where ``background``, the greyscale face elsewhere."""
    rgb = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    grey = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]).repeat(1, 3, 1, 1)
    return torch.where(torch.from_numpy(background)[None, None], torch.ones_like(grey), grey)


def eva_pixels(picture: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """Resized to the tower's input (bicubic) and CLIP-normalised. PuLID pins torchvision 0.15.2, whose tensor
    ``resize`` does not antialias (the default; the published code's ID tokens); ``antialias=True`` is what the
    same call gives under torchvision >= 0.17 (ID tokens 0.4-0.7% apart)."""
    resized = F.interpolate(picture, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (resized - mean) / std


# -- the attention processors ---------------------------------------------------------------------------------


class IDState:
    """What every ID processor reads during a call: the ID tokens for the batch (None: plain attention) and the mode."""

    def __init__(self, scale: float, num_zero: int, ortho: str):
        self.embedding: torch.Tensor | None = None
        self.scale, self.num_zero, self.ortho = scale, num_zero, ortho


class IDAttnProcessor(nn.Module):
    """A cross-attention processor: diffusers' scaled-dot-product text attention, plus PuLID's ID attention
    (``id_to_k`` / ``id_to_v`` on the ID tokens and ``num_zero`` zero tokens) added before ``to_out``."""

    def __init__(self, hidden: int, cross: int, state: IDState):
        super().__init__()
        self.id_to_k = nn.Linear(cross, hidden, bias=False)
        self.id_to_v = nn.Linear(cross, hidden, bias=False)
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection or hidden_states.ndim != 3:
            raise NotImplementedError("PuLID's ID attention is for SDXL's transformer cross-attention layers")
        batch = hidden_states.shape[0]
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(t):
            return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query = heads(query)
        out = F.scaled_dot_product_attention(query, heads(key), heads(value), attn_mask=attention_mask, dropout_p=0.0,
                                             is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        tokens = self.state.embedding
        if tokens is not None:
            if tokens.shape[0] != batch:
                raise ValueError(f"PuLID ID tokens for a batch of {tokens.shape[0]}, the UNet runs a batch of {batch}")
            out = self.add_identity(out, query, tokens.to(query.dtype), attn.heads, head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor

    def add_identity(self, out, query, tokens, heads, head_dim):
        state = self.state
        if state.num_zero:
            tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], state.num_zero, tokens.shape[-1])], dim=1)
        batch = out.shape[0]
        id_key = self.id_to_k(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        id_value = self.id_to_v(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        id_out = F.scaled_dot_product_attention(query, id_key, id_value, dropout_p=0.0, is_causal=False)
        id_out = id_out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        if state.ortho == "off":
            return out + state.scale * id_out
        dtype = out.dtype
        text, ident = out.float(), id_out.float()
        # The part of the ID output parallel to the text output, per channel over the image tokens. A channel whose
        # text output is all zero (SDXL's zeroed empty negative prompt) has no parallel part (the published 0/0 is NaN).
        energy = (text * text).sum(dim=-2, keepdim=True)
        ratio = (text * ident).sum(dim=-2, keepdim=True) / torch.where(energy > 0, energy, torch.ones_like(energy))
        parallel = torch.where(energy > 0, ratio, torch.zeros_like(ratio)) * text
        if state.ortho == "v1":
            added = ident - parallel
        else:  # v2: unscaled logits, softmax over ID tokens, mean over heads; weight of the first 5 tokens
            weight = (query @ id_key.transpose(-2, -1)).float().softmax(dim=-1).mean(dim=1)
            added = ident + (weight[:, :, :ORTHO_TOKENS].sum(dim=-1, keepdim=True) - 1) * parallel
        return (text + state.scale * added).to(dtype)


def install_processors(unet, attn_state: dict[str, torch.Tensor], state: IDState) -> None:
    """ID processors (with the published weights) on every cross-attention layer; self-attention keeps its processor."""
    processors = {}
    for index, ((name, hidden, cross), current) in enumerate(zip(attention_layout(unet), unet.attn_processors.values())):
        if cross is None:
            processors[name] = current
            continue
        processor = IDAttnProcessor(hidden, cross, state)
        processor.id_to_k.weight.data.copy_(attn_state[f"id_adapter_attn_layers.{index}.id_to_k.weight"])
        processor.id_to_v.weight.data.copy_(attn_state[f"id_adapter_attn_layers.{index}.id_to_v.weight"])
        processors[name] = processor.to(unet.device, unet.dtype)
    unet.set_attn_processor(processors)


# -- the method ----------------------------------------------------------------------------------------------


EVA_PUBLISHED = PublishedFile("eva_clip", EVA_FILE, EVA_HUB, "", "EVA02-CLIP-L-336")  # PuLID's and PuLID-FLUX's


@METHODS.register("pulid")
class PuLID(TuningFreeMethod):
    name = "pulid"
    families = ("sdxl",)
    published_files = tuple(PublishedFile("weights", file, HUB, "", f"PuLID {version}", (("version", version),))
                            for version, file in WEIGHT_NAMES.items()) + (EVA_PUBLISHED,)
    defaults = {
        "version": "v1",  # v1 (IDEncoder, pulid_v1.bin) or v1.1 (IDFormer, pulid_v1.1.safetensors)
        "weights": None,  # the PuLID file: file, folder or hub id (default guozinan/PuLID)
        "eva_clip": None,  # EVA02_CLIP_L_336_psz14_s6B.pt: file, folder or hub id (default QuanSun/EVA-CLIP)
        "id_scale": 0.8,  # the published demos' ID scale
        "num_zero": None,  # zero tokens appended to the ID tokens (default as published: v1 8, or 16 with ortho v1; v1.1 20)
        "resize_antialias": False,  # EVA input resize: False as PuLID's pinned torchvision 0.15.2, True as torchvision >= 0.17
        "ortho": "v2",  # v2 (fidelity, default), v1 ("extremely style"), off (plain sum)
        "face_backend": "arcface",
        "face_model_dir": None,  # InsightFace-style ONNX folder (antelopev2 in the published recipe)
        "parsing_model": None,  # face-parsing segmentation model (hub id / folder, CelebAMask-HQ labels); default heuristic
        "subject": None,
    }

    def prepare(self, base_model, info, options):
        if info.family != "sdxl":
            raise ValueError(f"pulid is published for SDXL only; {base_model!r} is {info.family}")
        version = options["version"]
        if version not in WEIGHT_NAMES:
            raise ValueError(f"pulid: version must be v1 or v1.1, not {version!r}")
        if options["ortho"] not in ORTHO_MODES:
            raise ValueError(f"pulid: ortho must be one of {', '.join(ORTHO_MODES)}, not {options['ortho']!r}")
        backend = arcface_for(self.name, options)
        spec = options["weights"] or HUB
        path = resolve_file(spec, WEIGHT_NAMES[version], what="PuLID weights")
        encoder, _ = load_pulid(path, empty_unet(base_model), version)
        context, eva_record = self.encoding_context(path, encoder, backend, options)
        return context, [weights_record(path, "pulid weights", spec), eva_record]

    def encoding_context(self, path: Path, encoder: nn.Module, backend, options: dict) -> tuple[dict, dict]:
        """What :meth:`encode` needs besides ``encoder`` (read from ``path``): the EVA02-CLIP tower (checked against the
        encoder's widths), the face backend and parser; and the EVA file's manifest record."""
        eva_spec = options["eva_clip"] or EVA_HUB
        eva_path = resolve_file(eva_spec, EVA_FILE, what="EVA02-CLIP checkpoint")
        tower = load_eva(eva_path)
        if tower.config.width != encoder.feature_width:
            raise CheckpointError(f"{path}: maps EVA-CLIP features of width {encoder.feature_width}, but the tower in "
                                  f"{eva_path} is {tower.config.width} wide")
        face_dim = encoder.input_width - tower.config.embed_dim
        if backend.embedding_dim != face_dim:
            raise CheckpointError(f"{path}: takes [face embedding ; EVA-CLIP embedding] of width {encoder.input_width} = "
                                  f"{face_dim} + {tower.config.embed_dim}, but the ArcFace model in "
                                  f"{options['face_model_dir']} gives {backend.embedding_dim}-d")
        eva_record = weights_record(eva_path, "EVA02-CLIP checkpoint", eva_spec)
        eva_record["needed_at_generation"] = False  # it only made the stored embeddings
        context = {"backend": backend, "encoder": encoder, "tower": tower, "parser": FaceParser(options["parsing_model"]),
                   "antialias": bool(options["resize_antialias"])}
        return context, eva_record

    @torch.no_grad()
    def photo_features(self, photo: Path, context: dict, out_dir: Path, name: str, k: int):
        """(id condition (1, face + EVA width), EVA features per level) of one photo."""
        image, face = largest_face(Path(photo), context["backend"], context.get("notes"))
        identity = torch.from_numpy(raw_embedding(face, photo))[None]  # InsightFace's raw ``embedding``, as published
        crop, matrix = align_ffhq(image, face.landmarks)
        picture = face_features_image(crop, context["parser"].background(crop, face, matrix))
        save_crop(Image.fromarray((picture[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)), out_dir, name,
                  f"crop{k}")
        tower = context["tower"]
        embedding, hidden = tower(eva_pixels(picture, tower.config.image_size, context["antialias"]), taps=TAPS)
        embedding = embedding / embedding.norm(dim=1, keepdim=True)
        return torch.cat([identity, embedding], dim=-1), hidden

    @torch.no_grad()
    def encode(self, name, photos, context, options, out_dir):
        encoder = context["encoder"]
        features = [self.photo_features(p, context, out_dir, name, k) for k, p in enumerate(photos)]
        zero_cond = torch.zeros_like(features[0][0])
        zero_hidden = [torch.zeros_like(h) for h in features[0][1]]
        uncond = encoder(zero_cond, zero_hidden)
        if isinstance(encoder, IDFormer):  # v1.1: all photos in one pass (ID tokens of each, features side by side)
            cond = torch.stack([c for c, _ in features], dim=1)
            hidden = [torch.cat([h[level] for _, h in features], dim=1) for level in range(LEVELS)]
            return {"id_embedding": encoder(cond, hidden), "uncond_id_embedding": uncond}
        # v1: the first photo's tokens, then each further photo's ArcFace tokens (the demo's default, id_mix off).
        tokens = [encoder(*features[0])] + [encoder(*f)[:, :encoder.tokens] for f in features[1:]]
        negative = [uncond] + [uncond[:, :encoder.tokens]] * (len(features) - 1)
        return {"id_embedding": torch.cat(tokens, dim=1), "uncond_id_embedding": torch.cat(negative, dim=1)}

    def apply(self, pipe, artifact, manifest):
        options = manifest.config["options"]
        _, attn = load_pulid(recorded_file(manifest, "pulid weights"), pipe.unet, options["version"])
        state = IDState(float(options["id_scale"]), num_zero(options), options["ortho"])
        install_processors(pipe.unet, attn, state)
        pipe.pulid_state = state
        return pipe

    def call(self, personalized, prompts, tensors, **kwargs):
        pipe = personalized.pipe
        options = personalized.manifest.config["options"]
        state = pipe.pulid_state
        state.scale = float(options["id_scale"])  # read per call, so a changed manifest option takes effect
        state.num_zero = num_zero(options)
        state.ortho = options["ortho"]
        guidance = kwargs.get("guidance_scale", 5.0) > 1.0
        state.embedding = cfg_pair(tensors["uncond_id_embedding"], tensors["id_embedding"], len(prompts), guidance,
                                   pipe.unet.dtype, pipe.device)
        try:
            return pipe(prompt=prompts, **kwargs)
        finally:
            state.embedding = None

