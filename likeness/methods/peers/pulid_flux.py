"""PuLID-FLUX (v0.9.0 / v0.9.1, ``ToTheBeginning/PuLID``): PuLID's ID tokens fed to FLUX.1 [dev] through
cross-attention blocks inserted between the transformer's blocks.

Encoding a photo is PuLID v1.1's (:mod:`likeness.methods.peers.pulid`): the largest face's raw ArcFace embedding,
the face aligned on the FFHQ template with its background whitened and the rest greyscale, EVA02-CLIP-L-14-336's
embedding and five feature levels, and the **IDFormer** (the same module as PuLID v1.1 for SDXL: 32 queries + 5
ArcFace tokens, 10 layers, dim 1024) giving 32 ID tokens 2048 wide. The unconditional tokens (the encoder's
output for zero inputs) are stored too.

Generation: ``pulid_ca.<n>`` (Perceiver-style cross-attention, heads 128 wide: the image tokens, LayerNormed, are
the queries; the ID tokens, LayerNormed, give keys and values; softmax in float32) after every 2nd double-stream
block (0, 2, 4, ...) and every 4th single-stream block (0, 4, 8, ...), in that order: FLUX.1 [dev]'s 19 + 38
blocks take 10 + 10 = 20. Each adds ``id_weight`` times its output to the image tokens only (in a single-stream
block, the image part of the joint sequence). From denoising step ``start_step`` on (the published "timestep to
start inserting ID"); before it the transformer is plain FLUX. Here the blocks hang off diffusers'
``FluxTransformer2DModel`` as forward hooks (``transformer.pulid_ca`` holds them), inside the base's own
``FluxPipeline``.

Published files: ``pulid_flux_v0.9.0.safetensors`` / ``pulid_flux_v0.9.1.safetensors`` (hub ``guozinan/PuLID``:
``pulid_encoder.*`` + ``pulid_ca.<n>.*``, same layout in both; v0.9.1, the published app's default, scores about
5 points higher face similarity) and EVA02-CLIP as for PuLID. Published defaults: id_weight 1, start_step 0 (4
suggested for photorealistic prompts, 0-1 for stylised ones), 28 steps, guidance 4, 896x1152. Not offered: the
app's true CFG (off by default there) and its resizing of the photo to a 1024-px long edge before face detection.
The weights (and InsightFace's antelopev2) are for non-commercial use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from likeness.methods.base import METHODS, PublishedFile
from likeness.methods.peers.common import (
    CheckpointError,
    arcface_for,
    check_layout,
    flux_transformer_config,
    read_state_dict,
    recorded_file,
    require_flux1,
    resolve_file,
    split_prefixes,
    weights_record,
)
from likeness.methods.peers.photomaker import PerceiverAttention
from likeness.methods.peers.pulid import EVA_PUBLISHED, HUB, IDFormer, PuLID, id_encoder_from

WEIGHT_NAMES = {"v0.9.0": "pulid_flux_v0.9.0.safetensors", "v0.9.1": "pulid_flux_v0.9.1.safetensors"}
DOUBLE_INTERVAL = 2  # an ID block after double-stream blocks 0, 2, 4, ...
SINGLE_INTERVAL = 4  # and after single-stream blocks 0, 4, 8, ...
CA_HEAD_WIDTH = 128  # PerceiverAttentionCA: 16 heads of 128 at FLUX.1 [dev]'s 3072


def ca_positions(double: int, single: int) -> list[tuple[str, int]]:
    """Where the ``pulid_ca.<n>`` blocks go, ``n`` in list order: ``("double" | "single", block index)``."""
    return ([("double", i) for i in range(0, double, DOUBLE_INTERVAL)]
            + [("single", i) for i in range(0, single, SINGLE_INTERVAL)])


class IDCrossAttention(PerceiverAttention):
    """One ``pulid_ca`` block: image tokens (queries, ``norm2``) attend to the ID tokens only (keys and values,
    ``norm1``); the scale is split between q and k as published, the softmax runs in float32."""

    def __init__(self, dim: int, id_width: int, heads: int, head_width: int = CA_HEAD_WIDTH):
        super().__init__(dim, id_width, heads, head_width, kv_width=id_width)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.attend(self.norm2(image), self.norm1(tokens), float_softmax=True)


def expected_ca_shapes(config: dict, id_width: int, heads: int) -> dict[str, tuple]:
    """``pulid_ca.<n>.*`` key -> shape for a FLUX transformer ``config`` and ID tokens ``id_width`` wide."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    inner = heads * CA_HEAD_WIDTH
    shapes = {}
    for n in range(len(ca_positions(config["num_layers"], config["num_single_layers"]))):
        p = f"pulid_ca.{n}."
        shapes.update({p + "norm1.weight": (id_width,), p + "norm1.bias": (id_width,), p + "norm2.weight": (dim,),
                       p + "norm2.bias": (dim,), p + "to_q.weight": (inner, dim), p + "to_kv.weight": (2 * inner, id_width),
                       p + "to_out.weight": (dim, inner)})
    return shapes


