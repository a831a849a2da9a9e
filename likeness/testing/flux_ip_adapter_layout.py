"""Random weights in XLabs' FLUX IP-Adapter layout (``XLabs-AI/flux-ip-adapter``), for tests and benchmarks.

Written from the key names diffusers' ``FluxIPAdapterMixin.load_ip_adapter`` reads (``ip_adapter_proj_model.*``,
``double_blocks.<i>.processor.ip_adapter_double_stream_{k,v}_proj.*``), independently of the checks in
:mod:`likeness.methods.peers.flux_ip_adapter`, so a mistake in either shows up as a refused file. The image encoder
(a ``CLIPVisionModelWithProjection``) goes into ``image_encoder/`` beside the file, where the method finds it.

Sizes: ``tiny`` fits ``likeness/tiny-flux`` (a 32-wide CLIP tower projecting to 16); ``published`` has the real
widths (CLIP ViT-L/14: 24 layers, 1024 wide, 224 px, projection 768; 4 image tokens of the base's joint-attention
width, 4096 on FLUX.1) and one IP layer per double-stream block of the given base (19 on FLUX.1 [dev]).
"""

from __future__ import annotations

from pathlib import Path

import torch

from likeness.testing.peer_layouts import clip_vision_encoder, save_flat

ENCODERS = {
    "tiny": dict(hidden=32, projection=16, layers=2, heads=4, image_size=32, patch=8),
    "published": dict(hidden=1024, projection=768, layers=24, heads=16, image_size=224, patch=14, intermediate=4096),
}
# Large enough that the adapter visibly changes a tiny model's image; the published size uses a trained-like scale.
STD = {"tiny": 0.5, "published": 0.02}


def flux_ip_adapter_state(config: dict, *, embed: int, tokens: int = 4, seed: int = 0, std: float = 0.02) -> dict:
    """A flat XLabs-layout state dict for a FLUX transformer with ``config`` (its ``num_layers`` double blocks,
    ``num_attention_heads * attention_head_dim`` wide, ``joint_attention_dim`` context)."""
    g = torch.Generator().manual_seed(seed)
    joint = config["joint_attention_dim"]
    inner = config["num_attention_heads"] * config["attention_head_dim"]

    def rand(*shape):
        return torch.randn(*shape, generator=g) * std

    state = {"ip_adapter_proj_model.proj.weight": rand(tokens * joint, embed),
             "ip_adapter_proj_model.proj.bias": rand(tokens * joint),
             "ip_adapter_proj_model.norm.weight": 1 + rand(joint),
             "ip_adapter_proj_model.norm.bias": rand(joint)}
    for i in range(config["num_layers"]):
        for name in ("ip_adapter_double_stream_k_proj", "ip_adapter_double_stream_v_proj"):
            state[f"double_blocks.{i}.processor.{name}.weight"] = rand(inner, joint)
            state[f"double_blocks.{i}.processor.{name}.bias"] = rand(inner)
    return state


def write_published_files(folder: Path, base_model, *, seed: int = 0, size: str = "tiny",
                          weight_name: str = "ip_adapter.safetensors") -> dict[str, str]:
    """``folder/<weight_name>`` + ``folder/image_encoder/`` for ``base_model`` (a FLUX.1 pipeline id or folder);
    returns the method options that point at them (written once: existing files are kept)."""
    from likeness.methods.peers.common import flux_transformer_config

    if size not in ENCODERS:
        raise ValueError(f"size must be one of {', '.join(ENCODERS)}, not {size!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = folder / "image_encoder"
    if not (encoder / "config.json").exists():
        clip_vision_encoder(encoder, seed=seed, **ENCODERS[size])
    path = folder / weight_name
    if not path.exists():
        state = flux_ip_adapter_state(dict(flux_transformer_config(str(base_model))), embed=ENCODERS[size]["projection"],
                                      seed=seed, std=STD[size])
        save_flat(state, path)
    return {"weights": str(path), "image_encoder": str(encoder)}
