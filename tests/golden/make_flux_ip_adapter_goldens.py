"""Goldens for ``flux-ip-adapter`` from XLabs' own code: x-flux (github.com/XLabs-AI/x-flux) at commit
47495425dbed499be1e8e5a6e52628b07349cba2, the code the published ``XLabs-AI/flux-ip-adapter`` file was made for.

What it runs: x-flux's ``DoubleStreamBlock`` (FLUX.1's double-stream block) with x-flux's ``IPDoubleStreamBlockProcessor``
and ``ImageProjModel``, at a reduced size (2 blocks, width 32 = 2 heads x 16, 4 image tokens of width 32 from a
16-d CLIP embedding; x-flux itself hard-codes 4096 / 3072 / 768 in ``XFluxPipeline.set_ip``), on seeded random
weights. The IP-Adapter weights are written in the published XLabs layout (``ip_adapter_proj_model.*``,
``double_blocks.<i>.processor.ip_adapter_double_stream_{k,v}_proj.*``) and read back the way ``set_ip`` reads the
published file (prefix split, ``.processor.`` dropped, per-block ``load_state_dict``), so likeness's test loads THE
SAME file through diffusers' ``load_ip_adapter``. Nothing else of x-flux is needed (its model, sampling and CLIP
code are not run: the CLIP encoder is transformers' in both, and the test feeds the same embedding).

Side environment (no diffusers, no torchvision; x-flux's block code needs only torch and einops):

    python3.11 -m venv /work/refenv-fluxip
    /work/refenv-fluxip/bin/pip install torch==2.13.0 einops safetensors numpy
    mkdir -p /tmp/x-flux && git --git-dir=<x-flux mirror> archive 47495425dbed499be1e8e5a6e52628b07349cba2 \
        src/flux/__init__.py src/flux/math.py src/flux/modules/layers.py | tar -x -C /tmp/x-flux
    /work/refenv-fluxip/bin/python tests/golden/make_flux_ip_adapter_goldens.py --xflux /tmp/x-flux/src

Writes tests/golden/flux_ip_adapter/:

- ``blocks.safetensors``: the two double blocks in x-flux's (BFL) names, ``double_blocks.<i>.img_mod.lin.weight`` ...;
- ``ip_adapter.safetensors``: the IP-Adapter in the published XLabs layout;
- ``goldens.safetensors``: inputs (``img``, ``txt``, ``vec``, ``ids``, ``clip_embeds``) and x-flux's outputs after both
  blocks: ``plain.img`` / ``plain.txt`` (no image prompt), ``ip1.img`` / ``ip1.txt`` (ip_scale 1.0), ``ip05.*`` (0.5),
  and ``image_proj`` (the 4 image tokens);
- ``goldens.json``: the commit, sizes, torch version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

COMMIT = "47495425dbed499be1e8e5a6e52628b07349cba2"
SIZES = dict(hidden=32, heads=2, blocks=2, mlp_ratio=4.0, clip=16, tokens=4, txt_len=8, img_side=4, axes_dim=[4, 4, 8],
             theta=10000)
OUT = Path(__file__).resolve().parent / "flux_ip_adapter"


def seeded_(module: torch.nn.Module, seed: int, std: float) -> None:
    """Every parameter from one seeded generator, in name order; norm scales around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            value = torch.randn(p.shape, generator=g) * std
            p.copy_(value + 1 if name.endswith(("scale", "norm.weight")) else value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--xflux", required=True, type=Path, help="x-flux's src/ folder at the commit above")
    args = parser.parse_args()
    sys.path.insert(0, str(args.xflux))
    from flux.modules.layers import DoubleStreamBlock, EmbedND, ImageProjModel, IPDoubleStreamBlockProcessor

    torch.set_num_threads(1)
    s = SIZES
    blocks = torch.nn.ModuleList([DoubleStreamBlock(s["hidden"], s["heads"], mlp_ratio=s["mlp_ratio"], qkv_bias=True)
                                  for _ in range(s["blocks"])])
    seeded_(blocks, 0, 0.2)
    improj = ImageProjModel(s["hidden"], s["clip"], s["tokens"])  # cross_attention_dim = the joint (T5) width
    seeded_(improj, 1, 0.5)
    processors = [IPDoubleStreamBlockProcessor(s["hidden"], s["hidden"]) for _ in range(s["blocks"])]  # zero-initialised
    for i, processor in enumerate(processors):
        seeded_(processor, 2 + i, 0.5)

    # The published layout, written from the modules' own state dicts.
    OUT.mkdir(parents=True, exist_ok=True)
    published = {f"ip_adapter_proj_model.{k}": v for k, v in improj.state_dict().items()}
    for i, processor in enumerate(processors):
        published.update({f"double_blocks.{i}.processor.{k}": v for k, v in processor.state_dict().items()})
    save_file({k: v.contiguous() for k, v in published.items()}, str(OUT / "ip_adapter.safetensors"))
    save_file({f"double_blocks.{i}.{k}": v.contiguous() for i, block in enumerate(blocks)
               for k, v in block.state_dict().items()}, str(OUT / "blocks.safetensors"))

    g = torch.Generator().manual_seed(10)
    img_len = s["img_side"] ** 2
    inputs = {"img": torch.randn(1, img_len, s["hidden"], generator=g),
              "txt": torch.randn(1, s["txt_len"], s["hidden"], generator=g),
              "vec": torch.randn(1, s["hidden"], generator=g),
              "clip_embeds": torch.randn(1, s["clip"], generator=g)}
    ids = torch.zeros(s["txt_len"] + img_len, 3)  # text ids 0; image ids (0, row, column) as FLUX packs latents
    rows, cols = torch.meshgrid(torch.arange(s["img_side"]), torch.arange(s["img_side"]), indexing="ij")
    ids[s["txt_len"]:, 1], ids[s["txt_len"]:, 2] = rows.flatten().float(), cols.flatten().float()
    inputs["ids"] = ids
    pe = EmbedND(dim=s["hidden"] // s["heads"], theta=s["theta"], axes_dim=s["axes_dim"])(ids[None])

    out = dict(inputs)

    def run(label: str, **kwargs) -> None:
        img, txt = inputs["img"], inputs["txt"]
        with torch.no_grad():
            for block in blocks:
                img, txt = block(img=img, txt=txt, vec=inputs["vec"], pe=pe, **kwargs)
        out[f"{label}.img"], out[f"{label}.txt"] = img, txt

    run("plain")  # x-flux's own DoubleStreamBlockProcessor (an IP processor cannot run without an image prompt)
    # Read back as XFluxPipeline.set_ip reads the published file.
    checkpoint = load_file(str(OUT / "ip_adapter.safetensors"))
    proj = {k[len("ip_adapter_proj_model."):]: v for k, v in checkpoint.items() if k.startswith("ip_adapter_proj_model")}
    improj = ImageProjModel(s["hidden"], s["clip"], s["tokens"])
    improj.load_state_dict(proj)
    for i, block in enumerate(blocks):
        name = f"double_blocks.{i}.processor"
        processor = IPDoubleStreamBlockProcessor(s["hidden"], s["hidden"])
        processor.load_state_dict({k.replace(f"{name}.", ""): v for k, v in checkpoint.items() if name in k})
        block.set_processor(processor)
    with torch.no_grad():
        out["image_proj"] = improj(inputs["clip_embeds"])
    run("ip1", image_proj=out["image_proj"], ip_scale=1.0)
    run("ip05", image_proj=out["image_proj"], ip_scale=0.5)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT / "goldens.safetensors"))
    (OUT / "goldens.json").write_text(json.dumps({"reference": "XLabs-AI/x-flux", "commit": COMMIT, "sizes": SIZES,
                                                  "torch": torch.__version__}, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
