"""Random weights in the peers' published key layouts, for tests and benchmarks (no download here).

Same key names as the published files, sizes given by the caller (scaled down in tests, real size in
``benchmarks/peers.py``), saved in the published container (safetensors, or a torch file like the
published ``.bin``). They load through exactly the code a user's download goes through. Written from
the layouts diffusers' converters read, independently of the checks in :mod:`likeness.methods.peers.ip_adapter`,
so a mistake in either shows up as a refused file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from likeness.methods.peers.common import attention_layout


def _rand(generator, *shape, std: float = 0.02) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * std


def _resampler(g, prefix: str, *, width: int, embed: int, depth: int, heads: int, out: int | None) -> dict:
    inner = 64 * heads
    state = {f"{prefix}proj_in.weight": _rand(g, width, embed), f"{prefix}proj_in.bias": _rand(g, width)}
    for i in range(depth):
        layer = f"{prefix}layers.{i}."
        for norm in ("norm1", "norm2"):
            state[f"{layer}0.{norm}.weight"] = torch.ones(width) + _rand(g, width)
            state[f"{layer}0.{norm}.bias"] = _rand(g, width)
        state[f"{layer}0.to_q.weight"] = _rand(g, inner, width)
        state[f"{layer}0.to_kv.weight"] = _rand(g, 2 * inner, width)
        state[f"{layer}0.to_out.weight"] = _rand(g, width, inner)
        state[f"{layer}1.0.weight"] = torch.ones(width) + _rand(g, width)
        state[f"{layer}1.0.bias"] = _rand(g, width)
        state[f"{layer}1.1.weight"] = _rand(g, 4 * width, width)
        state[f"{layer}1.3.weight"] = _rand(g, width, 4 * width)
    if out is not None:
        state[f"{prefix}proj_out.weight"] = _rand(g, out, width)
        state[f"{prefix}proj_out.bias"] = _rand(g, out)
        state[f"{prefix}norm_out.weight"] = torch.ones(out) + _rand(g, out)
        state[f"{prefix}norm_out.bias"] = _rand(g, out)
    return state


def ip_adapter_state(unet, kind: str, *, embed: int, seed: int = 0, depth: int = 4, heads: int = 1,
                     queries: int = 4, width: int | None = None, face_dim: int = 512, lora_rank: int = 0,
                     std: float = 0.2) -> dict[str, torch.Tensor]:
    """A flat published-layout IP-Adapter state dict for ``unet``.

    ``kind``: ``plain`` (``embed`` = CLIP projection dim), ``resampler`` (Plus / Plus-Face / InstantID;
    ``embed`` = CLIP hidden size or face-embedding size), ``faceid``, ``faceid-plus`` (``embed`` = CLIP
    hidden size, ``face_dim`` = ArcFace size). ``lora_rank`` > 0 adds FaceID's LoRA to every attention layer.
    ``std`` is large enough that the adapter visibly changes a tiny model's images.
    """
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    proj: dict[str, torch.Tensor] = {}
    if kind == "plain":
        proj = {"proj.weight": _rand(g, 4 * cross, embed, std=std), "proj.bias": _rand(g, 4 * cross, std=std),
                "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    elif kind == "resampler":
        width = width or cross
        proj = _resampler(g, "", width=width, embed=embed, depth=depth, heads=heads, out=cross)
        proj["latents"] = torch.randn(1, queries, width, generator=g) / width**0.5
    elif kind == "faceid":
        proj = {"proj.0.weight": _rand(g, 2 * face_dim, face_dim, std=std), "proj.0.bias": _rand(g, 2 * face_dim),
                "proj.2.weight": _rand(g, 4 * cross, 2 * face_dim, std=std), "proj.2.bias": _rand(g, 4 * cross),
                "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    elif kind == "faceid-plus":
        proj = _resampler(g, "perceiver_resampler.", width=cross, embed=embed, depth=depth, heads=heads, out=cross)
        proj.update({"proj.0.weight": _rand(g, 2 * face_dim, face_dim, std=std), "proj.0.bias": _rand(g, 2 * face_dim),
                     "proj.2.weight": _rand(g, 4 * cross, 2 * face_dim, std=std), "proj.2.bias": _rand(g, 4 * cross),
                     "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)})
    else:
        raise ValueError(f"unknown kind {kind!r}")
    state = {f"image_proj.{k}": v for k, v in proj.items()}
    layout = attention_layout(unet)
    key_id = 1
    for name, hidden, layer_cross in layout:
        if layer_cross is not None:
            state[f"ip_adapter.{key_id}.to_k_ip.weight"] = _rand(g, hidden, layer_cross, std=std)
            state[f"ip_adapter.{key_id}.to_v_ip.weight"] = _rand(g, hidden, layer_cross, std=std)
            key_id += 2
    if lora_rank:
        for index, (name, hidden, layer_cross) in enumerate(layout):
            kv_in = layer_cross or hidden
            for proj_name, in_dim in (("to_q", hidden), ("to_k", kv_in), ("to_v", kv_in), ("to_out", hidden)):
                state[f"ip_adapter.{index}.{proj_name}_lora.down.weight"] = _rand(g, lora_rank, in_dim, std=std)
                state[f"ip_adapter.{index}.{proj_name}_lora.up.weight"] = _rand(g, hidden, lora_rank, std=std)
    return state


def save_published(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Save like the published files: flat safetensors, or a torch file nested by top-level prefix (``.bin``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        nested: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            nested.setdefault(head, {})[rest] = value
        torch.save(nested, str(path))
    return path


def clip_vision_encoder(folder: str | Path, *, hidden: int = 32, projection: int = 32, layers: int = 2, heads: int = 4,
                        image_size: int = 32, patch: int = 8, seed: int = 0, intermediate: int | None = None) -> Path:
    """A CLIP vision tower with projection (the ``image_encoder/`` folder of the published repositories),
    saved with ``save_pretrained``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=intermediate or hidden * 4, num_hidden_layers=layers,
                              num_attention_heads=heads, image_size=image_size, patch_size=patch, projection_dim=projection)
    model = CLIPVisionModelWithProjection(config)
    model.save_pretrained(str(folder))
    return Path(folder)


