"""Golden outputs of PuLID's own FLUX code (ToTheBeginning/PuLID at commit 1aa2fc7), for ``tests/test_pulid_flux.py``.
Run by hand, never by CI (it needs the reference code and a side environment):

    # the reference code, a work tree of it at the recorded commit:
    git clone https://github.com/ToTheBeginning/PuLID /tmp/pulid-ref && git -C /tmp/pulid-ref checkout 1aa2fc7df4bf51080df39f355f9abdc1cbfefbaa
    #   (or from a bare mirror: git --git-dir=<mirror> archive 1aa2fc7 | tar -x -C /tmp/pulid-ref)
    # a side environment with what its FLUX model and encoder modules import:
    python3.11 -m venv /work/refenv-pulidflux
    /work/refenv-pulidflux/bin/pip install torch==2.13.0 einops safetensors numpy
    # then, from the repository root:
    /work/refenv-pulidflux/bin/python tests/golden/make_pulid_flux_goldens.py --reference-src /tmp/pulid-ref

What it runs, unchanged: ``flux/model.py``'s ``Flux`` (its forward inserts ``pulid_ca[n]`` after double blocks
``i % pulid_double_interval == 0`` and single blocks ``i % pulid_single_interval == 0``, on the image tokens, times
``id_weight``), ``flux/sampling.py``'s ``denoise`` (the ``start_step`` gating: ``id`` is passed from step
``start_step`` on) and ``pulid/encoders_transformer.py``'s ``IDFormer`` and ``PerceiverAttentionCA``. Not imported:
``pulid/pipeline_flux.py`` (face detection, parsing, EVA-CLIP: insightface, facexlib, cv2, torchvision; the SDXL
goldens cover the EVA tower) -- its ``pulid_ca`` count formula is repeated below and checked. Stubbed:
``flux.modules.conditioner`` (imported by ``flux/sampling.py`` for a type only; it needs transformers' T5/CLIP,
which ``denoise`` does not use). No torchvision shim is needed: no torchvision call is on this path.

Reduced size, seeded random weights in the published layouts:
- FLUX (BFL layout, ``flux_bfl.safetensors``): hidden 32 = 2 heads of 16, axes (4, 6, 6), 3 double + 5 single
  blocks (so the ID blocks sit after double 0, 2 and single 0, 4: 4 blocks), 8 latent channels, context 20, vec 12,
  guidance embedding on.
- PuLID-FLUX (``pulid_flux_v0.9.1.safetensors``: ``pulid_encoder.*`` + ``pulid_ca.<n>.*``, saved from the modules the
  reference's ``load_pretrain`` loads with ``strict=True``): ``IDFormer(dim=32, depth=5, dim_head=64, heads=1,
  num_id_token=5, num_queries=8, output_dim=48)``. The reference hard-codes its MLPs' widths (1280 -> 1024 and
  1024 -> 1024 -> dim); here its ``id_embedding_mapping`` and ``mapping_<i>`` are replaced by the same Sequential
  structure at reduced widths (28 = 16 face + 12 EVA -> 40 -> 40 -> 5 x 32; EVA width 24 -> 40 -> 40 -> 32); its
  forward is untouched. ``PerceiverAttentionCA(dim=32, dim_head=128, heads=1, kv_dim=48)``.

Outputs (``tests/golden/pulid_flux/``): the two weight files, ``cases.safetensors`` (inputs and outputs) and
``meta.json`` (commit, sizes, timesteps, versions).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

COMMIT = "1aa2fc7df4bf51080df39f355f9abdc1cbfefbaa"  # ToTheBeginning/PuLID, "support FLUX.1-Krea-dev"
OUT = Path(__file__).resolve().parent / "pulid_flux"
SEED = 0
FLUX = dict(in_channels=8, vec_in_dim=12, context_in_dim=20, hidden_size=32, mlp_ratio=4.0, num_heads=2, depth=3,
            depth_single_blocks=5, axes_dim=[4, 6, 6], theta=10_000, qkv_bias=True, guidance_embed=True)
FACE, EVA_EMBED, EVA_WIDTH, MLP = 16, 12, 24, 40
ID_DIM, ID_OUT, QUERIES = 32, 48, 8
ID_WEIGHT, START_STEP, STEPS, GUIDANCE = 0.8, 1, 3, 4.0
IMG_GRID, TXT_LEN = 4, 6


def _mlp(a: int, b: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(a, b), nn.LayerNorm(b), nn.LeakyReLU(), nn.Linear(b, b), nn.LayerNorm(b),
                         nn.LeakyReLU(), nn.Linear(b, c))


def randomise(module: nn.Module, g: torch.Generator) -> None:
    """Every parameter drawn from ``g`` in name order: norms' scales 1 + N(0, 0.1^2), other vectors N(0, 0.1^2),
    matrices N(0, 1/fan_in), IDFormer's latents / proj_out N(0, 1/dim) (its own init's spread)."""
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith(("latents", "proj_out")) and p.ndim != 1:
                p.copy_(torch.randn(p.shape, generator=g) * ID_DIM ** -0.5)
            elif p.ndim == 1 and ("norm" in name or name.endswith("scale")) and name.endswith(("weight", "scale")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-src", required=True, help="a work tree of ToTheBeginning/PuLID at commit " + COMMIT[:7])
    args = parser.parse_args()
    src = Path(args.reference_src).resolve()
    sys.path.insert(0, str(src))
    conditioner = types.ModuleType("flux.modules.conditioner")  # the stub: a type annotation of flux/sampling.py only
    conditioner.HFEmbedder = type("HFEmbedder", (), {})
    sys.modules["flux.modules.conditioner"] = conditioner
    from flux.model import Flux, FluxParams
    from flux.sampling import denoise, get_schedule
    from pulid.encoders_transformer import IDFormer, PerceiverAttentionCA

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    model = Flux(FluxParams(**FLUX)).eval()
    randomise(model, g)
    # pulid/pipeline_flux.py's count, with this model's depths: depth // 2 + single // 4 (+1 for each remainder).
    double_interval, single_interval = 2, 4
    num_ca = FLUX["depth"] // double_interval + FLUX["depth_single_blocks"] // single_interval
    num_ca += int(FLUX["depth"] % double_interval != 0) + int(FLUX["depth_single_blocks"] % single_interval != 0)
    encoder = IDFormer(dim=ID_DIM, depth=5, dim_head=64, heads=1, num_id_token=5, num_queries=QUERIES, output_dim=ID_OUT)
    for i in range(5):
        setattr(encoder, f"mapping_{i}", _mlp(EVA_WIDTH, MLP, ID_DIM))
    encoder.id_embedding_mapping = _mlp(FACE + EVA_EMBED, MLP, ID_DIM * 5)
    pulid_ca = nn.ModuleList([PerceiverAttentionCA(dim=FLUX["hidden_size"], dim_head=128, heads=1, kv_dim=ID_OUT)
                              for _ in range(num_ca)])
    randomise(encoder, g)
    randomise(pulid_ca, g)
    encoder.eval(), pulid_ca.eval()
    model.pulid_ca, model.pulid_double_interval, model.pulid_single_interval = pulid_ca, double_interval, single_interval

    # Fixed inputs: [ArcFace ; L2-normalised EVA embedding] and five EVA feature levels (class + 9 patch tokens).
    arcface = torch.randn(1, FACE, generator=g) * 20
    eva = torch.randn(1, EVA_EMBED, generator=g)
    id_cond = torch.cat([arcface, eva / eva.norm(dim=1, keepdim=True)], dim=-1)
    hidden = [torch.randn(1, 10, EVA_WIDTH, generator=g) for _ in range(5)]
    image_tokens = torch.randn(1, IMG_GRID * IMG_GRID, FLUX["hidden_size"], generator=g)
    img = torch.randn(1, IMG_GRID * IMG_GRID, FLUX["in_channels"], generator=g)
    img_ids = torch.zeros(IMG_GRID, IMG_GRID, 3)
    img_ids[..., 1] += torch.arange(IMG_GRID)[:, None]
    img_ids[..., 2] += torch.arange(IMG_GRID)[None, :]
    img_ids = img_ids.reshape(1, -1, 3)
    txt = torch.randn(1, TXT_LEN, FLUX["context_in_dim"], generator=g)
    txt_ids = torch.zeros(1, TXT_LEN, 3)
    vec = torch.randn(1, FLUX["vec_in_dim"], generator=g)
    timestep = torch.tensor([0.7])
    guidance = torch.tensor([GUIDANCE])
    timesteps = get_schedule(STEPS, IMG_GRID * IMG_GRID, shift=True)

    with torch.no_grad():
        id_tokens = encoder(id_cond, hidden)
        uncond = encoder(torch.zeros_like(id_cond), [torch.zeros_like(h) for h in hidden])
        ca_out = pulid_ca[0](id_tokens, image_tokens)
        common = dict(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y=vec, timesteps=timestep, guidance=guidance)
        step_plain = model(**common)
        step_id = model(**common, id=id_tokens, id_weight=ID_WEIGHT)
        denoised = denoise(model, img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, vec=vec, timesteps=timesteps,
                           guidance=GUIDANCE, id=id_tokens, id_weight=ID_WEIGHT, start_step=START_STEP)

    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("pulid_ca.")},
              str(OUT / "flux_bfl.safetensors"))
    published = {f"pulid_encoder.{k}": v for k, v in encoder.state_dict().items()}
    published.update({f"pulid_ca.{k}": v for k, v in pulid_ca.state_dict().items()})
    save_file({k: v.contiguous() for k, v in published.items()}, str(OUT / "pulid_flux_v0.9.1.safetensors"))
    cases = dict(id_cond=id_cond, **{f"hidden_{i}": h for i, h in enumerate(hidden)}, id_tokens=id_tokens,
                 uncond_id_tokens=uncond, image_tokens=image_tokens, ca_out=ca_out, img=img, img_ids=img_ids[0], txt=txt,
                 txt_ids=txt_ids[0], vec=vec, timestep=timestep, guidance=guidance, step_plain=step_plain,
                 step_id=step_id, denoised=denoised)
    save_file({k: v.contiguous() for k, v in cases.items()}, str(OUT / "cases.safetensors"))
    meta = {"reference": "https://github.com/ToTheBeginning/PuLID", "commit": COMMIT,
            "flux": FLUX, "num_ca": num_ca, "id_weight": ID_WEIGHT, "start_step": START_STEP, "timesteps": timesteps,
            "torch": torch.__version__, "seed": SEED,
            "stubbed": ["flux.modules.conditioner (type annotation only)"],
            "replaced": ["IDFormer.id_embedding_mapping and mapping_0..4: same structure at reduced widths"]}
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
