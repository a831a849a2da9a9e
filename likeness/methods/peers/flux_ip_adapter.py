"""FLUX IP-Adapter (XLabs, 2024): IP-Adapter's decoupled image attention on FLUX.1 [dev]'s double-stream blocks.

The published file (hub ``XLabs-AI/flux-ip-adapter``, ``ip_adapter.safetensors`` in diffusers' docs,
``flux-ip-adapter.safetensors`` in x-flux's scripts: either is found) holds

- ``ip_adapter_proj_model.proj`` (Linear: CLIP ViT-L/14 image embedding, 768 -> 4 tokens x 4096) and
  ``ip_adapter_proj_model.norm`` (LayerNorm 4096): the image tokens, in T5's width (FLUX's joint-attention dim);
- ``double_blocks.<i>.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}`` (Linear 4096 -> 3072) for each
  of FLUX.1's 19 double-stream blocks: the image keys / values the block's image queries also attend to, added to
  the block's output with a settable ``scale``. Single-stream blocks get nothing.

Loading, key conversion and the attention are **diffusers' own** (``FluxIPAdapterMixin.load_ip_adapter`` reads the
XLabs names and builds ``FluxIPAdapterAttnProcessor``); likeness checks the file against the base model first (keys,
shapes, depth, width: a mismatch names the file and the keys, where diffusers would raise a bare ``KeyError`` or
silently ignore surplus blocks) and stores the person's CLIP embeddings, so generation feeds
``ip_adapter_image_embeds`` and no image encoder runs at generation time.

Published usage (diffusers' FLUX docs): ``set_ip_adapter_scale(1.0)``, ``true_cfg_scale=4.0`` with a negative prompt
(``""``), the pipeline's defaults otherwise (28 steps, distilled guidance 3.5). With true CFG the negative branch
gets the encoder's answer to a black image, as diffusers computes it itself (stored as ``negative_image_embeds``).

Which crop: XLabs trained a general image prompt (whole images through CLIP's resize + centre crop to 224 px), and the
InfiniteYou paper, which reports FLUX IP-Adapter at ID loss 0.772 (against 0.225 PuLID-FLUX, 0.209 InfiniteYou),
does not say which crop it fed it. For likeness the default is ``framing="face"``: the face-centred square crop
IP-Adapter Plus-Face uses (the face fills most of CLIP's 224 px), so the adapter sees the identity rather than the
background; ``upper_body`` and ``full`` (the whole photo as XLabs' examples feed it; needs no face) are the others.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from likeness.methods.base import METHODS, PublishedFile
from likeness.methods.peers.common import (
    CheckpointError,
    TuningFreeMethod,
    check_layout,
    diffusers_loading,
    face_backend,
    flux_transformer_config,
    read_shapes,
    require_flux1,
    resolve_file,
    save_crop,
    weights_record,
    without_folder,
)
from likeness.methods.peers.ip_adapter import clip_features, clip_processor, encoder_record, resolve_encoder

HUB = "XLabs-AI/flux-ip-adapter"
WEIGHT_NAME = "ip_adapter.safetensors"  # diffusers' FLUX docs
XFLUX_WEIGHT_NAME = "flux-ip-adapter.safetensors"  # x-flux's scripts
HUB_ENCODER = "openai/clip-vit-large-patch14"
PROJ = "ip_adapter_proj_model."
LAYERS = "double_blocks."
KEY_PROJ, VALUE_PROJ = "ip_adapter_double_stream_k_proj", "ip_adapter_double_stream_v_proj"
FRAMINGS = ("face", "upper_body", "full")


def image_tokens(proj_rows: int) -> int:
    """Image tokens per embedding, decided as diffusers decides it: 16 when ``proj`` has 65536 rows, else 4."""
    return 16 if proj_rows == 65536 else 4


def expected_layout(shapes: dict, config: dict) -> dict[str, tuple]:
    """Every key and shape an XLabs FLUX IP-Adapter file for a transformer with ``config`` holds."""
    joint = config["joint_attention_dim"]
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    embed = shapes.get(f"{PROJ}proj.weight", (0, 0))[-1]
    tokens = image_tokens(shapes.get(f"{PROJ}proj.weight", (0,))[0])
    expected = {f"{PROJ}proj.weight": (tokens * joint, embed), f"{PROJ}proj.bias": (tokens * joint,),
                f"{PROJ}norm.weight": (joint,), f"{PROJ}norm.bias": (joint,)}
    for i in range(config["num_layers"]):
        for proj in (KEY_PROJ, VALUE_PROJ):
            expected[f"{LAYERS}{i}.processor.{proj}.weight"] = (inner, joint)
            expected[f"{LAYERS}{i}.processor.{proj}.bias"] = (inner,)
    return expected


def check_file(path: Path, base_model: str, config: dict) -> dict[str, tuple]:
    """Refuse anything but an XLabs FLUX IP-Adapter file made for this transformer (read from the header only);
    returns the file's ``{key: shape}``."""
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: XLabs publishes the FLUX IP-Adapter as safetensors (ip_adapter.safetensors), and "
                              f"diffusers reads the XLabs key names only from a .safetensors file; pass that file")
    shapes = read_shapes(path)
    if not any(k.startswith(PROJ) for k in shapes) or not any(k.startswith(LAYERS) for k in shapes):
        hint = ""
        if any(k.startswith(("image_proj.", "ip_adapter.")) for k in shapes):
            hint = " (its image_proj.* / ip_adapter.* keys are an SD / SDXL IP-Adapter's: use method ip-adapter on such a base)"
        raise CheckpointError(f"{path}: not an XLabs FLUX IP-Adapter file (needs {PROJ}* and {LAYERS}<i>.processor.* keys; "
                              f"found {', '.join(sorted(shapes)[:5]) or 'no keys'}){hint}")
    blocks = sorted({int(k.split(".")[1]) for k in shapes if k.startswith(LAYERS) and k.split(".")[1].isdigit()})
    key = f"{LAYERS}0.processor.{KEY_PROJ}.weight"
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    if key in shapes and (len(blocks) != config["num_layers"] or tuple(shapes[key]) != (inner, config["joint_attention_dim"])):
        out, joint = shapes[key]
        raise CheckpointError(f"{path}: made for a FLUX transformer with {len(blocks)} double-stream blocks of width {out} "
                              f"(joint-attention dim {joint}), but {base_model!r} has {config['num_layers']} of width {inner} "
                              f"(joint-attention dim {config['joint_attention_dim']}); use the adapter published for this base "
                              f"(XLabs-AI/flux-ip-adapter is for FLUX.1 [dev]: 19 blocks of 3072)")
    check_layout(path, shapes, expected_layout(shapes, config), "XLabs FLUX IP-Adapter")
    return shapes


