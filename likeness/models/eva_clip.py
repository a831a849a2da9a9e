"""EVA02-CLIP's vision tower in plain torch (no timm, no eva_clip, no torchvision).

PuLID encodes the face with the visual half of ``EVA02-CLIP-L-14-336`` (checkpoint
``EVA02_CLIP_L_336_psz14_s6B.pt``, hub ``QuanSun/EVA-CLIP``); its only published loaders need timm and
torchvision, which this project does not allow, so the tower is written here from the published
architecture and loads the checkpoint's ``visual.*`` tensors under their own names:

- ``patch_embed.proj`` (a stride-``patch`` convolution), ``cls_token``, absolute ``pos_embed``
  (1 + grid² rows);
- ``blocks.<i>``: pre-norm transformer blocks (``norm1``/``norm2``, LayerNorm eps 1e-6). Attention has
  separate ``q_proj``/``k_proj``/``v_proj`` without bias plus ``q_bias``/``v_bias`` (k has none), 2-D
  rotary position embedding on the patch tokens (not on the class token), a sub-LayerNorm
  ``inner_attn_ln`` before ``proj``. The MLP is SwiGLU with a sub-LayerNorm:
  ``w3(ffn_ln(silu(w1 x) * w2 x))``;
- ``norm`` on the class token, then ``head`` (width -> CLIP embedding, 1024 -> 768 for L/14).

Rotary embedding (EVA02's "fast" 2-D form): each head of width ``d`` is split in two halves; the first
rotates with the patch's row, the second with its column. In a half of width ``h = d/2`` the pairs of
adjacent channels ``(2j, 2j+1)`` turn by the angle ``pos * theta**(-2j/h)`` (``theta`` = 10000), where
``pos = index * pretrain_grid / grid`` (EVA02-CLIP was pre-trained on a 16x16 grid and the 336 px tower
interpolates its 24 positions onto it). The tables are computed, not stored; a checkpoint that carries
them (``rope.freqs_cos`` / ``freqs_sin``) can be compared with :func:`rope_tables`.

Sizes come from the checkpoint's shapes (:meth:`EVAVisionConfig.from_shapes`; heads are 64 wide as
published), so a scaled-down file in the same layout loads through the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HEAD_WIDTH = 64  # EVA02-CLIP-L: 16 heads of 64
PRETRAIN_GRID = 16  # pt_hw_seq_len of every EVA02-CLIP tower (224 px / 14)
LN_EPS = 1e-6
ROPE_THETA = 10000.0
# OpenAI CLIP's normalisation, which EVA-CLIP keeps.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EVAVisionConfig:
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_hidden: int = 2730  # int(1024 * 2.6667)
    patch: int = 14
    image_size: int = 336
    embed_dim: int = 768
    pretrain_grid: int = PRETRAIN_GRID

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple], head_width: int = HEAD_WIDTH) -> "EVAVisionConfig":
        """The tower's sizes read from a checkpoint's ``{key: shape}`` (keys without the ``visual.`` prefix).
        Raises ``KeyError`` naming the first key it needs and does not find."""

        def shape(key):
            if key not in shapes:
                raise KeyError(key)
            return tuple(shapes[key])

        width, _, patch, _ = shape("patch_embed.proj.weight")
        positions = shape("pos_embed")[1]
        grid = math.isqrt(positions - 1)
        if grid * grid != positions - 1:
            raise ValueError(f"pos_embed has {positions} rows, not 1 + a square number of patches")
        layers = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")), default=-1)
        if layers < 1:
            raise KeyError("blocks.0.*")
        return cls(width=width, layers=layers, heads=max(1, width // head_width),
                   mlp_hidden=shape("blocks.0.mlp.w1.weight")[0], patch=patch, image_size=grid * patch,
                   embed_dim=shape("head.weight")[0])


def rope_tables(config: EVAVisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (grid², head_dim): row-major patches, first half of each head by row, second by column,
    each angle repeated for its pair of adjacent channels."""
    half = config.head_dim // 2
    inverse = ROPE_THETA ** (-torch.arange(0, half, 2, dtype=torch.float32) / half)  # half / 2 frequencies
    positions = torch.arange(config.grid, dtype=torch.float32) * (config.pretrain_grid / config.grid)
    angles = torch.repeat_interleave(positions[:, None] * inverse[None, :], 2, dim=1)  # (grid, half)
    rows = angles[:, None, :].expand(config.grid, config.grid, half)
    cols = angles[None, :, :].expand(config.grid, config.grid, half)
    table = torch.cat([rows, cols], dim=-1).reshape(config.grid * config.grid, 2 * half)
    return table.cos(), table.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of each adjacent channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_pairs(x) * sin