def identitynet(base_model: str, folder: str | Path, *, conditioning_channels: tuple[int, ...] | None = None,
                seed: int = 0, std: float = 0.05) -> Path:
    """An IdentityNet folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) shaped like the
    base model's UNet, with random weights. Built from the UNet's config (the same layout as
    ``ControlNetModel.from_unet``, without a UNet in memory: at SDXL size that is 10 GB saved). A
    ControlNet starts with zero output convolutions (no effect at all), so those are randomised too.
    ``conditioning_channels``: the keypoint-image encoder's widths; its number of stride-2 steps must
    equal the VAE's downsampling (3 for real SDXL, the default; 1 for the tiny models, whose VAE halves)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from likeness.models.loading import resolve_model_path

    config = UNet2DConditionModel.load_config(resolve_model_path(base_model), subfolder="unet")
    torch.manual_seed(seed)
    kwargs = {"conditioning_embedding_out_channels": conditioning_channels} if conditioning_channels else {}
    controlnet = ControlNetModel.from_config(config, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                param.copy_(torch.randn(param.shape, generator=g) * std)
    controlnet.save_pretrained(str(folder))
    return Path(folder)


def photomaker_state(base_model: str, *, hidden: int = 64, layers: int = 2, patch: int = 8, image_size: int = 32,
                     lora_rank: int = 4, seed: int = 0, std: float = 0.05, version: str = "v1",
                     face_dim: int = 512, lora_format: str = "diffusers") -> dict[str, torch.Tensor]:
    """A published-layout PhotoMaker v1 (or v2) state dict (``id_encoder.*`` + ``lora_weights.*``) for ``base_model``
    (SDXL-shaped): the ID halves are as wide as the two text encoders, the LoRA covers every attention
    projection of the UNet. ``lora_format``: ``diffusers`` (``unet.<layer>.lora.down/up.weight``) or
    ``processor`` (diffusers' older attention-processor names, ``unet.<attention>.processor.to_q_lora.down.weight``;
    the published file's LoRA predates peft in diffusers, and ``load_lora_weights`` reads both)."""
    import json

    from transformers import CLIPVisionConfig

    from likeness.methods.peers.common import empty_unet
    from likeness.methods.peers.photomaker import V2_HEAD_WIDTH, IDEncoder, IDEncoderV2
    from likeness.models.loading import resolve_model_path

    folder = resolve_model_path(base_model)
    widths = [json.loads((folder / sub / "config.json").read_text())["hidden_size"] for sub in ("text_encoder", "text_encoder_2")]
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=max(1, hidden // 64), image_size=image_size, patch_size=patch,
                              projection_dim=widths[0])
    if version == "v2":  # v2 adds the face perceiver (heads 128 wide, as published)
        encoder = IDEncoderV2(config, widths[1], face_dim, max(1, sum(widths) // V2_HEAD_WIDTH))
    else:
        encoder = IDEncoder(config, widths[1])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.fuse_module.named_parameters():
            if name.endswith("weight") and param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=g) * (1.0 / param.shape[1] ** 0.5))
    state = {f"id_encoder.{k}": v.contiguous() for k, v in encoder.state_dict_published().items()}
    unet = empty_unet(base_model)
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                          "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")):
            down = torch.randn(lora_rank, module.in_features, generator=g) * std
            up = torch.randn(module.out_features, lora_rank, generator=g) * std
            if lora_format == "processor":
                attention, _, projection = name.removesuffix(".0").rpartition(".")
                prefix = f"lora_weights.unet.{attention}.processor.{projection}_lora"
            elif lora_format == "diffusers":
                prefix = f"lora_weights.unet.{name}.lora"
            else:
                raise ValueError(f"lora_format must be diffusers or processor, not {lora_format!r}")
            state[f"{prefix}.down.weight"], state[f"{prefix}.up.weight"] = down, up
    return state


