"""IP-Adapter (Ye et al., 2023) and IP-Adapter-FaceID: the person enters through extra image tokens.

A frozen image encoder turns the photo into features; a small projection (``image_proj``) makes them
into tokens that every cross-attention layer attends to through its own key/value matrices
(``ip_adapter.<n>.to_k_ip`` / ``to_v_ip``), added to the text attention with a settable ``scale``.
The published files are loaded by diffusers' own ``load_ip_adapter``; generation passes the artifact's
embeddings as ``ip_adapter_image_embeds``, so no image encoder runs at generation time.

Variants (all key layouts as published; diffusers' converters in ``loaders/unet.py`` map them):

- ``ip-adapter``: ``plain`` (CLIP image embedding -> 4 tokens; ``image_proj.proj`` + ``norm``) and
  ``plus`` / ``plus-face`` (CLIP penultimate hidden states -> a Perceiver resampler, ``image_proj.latents``,
  ``layers.<i>.0`` attention, ``layers.<i>.1`` feed-forward). ``plus-face`` encodes a face crop, the others
  a head-and-shoulders crop.
- ``ip-adapter-faceid``: ``faceid`` (the ArcFace embedding -> 4 tokens; ``image_proj.proj.0/2`` + ``norm``)
  and ``faceid-plus`` / ``faceid-plusv2`` (plus CLIP hidden states of the aligned face through
  ``image_proj.perceiver_resampler``; v2 adds the ID tokens back with ``shortcut_scale``). Their files carry
  a LoRA in the attention layers (``ip_adapter.<n>.to_{q,k,v,out}_lora.{down,up}``); as published it is
  applied at full strength, and here it is fused into the UNet (``lora_scale``) and the adapters unloaded.
  The face embedding comes from the ``arcface`` backend (``face_model_dir``: an InsightFace-style folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from likeness.methods.base import METHODS, PublishedFile
from likeness.methods.peers.common import (
    CheckpointError,
    TuningFreeMethod,
    arcface_for,
    attention_layout,
    cfg_pair,
    check_face_dim,
    check_layout,
    diffusers_loading,
    empty_unet,
    face_backend,
    largest_face,
    read_state_dict,
    resolve_file,
    save_crop,
    sha256_file,
    split_prefixes,
    weights_record,
    without_folder,
)

HUB_IP_ADAPTER = "h94/IP-Adapter"
HUB_FACEID = "h94/IP-Adapter-FaceID"
# Published file names: (family, variant) -> file.
WEIGHT_NAMES = {
    ("sd1", "plain"): "ip-adapter_sd15.safetensors",
    ("sd1", "plus"): "ip-adapter-plus_sd15.safetensors",
    ("sd1", "plus-face"): "ip-adapter-plus-face_sd15.safetensors",
    ("sdxl", "plain"): "ip-adapter_sdxl.safetensors",
    ("sdxl", "plus"): "ip-adapter-plus_sdxl_vit-h.safetensors",
    ("sdxl", "plus-face"): "ip-adapter-plus-face_sdxl_vit-h.safetensors",
    ("sd1", "faceid"): "ip-adapter-faceid_sd15.bin",
    ("sd1", "faceid-plus"): "ip-adapter-faceid-plus_sd15.bin",
    ("sd1", "faceid-plusv2"): "ip-adapter-faceid-plusv2_sd15.bin",
    ("sdxl", "faceid"): "ip-adapter-faceid_sdxl.bin",
    ("sdxl", "faceid-plusv2"): "ip-adapter-faceid-plusv2_sdxl.bin",
}
# Which published projection each variant uses (the kind found in a file must match).
KIND = {"plain": "plain", "plus": "resampler", "plus-face": "resampler", "faceid": "faceid",
        "faceid-plus": "faceid-plus", "faceid-plusv2": "faceid-plus"}
KIND_NAMES = {"plain": "IP-Adapter (plain)", "resampler": "IP-Adapter Plus / Plus-Face (resampler)",
              "faceid": "IP-Adapter-FaceID", "faceid-plus": "IP-Adapter-FaceID-Plus", "full": "IP-Adapter Full-Face"}
RESAMPLER_DEPTH = 4
# The CLIP image encoder FaceID-Plus was trained with (the others use h94/IP-Adapter's: ViT-H in models/image_encoder,
# ViT-bigG in sdxl_models/image_encoder for SDXL plain).
FACEID_PLUS_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def published_weights(hub: str, variants: tuple[str, ...]) -> tuple[PublishedFile, ...]:
    """The published adapter files of ``variants`` (one per base family and variant), as ``Method.published_files``."""
    files = []
    for (family, variant), name in WEIGHT_NAMES.items():
        if variant in variants:
            subfolder = ("models" if family == "sd1" else "sdxl_models") if hub == HUB_IP_ADAPTER else ""
            files.append(PublishedFile("weights", name, hub, subfolder, f"{variant} weights",
                                       (("family", family), ("variant", variant))))
    return tuple(files)
FAMILY_DIMS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def projection_kind(path, image_proj: dict) -> str:
    """Which published projection a file holds, from its marker keys (the order diffusers checks them)."""
    if "proj.weight" in image_proj:
        return "plain"
    if "proj.3.weight" in image_proj:
        return "full"
    if "perceiver_resampler.proj_in.weight" in image_proj:
        return "faceid-plus"
    if "norm.weight" in image_proj and "proj.0.weight" in image_proj:
        return "faceid"
    if "latents" in image_proj:
        return "resampler"
    raise CheckpointError(f"{path}: no IP-Adapter image projection found (none of image_proj.proj.weight, image_proj.latents, "
                          f"image_proj.proj.0.weight + norm.weight, image_proj.perceiver_resampler.*); keys start with "
                          f"{', '.join(sorted(image_proj)[:5]) or 'nothing'}")


def _shape(state: dict, key: str, path, dims: int | None = None) -> tuple:
    if key not in state:
        raise CheckpointError(f"{path}: missing key {key}")
    shape = tuple(state[key].shape)
    if dims is not None and len(shape) != dims:
        raise CheckpointError(f"{path}: {key} has shape {shape}, expected {dims} dimensions")
    return shape


def resampler_layout(state: dict, prefix: str, path) -> tuple[dict, int, int]:
    """Expected keys of a published Perceiver resampler block stack under ``prefix`` (depth from the file):
    ``layers.<i>.0`` = attention (norm1, norm2, to_q, to_kv, to_out; no biases), ``layers.<i>.1`` =
    LayerNorm + Linear(4x) + GELU + Linear, 4 blocks. Returns (expected, width, input dim)."""
    width, embed = _shape(state, f"{prefix}proj_in.weight", path, 2)
    inner = _shape(state, f"{prefix}layers.0.0.to_q.weight", path, 2)[0]
    if inner % 64:
        raise CheckpointError(f"{path}: {prefix}layers.0.0.to_q.weight has {inner} rows; published resamplers use 64-wide heads")
    depth = RESAMPLER_DEPTH  # fixed in the published models (and in diffusers' projection classes)
    expected = {f"{prefix}proj_in.weight": (width, embed), f"{prefix}proj_in.bias": (width,)}
    for i in range(depth):
        layer = f"{prefix}layers.{i}."
        expected.update({
            f"{layer}0.norm1.weight": (width,), f"{layer}0.norm1.bias": (width,),
            f"{layer}0.norm2.weight": (width,), f"{layer}0.norm2.bias": (width,),
            f"{layer}0.to_q.weight": (inner, width), f"{layer}0.to_kv.weight": (2 * inner, width),
            f"{layer}0.to_out.weight": (width, inner),
            f"{layer}1.0.weight": (width,), f"{layer}1.0.bias": (width,),
            f"{layer}1.1.weight": (4 * width, width), f"{layer}1.3.weight": (width, 4 * width),
        })
    return expected, width, embed


def expected_layout(path, state: dict, unet, kind: str) -> dict:
    """Every key (with ``image_proj.`` / ``ip_adapter.`` prefixes) and shape a published file of ``kind``
    must have for this UNet. Sizes the base model fixes (cross-attention dim, hidden sizes, number of
    layers) are checked exactly; sizes of the image side (encoder width, resampler depth) come from the file."""
    cross = unet.config.cross_attention_dim
    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    expected: dict[str, tuple | None] = {}
    if kind == "plain":
        tokens_dim, embed = _shape(proj, "proj.weight", path, 2)
        if tokens_dim % 4:
            raise CheckpointError(f"{path}: image_proj.proj.weight has {tokens_dim} rows, not 4 tokens x cross-attention dim")
        file_cross = tokens_dim // 4
        local = {"proj.weight": (4 * cross, embed), "proj.bias": (4 * cross,), "norm.weight": (cross,), "norm.bias": (cross,)}
    elif kind == "resampler":
        local, width, _ = resampler_layout(proj, "", path)
        queries = _shape(proj, "latents", path, 3)[1]
        file_cross = _shape(proj, "proj_out.weight", path, 2)[0]
        local.update({"latents": (1, queries, width), "proj_out.weight": (cross, width), "proj_out.bias": (cross,),
                      "norm_out.weight": (cross,), "norm_out.bias": (cross,)})
    elif kind == "faceid":
        hidden, face_dim = _shape(proj, "proj.0.weight", path, 2)
        file_cross = _shape(proj, "norm.weight", path, 1)[0]
        tokens = _shape(proj, "proj.2.weight", path, 2)[0] // max(file_cross, 1)
        local = {"proj.0.weight": (hidden, face_dim), "proj.0.bias": (hidden,), "proj.2.weight": (cross * tokens, hidden),
                 "proj.2.bias": (cross * tokens,), "norm.weight": (cross,), "norm.bias": (cross,)}
    elif kind == "faceid-plus":
        local, width, _ = resampler_layout(proj, "perceiver_resampler.", path)
        hidden, face_dim = _shape(proj, "proj.0.weight", path, 2)
        file_cross = _shape(proj, "perceiver_resampler.proj_out.weight", path, 2)[0]
        local.update({"perceiver_resampler.proj_out.weight": (cross, width), "perceiver_resampler.proj_out.bias": (cross,),
                      "perceiver_resampler.norm_out.weight": (cross,), "perceiver_resampler.norm_out.bias": (cross,),
                      "proj.0.weight": (hidden, face_dim), "proj.0.bias": (hidden,),
                      "proj.2.weight": (width * 4, hidden), "proj.2.bias": (width * 4,),
                      "norm.weight": (width,), "norm.bias": (width,)})
    else:
        raise CheckpointError(f"{path}: {KIND_NAMES.get(kind, kind)} files are not supported here")
    if file_cross != cross:
        made_for = FAMILY_DIMS.get(file_cross, f"cross-attention dim {file_cross}")
        raise CheckpointError(f"{path}: made for {made_for} (tokens of width {file_cross}), but this base model's UNet "
                              f"has cross-attention dim {cross} ({FAMILY_DIMS.get(cross, 'another base model')}); "
                              f"use the file published for this base model")
    expected.update({f"image_proj.{k}": v for k, v in local.items()})

    layout = attention_layout(unet)
    key_id = 1
    for name, hidden, layer_cross in layout:
        if layer_cross is not None:
            expected[f"ip_adapter.{key_id}.to_k_ip.weight"] = (hidden, layer_cross)
            expected[f"ip_adapter.{key_id}.to_v_ip.weight"] = (hidden, layer_cross)
            key_id += 2
    lora_keys = [k for k in state if "_lora." in k]
    if lora_keys:  # FaceID's LoRA: every attention layer, all four projections
        rank = state[sorted(lora_keys)[0]].shape[0] if sorted(lora_keys)[0].endswith("down.weight") else None
        for index, (name, hidden, layer_cross) in enumerate(layout):
            kv_in = layer_cross or hidden
            for proj_name, in_dim in (("to_q", hidden), ("to_k", kv_in), ("to_v", kv_in), ("to_out", hidden)):
                expected[f"ip_adapter.{index}.{proj_name}_lora.down.weight"] = (rank, in_dim) if rank else None
                expected[f"ip_adapter.{index}.{proj_name}_lora.up.weight"] = (hidden, rank) if rank else None
    return expected


def load_checked(path: Path, unet, variant: str, lora_file=None) -> tuple[dict, str]:
    """Read a published IP-Adapter file and check it against the base model's UNet and the asked variant."""
    state = read_state_dict(path)
    nested = split_prefixes(state, ("image_proj", "ip_adapter"))
    if not nested["image_proj"] or not nested["ip_adapter"]:
        raise CheckpointError(f"{path}: not an IP-Adapter file (needs image_proj.* and ip_adapter.* keys; found "
                              f"{', '.join(sorted(state)[:5]) or 'no keys'})")
    kind = projection_kind(path, nested["image_proj"])
    if kind != KIND[variant]:
        raise CheckpointError(f"{path}: is an {KIND_NAMES.get(kind, kind)} file, but variant {variant!r} needs an "
                              f"{KIND_NAMES[KIND[variant]]} file")
    if variant == "faceid" and not any("_lora." in k for k in state) and not lora_file:
        raise CheckpointError(f"{path}: IP-Adapter-FaceID file without its LoRA (ip_adapter.<n>.to_q_lora.down.weight ...); "
                              f"the published recipe needs it: pass lora=FILE (the published *_lora.safetensors)")
    check_layout(path, state, expected_layout(path, state, unet, kind), f"{KIND_NAMES[kind]}")
    return nested, kind