class EVAAttention(nn.Module):
    def __init__(self, config: EVAVisionConfig):
        super().__init__()
        inner = config.heads * config.head_dim
        self.heads = config.heads
        self.q_proj = nn.Linear(config.width, inner, bias=False)
        self.k_proj = nn.Linear(config.width, inner, bias=False)
        self.v_proj = nn.Linear(config.width, inner, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.inner_attn_ln = nn.LayerNorm(inner, eps=LN_EPS)
        self.proj = nn.Linear(inner, config.width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def heads(t):
            return t.view(batch, tokens, self.heads, -1).transpose(1, 2)

        q = heads(F.linear(x, self.q_proj.weight, self.q_bias))
        k = heads(self.k_proj(x))
        v = heads(F.linear(x, self.v_proj.weight, self.v_bias))
        # Rotary embedding on the patch tokens only; the class token (index 0) keeps its features.
        q = torch.cat([q[:, :, :1], apply_rope(q[:, :, 1:], cos, sin).type_as(v)], dim=2)
        k = torch.cat([k[:, :, :1], apply_rope(k[:, :, 1:], cos, sin).type_as(v)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as published
        return self.proj(self.inner_attn_ln(out.transpose(1, 2).reshape(batch, tokens, -1)))


class SwiGLU(nn.Module):
    def __init__(self, config: EVAVisionConfig):
        super().__init__()
        self.w1 = nn.Linear(config.width, config.mlp_hidden)
        self.w2 = nn.Linear(config.width, config.mlp_hidden)
        self.ffn_ln = nn.LayerNorm(config.mlp_hidden, eps=LN_EPS)
        self.w3 = nn.Linear(config.mlp_hidden, config.width)

    def forward(self, x):
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class EVABlock(nn.Module):
    def __init__(self, config: EVAVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=LN_EPS)
        self.attn = EVAAttention(config)
        self.norm2 = nn.LayerNorm(config.width, eps=LN_EPS)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: EVAVisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.width, kernel_size=config.patch, stride=config.patch)

    def forward(self, pixels):
        return self.proj(pixels).flatten(2).transpose(1, 2)


class EVAVisionTower(nn.Module):
    """EVA02-CLIP's visual tower; parameter names are the checkpoint's ``visual.*`` names without the prefix."""

    def __init__(self, config: EVAVisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid * config.grid + 1, config.width))
        self.blocks = nn.ModuleList(EVABlock(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width, eps=LN_EPS)
        self.head = nn.Linear(config.width, config.embed_dim)
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, pixels: torch.Tensor, taps: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(CLIP image embedding (B, embed_dim), [the token sequence entering block i, for i in ``taps``]).

        ``pixels``: (B, 3, image_size, image_size), normalised with :data:`IMAGE_MEAN` / :data:`IMAGE_STD`.
        """
        size = self.config.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(f"EVA-CLIP tower takes {size}x{size} pixels, got {tuple(pixels.shape[-2:])}")
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        cos, sin = self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)
        hidden = []
        for index, block in enumerate(self.blocks):
            if index in taps:
                hidden.append(x)
            x = block(x, cos, sin)
        return self.head(self.norm(x)[:, 0]), hidden