# EVA02-CLIP vision towers: "tiny" (the defaults of eva_clip_state: 21 blocks, so PuLID's five taps exist) and the
# published EVA02-CLIP-L-14-336.
EVA_SIZES = {
    "tiny": dict(width=32, layers=21, mlp_hidden=48, patch=8, image_size=32, embed_dim=16),
    "published": dict(width=1024, layers=24, mlp_hidden=2730, patch=14, image_size=336, embed_dim=768),
}


def eva_clip_state(*, width: int = 32, layers: int = 21, mlp_hidden: int = 48, patch: int = 8, image_size: int = 32,
                   embed_dim: int = 16, seed: int = 0, rope_tables_inside: bool = True) -> dict[str, torch.Tensor]:
    """A published-layout EVA02-CLIP checkpoint (``EVA02_CLIP_L_336_psz14_s6B.pt``): the vision tower's tensors
    under ``visual.*`` (heads 64 wide, as published; one head below 64), a few text-tower entries and
    ``logit_scale`` (a full CLIP file; PuLID ignores them), and, as a trained tower carries them, the rotary
    tables ``visual.rope.freqs_cos`` / ``freqs_sin``. Published size: width 1024, 24 layers, hidden 2730,
    patch 14, 336 px, embedding 768."""
    from likeness.models.eva_clip import HEAD_WIDTH, EVAVisionConfig, EVAVisionTower, rope_tables

    config = EVAVisionConfig(width=width, layers=layers, heads=max(1, width // HEAD_WIDTH), mlp_hidden=mlp_hidden,
                             patch=patch, image_size=image_size, embed_dim=embed_dim)
    torch.manual_seed(seed)
    tower = EVAVisionTower(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in tower.named_parameters():
            if name in ("cls_token", "pos_embed") or name.endswith(("q_bias", "v_bias")):
                param.copy_(torch.randn(param.shape, generator=g) * 0.02)
            elif name.endswith("bias") and ("norm" in name or "_ln" in name):
                param.copy_(torch.randn(param.shape, generator=g) * 0.02)
    state = {f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}
    if rope_tables_inside:
        cos, sin = rope_tables(config)
        state["visual.rope.freqs_cos"], state["visual.rope.freqs_sin"] = cos, sin
    state["text.token_embedding.weight"] = torch.randn(8, embed_dim, generator=g)
    state["logit_scale"] = torch.tensor(4.6052)
    return state


def random_idformer(*, dim: int, queries: int, output: int, depth: int, heads: int, id_in: int, eva_width: int,
                    hidden: int, tokens: int = 5):
    """PuLID v1.1's / PuLID-FLUX's ``IDFormer`` (fed [face ; EVA embedding] ``id_in`` wide and EVA features ``eva_width``
    wide; ``hidden`` = its MLPs' inner width) initialised from torch's global generator (seed it first), its queries
    and output projection drawn at the spread of the published class's own init."""
    from likeness.methods.peers.pulid import IDFormer

    encoder = IDFormer(dim, queries, output, depth, heads, 4 * dim, (id_in, hidden, hidden, dim * tokens),
                       (eva_width, hidden, hidden, dim))
    with torch.no_grad():
        encoder.latents.copy_(torch.randn(encoder.latents.shape) * dim ** -0.5)
        encoder.proj_out.copy_(torch.randn(encoder.proj_out.shape) * dim ** -0.5)
    return encoder


def pulid_state(unet, *, version: str = "v1", face_dim: int = 16, eva_width: int = 32, eva_embed: int = 16,
                hidden: int = 32, tokens: int = 5, dim: int = 32, queries: int = 8, depth: int = 10, heads: int = 1,
                seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """A published-layout PuLID state dict for ``unet`` (SDXL-shaped): ``id_adapter.*`` (v1 ``IDEncoder`` or v1.1
    ``IDFormer``, fed [face ; EVA embedding] and EVA features ``eva_width`` wide; ``hidden`` = the MLPs' inner
    width, 1024 published) + ``id_adapter_attn_layers.<n>.id_to_{k,v}.weight`` on every cross-attention layer.
    Published sizes: v1 ``IDEncoder`` 1280 -> 1024 -> 1024 -> 5 x 2048 with mappings 1024 -> 2048; v1.1 ``IDFormer``
    dim 1024, 10 layers, 16 heads, 32 queries."""
    from likeness.methods.peers.pulid import IDEncoder, attn_layer_shapes

    cross = unet.config.cross_attention_dim
    width = face_dim + eva_embed
    torch.manual_seed(seed)
    if version == "v1":
        encoder = IDEncoder((width, hidden, hidden, tokens * cross), (eva_width, hidden, hidden, cross), cross)
    elif version == "v1.1":
        encoder = random_idformer(dim=dim, queries=queries, output=cross, depth=depth, heads=heads, id_in=width,
                                  eva_width=eva_width, hidden=hidden, tokens=tokens)
    else:
        raise ValueError(f"version must be v1 or v1.1, not {version!r}")
    state = {f"id_adapter.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    for key, shape in attn_layer_shapes(unet).items():
        state[key] = _rand(g, *shape, std=std)
    return state


def save_flat(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Save a flat state dict as the PuLID and EVA-CLIP files are published: safetensors, or ``torch.save`` of the flat
    dict (``pulid_v1.bin``, ``EVA02_CLIP_L_336_psz14_s6B.pt``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, str(path))
    return path