def load_into(pipe, state: dict, path: Path, scale: float) -> None:
    """A checked IP-Adapter state dict into ``pipe`` through diffusers' own ``load_ip_adapter`` (strict: a key
    diffusers does not use is an error), at ``scale``."""
    with diffusers_loading(path):
        pipe.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None, low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(scale)


def resolve_encoder(spec, subfolder: str | None, weights_path: Path, hub_default: tuple[str, str] | None):
    """The CLIP image encoder folder: given (folder or hub id + subfolder), or ``image_encoder/`` beside the
    weights file or one level up (the published repository layout), or the hub default."""
    from transformers import CLIPVisionModelWithProjection

    from likeness.models.pretrained import load_pretrained

    if spec is None:
        for folder in (weights_path.parent / "image_encoder", weights_path.parent.parent / "image_encoder"):
            if (folder / "config.json").is_file():
                spec, subfolder = str(folder), None
                break
    if spec is None and hub_default is not None:
        spec, subfolder = hub_default
    if spec is None:
        raise FileNotFoundError(f"no CLIP image encoder: no image_encoder/ folder beside {weights_path}; pass image_encoder=FOLDER_OR_HUB_ID")
    encoder = load_pretrained(CLIPVisionModelWithProjection, str(spec), subfolder=subfolder or "", dtype=torch.float32,
                              what=f"image encoder{' (' + subfolder + '/)' if subfolder else ''}")
    encoder.eval()
    return encoder, spec, subfolder