def load_pulid_flux(path: Path, config: dict, version: str | None = None,
                    encoder: bool = True) -> tuple[IDFormer | None, int, dict[str, torch.Tensor]]:
    """Read and check a published PuLID-FLUX file against a FLUX transformer ``config``; returns (the IDFormer with
    weights, or None when ``encoder`` is false: generation needs only the ID tokens' width; that width; the
    ``pulid_ca.*`` tensors)."""
    path = Path(path)
    if version is not None:
        other = {name: v for v, name in WEIGHT_NAMES.items() if v != version}
        if path.name in other:
            raise CheckpointError(f"{path}: is the PuLID-FLUX {other[path.name]} file, but version {version!r} was asked; "
                                  f"pass version={other[path.name]} or the file {WEIGHT_NAMES[version]}")
    state = read_state_dict(path)
    nested = split_prefixes(state, ("pulid_encoder", "pulid_ca", "id_adapter"))
    if nested["id_adapter"] and not nested["pulid_ca"]:
        raise CheckpointError(f"{path}: is a PuLID file for SDXL (id_adapter.* keys), not PuLID-FLUX; use method pulid "
                              f"on an SDXL base, or pass pulid_flux_v0.9.x.safetensors (hub {HUB}) as weights")
    if not nested["pulid_encoder"] or not nested["pulid_ca"]:
        raise CheckpointError(f"{path}: not a PuLID-FLUX file (needs pulid_encoder.* and pulid_ca.* keys; found "
                              f"{', '.join(sorted(state)[:5]) or 'no keys'})")
    if "latents" not in nested["pulid_encoder"]:
        raise CheckpointError(f"{path}: pulid_encoder is not an IDFormer (no pulid_encoder.latents); PuLID-FLUX files hold one")
    ids = id_encoder_from(path, nested["pulid_encoder"], prefix="pulid_encoder") if encoder else None
    id_width = tuple(nested["pulid_encoder"]["proj_out"].shape)[-1] if "proj_out" in nested["pulid_encoder"] else -1
    ca = {f"pulid_ca.{k}": v for k, v in nested["pulid_ca"].items()}
    found = 1 + max((int(k.split(".")[1]) for k in ca if k.split(".")[1].isdigit()), default=-1)
    want = len(ca_positions(config["num_layers"], config["num_single_layers"]))
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    width = tuple(ca.get("pulid_ca.0.norm2.weight", torch.empty(0)).shape)
    if found != want or width != (dim,):
        raise CheckpointError(f"{path}: made for another FLUX transformer ({found} ID blocks, width {width[0] if width else '?'}); "
                              f"this base's ({config['num_layers']} double + {config['num_single_layers']} single blocks, "
                              f"width {dim}) takes {want} of width {dim}. PuLID-FLUX is published for FLUX.1 [dev]")
    inner = tuple(ca.get("pulid_ca.0.to_q.weight", torch.empty(0, 0)).shape)[0]
    check_layout(path, ca, expected_ca_shapes(config, id_width, max(1, inner // CA_HEAD_WIDTH)), "PuLID-FLUX pulid_ca")
    return ids, id_width, ca


class IDInsertion:
    """What the hooks read during a call: the ID tokens (None: plain FLUX), ``id_weight``, ``start_step`` and how many
    transformer calls (denoising steps: one per step without true CFG) this pipeline call has made."""

    def __init__(self, weight: float, start_step: int):
        self.tokens: torch.Tensor | None = None
        self.weight, self.start_step = weight, start_step
        self.calls = 0
        self.active = False

    def before_transformer(self, module, args, kwargs):
        self.active = self.tokens is not None and self.weight != 0 and self.calls >= self.start_step
        self.calls += 1

    def after_block(self, ca: IDCrossAttention):
        def hook(module, args, kwargs, output):
            if not self.active:
                return None
            encoder_states, image = output  # diffusers' FLUX blocks, double and single: (text, image) tokens
            if ca.to_q.weight.device != image.device:  # sequential CPU offload hooks only the base's own layers
                ca.to(image.device)
            tokens = self.tokens.to(device=image.device, dtype=image.dtype)
            if tokens.shape[0] != image.shape[0]:
                tokens = tokens.expand(image.shape[0], -1, -1)
            return encoder_states, image + self.weight * ca(tokens, image)

        return hook


def install(transformer, ca_state: dict[str, torch.Tensor], id_width: int, state: IDInsertion) -> nn.ModuleList:
    """The ``pulid_ca`` blocks (published weights) as ``transformer.pulid_ca``, hooked after their blocks."""
    if "pulid_ca" in transformer._modules:  # a second set of hooks would insert the ID twice
        raise ValueError("this FLUX transformer already carries PuLID-FLUX blocks; load the base pipeline afresh")
    config = transformer.config
    positions = ca_positions(config.num_layers, config.num_single_layers)
    dim = config.num_attention_heads * config.attention_head_dim
    heads = max(1, ca_state["pulid_ca.0.to_q.weight"].shape[0] // CA_HEAD_WIDTH)
    blocks = nn.ModuleList(IDCrossAttention(dim, id_width, heads) for _ in positions)
    blocks.load_state_dict({k[len("pulid_ca."):]: v for k, v in ca_state.items()}, strict=True)
    blocks.to(device=transformer.device, dtype=transformer.dtype).eval()
    transformer.add_module("pulid_ca", blocks)
    transformer.register_forward_pre_hook(state.before_transformer, with_kwargs=True)
    for (kind, index), ca in zip(positions, blocks):
        host = (transformer.transformer_blocks if kind == "double" else transformer.single_transformer_blocks)[index]
        host.register_forward_hook(state.after_block(ca), with_kwargs=True)
    return blocks


@METHODS.register("pulid-flux")
class PuLIDFlux(PuLID):
    name = "pulid-flux"
    families = ("flux1",)
    published_files = tuple(PublishedFile("weights", WEIGHT_NAMES[version], HUB, "", f"PuLID-FLUX {version}",
                                          (("version", version),)) for version in ("v0.9.1", "v0.9.0")) + (EVA_PUBLISHED,)
    defaults = {
        "version": "v0.9.1",  # v0.9.1 (the published app's default) or v0.9.0
        "weights": None,  # pulid_flux_<version>.safetensors: file, folder or hub id (default guozinan/PuLID)
        "eva_clip": None,  # EVA02_CLIP_L_336_psz14_s6B.pt: file, folder or hub id (default QuanSun/EVA-CLIP)
        "id_weight": 1.0,  # the published app's default; 0 gives plain FLUX
        "start_step": 0,  # the denoising step from which the ID is inserted (published 0; 4 suggested for photorealism)
        "resize_antialias": False,  # EVA input resize: False as PuLID's pinned torchvision 0.15.2, True as torchvision >= 0.17
        "face_backend": "arcface",
        "face_model_dir": None,  # InsightFace-style ONNX folder (antelopev2 in the published recipe)
        "parsing_model": None,  # face-parsing segmentation model (hub id / folder, CelebAMask-HQ labels); default heuristic
        "subject": None,
    }
    default_sampling = {"flux1": {"num_inference_steps": 28, "guidance_scale": 4.0}}  # the published app's

    def prepare(self, base_model, info, options):
        version = options["version"]
        if version not in WEIGHT_NAMES:
            raise ValueError(f"{self.name}: version must be one of {', '.join(WEIGHT_NAMES)}, not {version!r}")
        if int(options["start_step"]) < 0:
            raise ValueError(f"{self.name}: start_step must be 0 or more, not {options['start_step']!r}")
        backend = arcface_for(self.name, options)
        spec = options["weights"] or HUB
        path = resolve_file(spec, WEIGHT_NAMES[version], what="PuLID-FLUX weights")
        require_flux1(info, base_model, f"{path}: PuLID-FLUX weights are", "method pulid on an SDXL base")
        encoder, _, _ = load_pulid_flux(path, flux_transformer_config(base_model), version)
        context, eva_record = self.encoding_context(path, encoder, backend, options)
        return context, [weights_record(path, "pulid-flux weights", spec), eva_record]

    def apply(self, pipe, artifact, manifest):
        options = manifest.config["options"]
        transformer = pipe.transformer
        _, id_width, ca = load_pulid_flux(recorded_file(manifest, "pulid-flux weights"), dict(transformer.config),
                                          options["version"], encoder=False)
        state = IDInsertion(float(options["id_weight"]), int(options["start_step"]))
        install(transformer, ca, id_width, state)
        pipe.pulid_flux_state = state
        return pipe

    def call(self, personalized, prompts, tensors, **kwargs):
        pipe = personalized.pipe
        options = personalized.manifest.config["options"]
        state = pipe.pulid_flux_state
        state.weight = float(options["id_weight"])  # read per call, so a changed manifest option takes effect
        state.start_step = int(options["start_step"])
        if kwargs.get("true_cfg_scale", 1.0) > 1:
            raise ValueError("pulid-flux does not run true CFG (true_cfg_scale > 1); the published default is FLUX's "
                             "distilled guidance (guidance_scale)")
        state.tokens = tensors["id_embedding"].to(device=pipe.device, dtype=pipe.transformer.dtype)
        state.calls = 0
        try:
            return pipe(prompt=prompts, **kwargs)
        finally:
            state.tokens = None
            state.active = False

