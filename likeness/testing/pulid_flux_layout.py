"""Random weights in PuLID-FLUX's published layout (``pulid_flux_v0.9.x.safetensors`` + the EVA02-CLIP file),
for tests and ``benchmarks/peers.py`` (no download here).

``pulid_flux_v0.9.x.safetensors`` holds ``pulid_encoder.*`` (PuLID's IDFormer) and ``pulid_ca.<n>.*`` (one
Perceiver cross-attention block per inserted position of the base's FLUX transformer: after every 2nd double and
every 4th single block). Written from the layout of the published modules, so a mistake here or in
:mod:`likeness.methods.peers.pulid_flux`'s checks shows up as a refused file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from likeness.methods.peers.pulid_flux import CA_HEAD_WIDTH, WEIGHT_NAMES, ca_positions
from likeness.testing.peer_layouts import EVA_SIZES, eva_clip_state, random_idformer, save_flat

# Widths per size: IDFormer (dim, queries, depth, heads, MLP width, ID-token width), CA heads, face embedding,
# EVA02-CLIP tower. "published": PuLID-FLUX's IDFormer (1024, 32 queries, 10 layers, 16 heads of 64, MLPs 1024 wide,
# 2048-wide ID tokens), 16 CA heads of 128, antelopev2's 512-d ArcFace, EVA02-CLIP-L-14-336.
SIZES = {
    "tiny": dict(dim=32, queries=8, depth=5, heads=1, hidden=32, id_width=32, ca_heads=1, face_dim=16,
                 eva=EVA_SIZES["tiny"]),
    "published": dict(dim=1024, queries=32, depth=10, heads=16, hidden=1024, id_width=2048, ca_heads=16, face_dim=512,
                      eva=EVA_SIZES["published"]),
}


def pulid_flux_state(transformer_config: dict, *, seed: int = 0, size: str = "tiny", std: float = 0.2,
                     **widths) -> dict[str, torch.Tensor]:
    """A published-layout PuLID-FLUX state dict for a FLUX transformer config (``num_layers``, ``num_single_layers``,
    ``num_attention_heads`` x ``attention_head_dim`` = hidden size). ``widths`` override :data:`SIZES` entries.
    ``std``: the CA projections' spread, large enough that the ID visibly changes a tiny model's images."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    w = {**SIZES[size], **widths}
    dim = w["dim"]
    torch.manual_seed(seed)
    encoder = random_idformer(dim=dim, queries=w["queries"], output=w["id_width"], depth=w["depth"], heads=w["heads"],
                              id_in=w["face_dim"] + w["eva"]["embed_dim"], eva_width=w["eva"]["width"], hidden=w["hidden"])
    state = {f"pulid_encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    hidden = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    inner = w["ca_heads"] * CA_HEAD_WIDTH
    g = torch.Generator().manual_seed(seed + 1)
    for n in range(len(ca_positions(transformer_config["num_layers"], transformer_config["num_single_layers"]))):
        p = f"pulid_ca.{n}."
        for norm, width in (("norm1", w["id_width"]), ("norm2", hidden)):
            state[p + norm + ".weight"] = 1 + 0.1 * torch.randn(width, generator=g)
            state[p + norm + ".bias"] = 0.1 * torch.randn(width, generator=g)
        state[p + "to_q.weight"] = torch.randn(inner, hidden, generator=g) * hidden ** -0.5
        state[p + "to_kv.weight"] = torch.randn(2 * inner, w["id_width"], generator=g) * w["id_width"] ** -0.5
        state[p + "to_out.weight"] = torch.randn(hidden, inner, generator=g) * std * inner ** -0.5
    return state


def write_published_files(folder: Path, base_model, *, seed: int = 0, size: str = "tiny",
                          version: str = "v0.9.1") -> dict[str, str]:
    """``pulid_flux_<version>.safetensors`` for ``base_model``'s transformer (the CA count follows its depth) and
    ``EVA02_CLIP_L_336_psz14_s6B.pt`` in ``folder``; returns the pulid-flux options pointing at them (``version``,
    ``weights``, ``eva_clip``). The caller adds ``face_model_dir``: an ArcFace folder whose embedding is
    ``SIZES[size]["face_dim"]`` wide (16 for the tiny ArcFace of :mod:`likeness.testing.tiny_arcface`; 512 published)."""
    from likeness.methods.peers.pulid import EVA_FILE
    from likeness.methods.peers.common import flux_transformer_config

    if version not in WEIGHT_NAMES:
        raise ValueError(f"version must be one of {', '.join(WEIGHT_NAMES)}, not {version!r}")
    folder = Path(folder)
    config = flux_transformer_config(base_model) if isinstance(base_model, str) else dict(base_model)
    weights = save_flat(pulid_flux_state(config, seed=seed, size=size), folder / WEIGHT_NAMES[version])
    eva = save_flat(eva_clip_state(seed=seed, **SIZES[size]["eva"]), folder / EVA_FILE)
    return {"version": version, "weights": str(weights), "eva_clip": str(eva)}