def encoder_record(encoder, spec, subfolder) -> dict:
    """Provenance of the image encoder (not needed at generation: the embeddings are stored)."""
    folder = Path(getattr(encoder, "name_or_path", "") or str(spec))
    files = sorted((folder / (subfolder or "")).glob("*.safetensors")) + sorted((folder / (subfolder or "")).glob("*.bin"))
    record = {"role": "image encoder", "given": f"{spec}{':' + subfolder if subfolder else ''}", "needed_at_generation": False}
    if files:
        record.update(path=str(files[0].resolve()), sha256=sha256_file(files[0]))
    return record


def clip_processor(encoder):
    """What diffusers' ``load_ip_adapter`` creates when a pipeline has no feature extractor: CLIP's own
    preprocessing at the encoder's input size."""
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)


@torch.no_grad()
def clip_features(encoder, image, hidden_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) as diffusers' ``encode_image``: the projected embedding with zeros as negative,
    or the penultimate hidden states with the encoder's answer to a black image as negative."""
    pixels = clip_processor(encoder)(image, return_tensors="pt").pixel_values.to(encoder.device, torch.float32)
    if hidden_states:
        positive = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        negative = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return positive, negative
    positive = encoder(pixels).image_embeds
    return positive, torch.zeros_like(positive)


class _IPAdapterBase(TuningFreeMethod):
    photos_encoded = 1  # the published pipeline takes one photo
    variants: tuple[str, ...] = ()
    hub: str = HUB_IP_ADAPTER

    def weight_name(self, family: str, variant: str, options: dict) -> str:
        if options.get("weight_name"):
            return options["weight_name"]
        key = (family, variant)
        if key not in WEIGHT_NAMES:
            raise ValueError(f"no published {variant!r} {self.name} file for {family}; pass weights=FILE")
        return WEIGHT_NAMES[key]

    def prepare(self, base_model, info, options):
        variant = options["variant"]
        if variant not in self.variants:
            raise ValueError(f"{self.name}: variant must be one of {', '.join(self.variants)}, not {variant!r}")
        if info.family not in ("sd1", "sdxl"):
            raise ValueError(f"{self.name} supports SD 1.x and SDXL base models; {base_model!r} is {info.family}")
        name = self.weight_name(info.family, variant, options)
        subfolders = ("", "models", "sdxl_models") if self.hub == HUB_IP_ADAPTER else ("",)
        path = resolve_file(options["weights"] or self.hub, name, subfolders, what=f"{self.name} weights")
        unet = empty_unet(base_model)
        state, kind = load_checked(path, unet, variant, options.get("lora"))
        records = [weights_record(path, f"{self.name} weights", options["weights"] or self.hub)]
        if options.get("lora"):
            lora = resolve_file(options["lora"], "ip-adapter-faceid_sd15_lora.safetensors", what="FaceID LoRA")
            records.append(weights_record(lora, "faceid lora", options["lora"]))
        return {"path": path, "kind": kind, "family": info.family}, records

    def apply(self, pipe, artifact, manifest):
        options = manifest.config["options"]
        record = manifest.config["weights"][0]  # the adapter file comes first
        path = Path(record["path"])
        state, kind = load_checked(path, pipe.unet, options["variant"], options.get("lora"))
        load_into(pipe, state, path, float(options["scale"]))
        self.after_load(pipe, options, manifest.config["weights"])
        return pipe

    def after_load(self, pipe, options, records=()):
        pass