@torch.no_grad()
def black_image_embeds(encoder) -> torch.Tensor:
    """What FluxPipeline encodes as the negative image when none is given: a black image through CLIP's processor."""
    pixels = clip_processor(encoder)(Image.new("RGB", (64, 64)), return_tensors="pt").pixel_values
    return encoder(pixels.to(encoder.device, encoder.dtype)).image_embeds


@METHODS.register("flux-ip-adapter")
class FluxIPAdapter(TuningFreeMethod):
    """XLabs' FLUX IP-Adapter through diffusers' loader: the person's CLIP image embedding as 4 extra tokens in
    every double-stream block of FLUX.1 [dev]."""
    photos_encoded = 1  # the published pipeline takes one photo

    name = "flux-ip-adapter"
    families = ("flux1",)
    published_files = (
        PublishedFile("weights", WEIGHT_NAME, HUB, role="FLUX IP-Adapter weights"),
        PublishedFile("image_encoder", "model.safetensors", HUB_ENCODER, role="CLIP ViT-L/14 image encoder"),
    )
    defaults = {
        "weights": None,  # file, folder or hub id (default XLabs-AI/flux-ip-adapter, ip_adapter.safetensors)
        "weight_name": None,  # the file's name in a folder / hub repository (default: either published name)
        "image_encoder": None,  # folder or hub id; default image_encoder/ beside the weights, else openai/clip-vit-large-patch14
        "image_encoder_subfolder": None,
        "scale": 1.0,  # the published usage (diffusers' FLUX docs)
        "true_cfg_scale": 4.0,  # published: true classifier-free guidance 4.0 ...
        "negative_prompt": "",  # ... with this negative prompt when the run gives none
        "framing": "face",  # face | upper_body | full (whole photo, no face needed)
        "face_backend": "dlib",
        "face_model_dir": None,
        "crop_size": 512,
        "subject": None,
    }
    default_sampling = {"flux1": {"num_inference_steps": 28, "guidance_scale": 3.5}}

    def prepare(self, base_model, info, options):
        if options["framing"] not in FRAMINGS:
            raise ValueError(f"{self.name}: framing must be one of {', '.join(FRAMINGS)}, not {options['framing']!r}")
        require_flux1(info, base_model, f"{self.name}: the XLabs FLUX IP-Adapter ({options['weights'] or HUB}) is",
                      "method ip-adapter on an SD 1.x / SDXL base")
        path = self.weights_path(options)
        shapes = check_file(path, base_model, flux_transformer_config(base_model))
        # The encoder: given, else image_encoder/ beside the file, else the published one (its own hub repository).
        encoder, spec, subfolder = resolve_encoder(options["image_encoder"], options["image_encoder_subfolder"], path,
                                                   (HUB_ENCODER, None))
        if options.get("device"):
            encoder.to(options["device"])  # float32 as loaded: the embeddings are stored in float32
        wanted = shapes[f"{PROJ}proj.weight"][1]
        if encoder.config.projection_dim != wanted:
            raise CheckpointError(f"{path}: expects CLIP image embeddings of width {wanted}, but the image encoder {spec!r} "
                                  f"gives {encoder.config.projection_dim}; use the encoder published with these weights "
                                  f"({HUB_ENCODER})")
        backend = face_backend(options) if options["framing"] != "full" else None
        records = [weights_record(path, f"{self.name} weights", options["weights"] or HUB),
                   encoder_record(encoder, spec, subfolder)]
        return {"path": path, "encoder": encoder, "backend": backend}, records

    @staticmethod
    def weights_path(options) -> Path:
        """The weights file: ``weight_name`` in the folder / hub repository, else diffusers' documented name, else
        x-flux's (the hub repository has carried both)."""
        spec = options["weights"] or HUB
        names = [options["weight_name"]] if options["weight_name"] else [WEIGHT_NAME, XFLUX_WEIGHT_NAME]
        for name in names:
            try:
                return resolve_file(spec, name, what=f"{FluxIPAdapter.name} weights")
            except FileNotFoundError as exc:
                error = exc
        if Path(str(spec)).expanduser().is_dir():
            raise FileNotFoundError(f"{spec}: folder has no {FluxIPAdapter.name} weights file (looked for "
                                    f"{', '.join(names)}); pass the file itself, or weight_name=NAME") from None
        raise error

    def encode(self, name, photos, context, options, out_dir):
        from likeness.data.images import load_image
        from likeness.methods.preparation import prepare_photo

        if options["framing"] == "full":
            image = load_image(Path(photos[0]))
        else:
            photo = prepare_photo(photos[0], backend=context["backend"], size=int(options["crop_size"]),
                                  framing=options["framing"])
            context.setdefault("notes", []).extend(without_folder(note, photos[0]) for note in photo.notes)
            image = photo.image
        save_crop(image, out_dir, name)
        positive, _ = clip_features(context["encoder"], image, hidden_states=False)
        return {"image_embeds": positive[None], "negative_image_embeds": black_image_embeds(context["encoder"])[None]}

    def apply(self, pipe, artifact, manifest):
        options = manifest.config["options"]
        path = Path(manifest.config["weights"][0]["path"])
        check_file(path, manifest.base_model.model_id, dict(pipe.transformer.config))
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its warning that no image encoder is loaded: none is needed here
        try:
            with diffusers_loading(path):
                # diffusers' own reader: XLabs names -> diffusers names, FluxIPAdapterAttnProcessor in every double
                # block, built on the transformer's device and in its dtype. No image encoder: the embeddings are stored.
                pipe.load_ip_adapter(str(path.parent), weight_name=path.name, subfolder="",
                                     image_encoder_pretrained_model_name_or_path=None)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        pipe.set_ip_adapter_scale(float(options["scale"]))
        return pipe

    def call(self, personalized, prompts, tensors, **kwargs):
        pipe = personalized.pipe
        options = personalized.manifest.config["options"]
        n, dtype, device = len(prompts), pipe.transformer.dtype, pipe.device
        true_cfg = float(options["true_cfg_scale"])
        if true_cfg > 1 and not kwargs.get("negative_prompt"):
            kwargs["negative_prompt"] = [options["negative_prompt"]] * n

        def batch(key):  # (1, 1, D) -> (n, 1, D): one image embedding per prompt
            return [tensors[key].expand(n, *tensors[key].shape[1:]).to(device=device, dtype=dtype)]

        return pipe(prompt=prompts, ip_adapter_image_embeds=batch("image_embeds"),
                    negative_ip_adapter_image_embeds=batch("negative_image_embeds"), true_cfg_scale=true_cfg, **kwargs)
