"""Random InfiniteYou weights in the published layout (``ByteDance/InfiniteYou``), for tests and benchmarks.

``<folder>/infu_flux_v1.0/<variant>/InfuseNetModel/``: a diffusers ``FluxControlNetModel`` folder (config +
two safetensors shards + their index, as published) whose widths follow the base FLUX transformer, and
``<folder>/infu_flux_v1.0/<variant>/image_proj_model.bin``: ``{"image_proj": {...}}``, the Perceiver
resampler from the face embedding to the ID tokens.

- ``size="tiny"``: InfuseNet with 2 double- and 2 single-stream blocks; a resampler of width 64 (one 64-wide
  head), 8 queries, for a 16-d face embedding (the tiny ArcFace of :mod:`likeness.testing.tiny_arcface`).
- ``size="published"``: the published widths (resampler 1280 wide, 20 heads, 8 queries, 512-d embedding, out to
  the base's text width, 4096 on FLUX.1 [dev]) and InfuseNet's published depth (4 double-, 10 single-stream
  blocks), **capped at the base's depth** (a reduced-depth base gets an InfuseNet no deeper than itself).

Weights are random (seeded): the zero-initialised ControlNet projections get random values too, so the
residuals change the image, and the projections of the ID tokens (``context_embedder``, ``add_k_proj``,
``add_v_proj``) are scaled up 4x, so that the identity changes them measurably (with a default init the 8 ID
tokens move a tiny InfuseNet's residuals by well under 1 %).
"""

from __future__ import annotations

from pathlib import Path

import torch

PUBLISHED_DEPTH = (4, 10)  # InfuseNet's double- / single-stream blocks (DiffSynth-Studio's loader for the published files)
TINY_DEPTH = (2, 2)


def write_published_files(folder: str | Path, base_model, *, seed: int = 0, size: str = "tiny",
                          variant: str = "sim_stage1", face_dim: int | None = None) -> dict[str, str]:
    """Write one variant's InfuseNet folder and ID projection under ``folder`` (the hub snapshot layout);
    returns the ``infiniteyou`` options that point at them (``weights``, ``variant``)."""
    from likeness.methods.peers.common import flux_transformer_config
    from likeness.methods.peers.infiniteyou import INFUSENET_FOLDER, PROJECTION_FILE, RELEASE, VARIANTS

    if size not in ("tiny", "published"):
        raise ValueError(f"size must be 'tiny' or 'published', not {size!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    base = flux_transformer_config(base_model)
    depth = TINY_DEPTH if size == "tiny" else (min(PUBLISHED_DEPTH[0], base["num_layers"]),
                                                 min(PUBLISHED_DEPTH[1], base["num_single_layers"]))
    root = Path(folder) / RELEASE / variant
    infusenet_config = {k: base[k] for k in ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                                            "joint_attention_dim", "pooled_projection_dim", "axes_dims_rope")}
    infusenet_config.update(num_layers=depth[0], num_single_layers=depth[1], guidance_embeds=True)
    write_infusenet(root / INFUSENET_FOLDER, infusenet_config, seed=seed)
    if size == "tiny":
        widths = dict(embed=face_dim or 16, dim=64, heads=1)
    else:
        widths = dict(embed=face_dim or 512, dim=1280, heads=20)
    write_projection(root / PROJECTION_FILE, output=base["joint_attention_dim"], queries=8, seed=seed + 1, **widths)
    return {"weights": str(Path(folder)), "variant": variant}


def write_infusenet(folder: Path, config: dict, seed: int = 0, shards: int = 2) -> Path:
    """A random ``FluxControlNetModel`` saved as diffusers saves it, split into ``shards`` safetensors files."""
    from diffusers import FluxControlNetModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FluxControlNetModel(**config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith(("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder")):
                    param.normal_(0.0, 0.2)  # zero-initialised for training: random here, so residuals flow
                elif name.startswith("context_embedder") or ".add_k_proj." in name or ".add_v_proj." in name:
                    param.mul_(4.0)  # the ID tokens' keys and values: weightier than a default init makes them
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), max_shard_size=max(1, total // shards + total // (4 * shards)))
    return folder


def projection_state(embed: int, dim: int, heads: int, queries: int, output: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The ``image_proj`` state dict of a random resampler (likeness's :class:`IDProjection`, published key names)."""
    from likeness.methods.peers.infiniteyou import IDProjection

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = IDProjection(embed, dim, queries, output, heads)
        with torch.no_grad():
            model.latents.normal_(0.0, dim ** -0.5)  # as the published class initialises its queries
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.1, 0.1)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_projection(path: Path, *, embed: int, dim: int, heads: int, queries: int, output: int, seed: int = 0) -> Path:
    """``image_proj_model.bin`` as published: a torch file holding ``{"image_proj": state_dict}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": projection_state(embed, dim, heads, queries, output, seed)}, str(path))
    return path