@METHODS.register("ip-adapter")
class IPAdapter(_IPAdapterBase):
    """IP-Adapter with a CLIP image encoder; ``plus-face`` is the face-crop variant people use for likeness."""

    name = "ip-adapter"
    families = ("sd1", "sdxl")
    variants = ("plain", "plus", "plus-face")
    published_files = published_weights(HUB_IP_ADAPTER, variants) + (
        PublishedFile("image_encoder", "config.json", HUB_IP_ADAPTER, "models/image_encoder", "image encoder (ViT-H)",
                      (("family", "sd1"),)),
        *(PublishedFile("image_encoder", "config.json", HUB_IP_ADAPTER, "models/image_encoder", "image encoder (ViT-H)",
                        (("family", "sdxl"), ("variant", v))) for v in ("plus", "plus-face")),
        PublishedFile("image_encoder", "config.json", HUB_IP_ADAPTER, "sdxl_models/image_encoder",
                      "image encoder (ViT-bigG)", (("family", "sdxl"), ("variant", "plain"))),
    )
    defaults = {
        "variant": "plus-face",
        "weights": None,  # file, folder or hub id (default h94/IP-Adapter, the published file for the family/variant)
        "weight_name": None,
        "image_encoder": None,  # folder or hub id; default: image_encoder/ beside the weights (published layout)
        "image_encoder_subfolder": None,
        "scale": 1.0,  # the published models' training strength; lower it for more prompt freedom
        "face_backend": "dlib",
        "face_model_dir": None,
        "crop_size": 512,
        "subject": None,
    }

    def prepare(self, base_model, info, options):
        context, records = super().prepare(base_model, info, options)
        hub_default = None
        if options["image_encoder"] is None and not Path(str(options["weights"] or self.hub)).exists():
            # Published layout: SDXL plain uses ViT-bigG (sdxl_models/image_encoder), every other file ViT-H (models/).
            hub_default = (str(options["weights"] or self.hub),
                           "sdxl_models/image_encoder" if (info.family, options["variant"]) == ("sdxl", "plain") else "models/image_encoder")
        encoder, spec, subfolder = resolve_encoder(options["image_encoder"], options["image_encoder_subfolder"],
                                                   context["path"], hub_default)
        state = read_state_dict(context["path"])
        width = encoder.config.projection_dim if context["kind"] == "plain" else encoder.config.hidden_size
        wanted = state["image_proj.proj.weight"].shape[1] if context["kind"] == "plain" else state["image_proj.proj_in.weight"].shape[1]
        if width != wanted:
            raise CheckpointError(f"{context['path']}: expects image features of width {wanted}, but the image encoder "
                                  f"{spec!r} gives {width}; use the encoder published with these weights")
        context.update(encoder=encoder, backend=face_backend(options))
        return context, records + [encoder_record(encoder, spec, subfolder)]

    def encode(self, name, photos, context, options, out_dir):
        from likeness.methods.preparation import prepare_photo

        framing = "face" if options["variant"] == "plus-face" else "upper_body"
        photo = prepare_photo(photos[0], backend=context["backend"], size=int(options["crop_size"]), framing=framing)
        context.setdefault("notes", []).extend(without_folder(note, photos[0]) for note in photo.notes)
        save_crop(photo.image, out_dir, name)
        positive, negative = clip_features(context["encoder"], photo.image, hidden_states=context["kind"] != "plain")
        return {"image_embeds": positive[None], "negative_image_embeds": negative[None]}

    def call(self, personalized, prompts, tensors, **kwargs):
        pipe = personalized.pipe
        guidance = kwargs.get("guidance_scale", 5.0) > 1.0
        embeds = cfg_pair(tensors["negative_image_embeds"], tensors["image_embeds"], len(prompts), guidance,
                          pipe.unet.dtype, pipe.device)
        return pipe(prompt=prompts, ip_adapter_image_embeds=[embeds], **kwargs)


@METHODS.register("ip-adapter-faceid")
class IPAdapterFaceID(_IPAdapterBase):
    """IP-Adapter-FaceID: the ArcFace embedding of the face (plus, for Plus, CLIP features of the aligned face)."""

    name = "ip-adapter-faceid"
    hub = HUB_FACEID
    families = ("sd1", "sdxl")
    variants = ("faceid", "faceid-plus", "faceid-plusv2")
    published_files = published_weights(HUB_FACEID, variants) + tuple(
        PublishedFile("image_encoder", "config.json", FACEID_PLUS_ENCODER, "", "image encoder (ViT-H)", (("variant", v),))
        for v in ("faceid-plus", "faceid-plusv2"))
    defaults = {
        "variant": "faceid",
        "weights": None,  # file, folder or hub id (default h94/IP-Adapter-FaceID)
        "weight_name": None,
        "image_encoder": None,  # Plus only: CLIP ViT-H (laion/CLIP-ViT-H-14-laion2B-s32B-b79K in the published recipe)
        "image_encoder_subfolder": None,
        "scale": 1.0,
        "lora_scale": 1.0,  # the published recipe applies the LoRA at full strength
        "lora": None,  # the published separate *_lora.safetensors, for a FaceID file that does not carry its LoRA
        "shortcut_scale": 1.0,  # Plus v2: weight of the ID tokens added back ("s_scale")
        "face_backend": "arcface",
        "face_model_dir": None,  # InsightFace-style ONNX folder (buffalo_l in the published recipe)
        "subject": None,
    }

    def prepare(self, base_model, info, options):
        backend = arcface_for(self.name, options)
        context, records = super().prepare(base_model, info, options)
        state = read_state_dict(context["path"])
        check_face_dim(context["path"], backend, state["image_proj.proj.0.weight"].shape[1], options)
        context["backend"] = backend
        if context["kind"] == "faceid-plus":
            if options["image_encoder"] is None:
                raise FileNotFoundError(f"{options['variant']} also needs the CLIP image encoder it was trained with: "
                                        f"pass image_encoder=FOLDER_OR_HUB_ID (published: {FACEID_PLUS_ENCODER})")
            encoder, spec, subfolder = resolve_encoder(options["image_encoder"], options["image_encoder_subfolder"],
                                                       context["path"], None)
            wanted = state["image_proj.perceiver_resampler.proj_in.weight"].shape[1]
            if encoder.config.hidden_size != wanted:
                raise CheckpointError(f"{context['path']}: expects CLIP hidden states of width {wanted}, but the image "
                                      f"encoder {spec!r} gives {encoder.config.hidden_size}")
            context["encoder"] = encoder
            records.append(encoder_record(encoder, spec, subfolder))
        return context, records

    def encode(self, name, photos, context, options, out_dir):
        from likeness.faces.align import align_face

        image, face = largest_face(Path(photos[0]), context["backend"], context.get("notes"))
        embedding = torch.from_numpy(np.asarray(face.embedding, dtype=np.float32))[None, None]  # (1, 1, D)
        tensors = {"image_embeds": embedding, "negative_image_embeds": torch.zeros_like(embedding)}
        if context["kind"] == "faceid-plus":
            # The published recipe: the face aligned on the ArcFace template at 224 px, CLIP penultimate states.
            aligned = align_face(image, face.landmarks, 224)
            save_crop(aligned, out_dir, name)
            positive, negative = clip_features(context["encoder"], aligned, hidden_states=True)
            tensors.update(clip_embeds=positive[None], negative_clip_embeds=negative[None])
        return tensors

    def after_load(self, pipe, options, records=()):
        separate = next((Path(r["path"]) for r in records if r["role"] == "faceid lora"), None)
        if separate is not None:
            with diffusers_loading(separate, "this LoRA"):
                pipe.load_lora_weights(str(separate.parent), weight_name=separate.name, adapter_name="faceid_file")
        adapters = [a for a in getattr(pipe.unet, "peft_config", {}) if a.startswith("faceid_")]
        if adapters:
            pipe.fuse_lora(components=["unet"], lora_scale=float(options["lora_scale"]), adapter_names=adapters)
            pipe.unload_lora_weights()

    def call(self, personalized, prompts, tensors, **kwargs):
        pipe = personalized.pipe
        guidance = kwargs.get("guidance_scale", 5.0) > 1.0
        dtype, device, n = pipe.unet.dtype, pipe.device, len(prompts)
        embeds = cfg_pair(tensors["negative_image_embeds"], tensors["image_embeds"], n, guidance, dtype, device)
        if "clip_embeds" in tensors:
            layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
            layer.clip_embeds = cfg_pair(tensors["negative_clip_embeds"], tensors["clip_embeds"], n, guidance, dtype, device)
            options = personalized.manifest.config["options"]
            layer.shortcut = options["variant"] == "faceid-plusv2"
            layer.shortcut_scale = float(options["shortcut_scale"])
        return pipe(prompt=prompts, ip_adapter_image_embeds=[embeds], **kwargs)
