"""PhotoMaker (Li et al., 2024; v1): a stacked ID embedding merged into the class word of the prompt (SDXL).

Each ID photo goes through a CLIP ViT vision tower; its pooled output is projected twice (the tower's own
``visual_projection``, and ``visual_projection_2``) and the two are concatenated to the width of SDXL's
text tokens (768 + 1280 = 2048). In the prompt, the class word is followed by the trigger word
(``"a person img"``): the trigger is removed, the class word's token repeated once per ID photo, and each
copy's text embedding fused with one photo's ID embedding by the fuse module (an MLP on the
concatenation, added back, a residual MLP, a LayerNorm). A LoRA on the UNet, shipped in the same file, is
fused at full strength. As published (``start_merge_step = int(style_strength * steps)``), steps 0 to
``start_merge_step`` inclusive use the prompt without the ID (better prompt following), the rest the merged one.

Published file (``photomaker-v1.bin``): ``id_encoder.*`` = the CLIP vision tower (``vision_model.*``,
``visual_projection.weight``) + ``visual_projection_2.weight`` + ``fuse_module.{mlp1,mlp2}.{layernorm,fc1,fc2}``
+ ``fuse_module.layer_norm``; ``lora_weights.*`` = the UNet LoRA (any format diffusers' ``load_lora_weights``
reads). The tower's sizes are read from the file's shapes (64-wide attention heads, as published), so a
scaled-down file in the same layout loads through the same code.

``personalize`` stores the ID embeddings (one per photo: the stack); the fuse module and the LoRA are
loaded from the published file at generation (its sha256 is checked).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from likeness.methods.base import METHODS, PublishedFile
from likeness.methods.peers.common import (
    CheckpointError,
    TuningFreeMethod,
    arcface_for,
    check_face_dim,
    check_layout,
    diffusers_loading,
    empty_unet,
    face_backend,
    largest_face,
    raw_embedding,
    read_state_dict,
    resolve_file,
    save_crop,
    split_prefixes,
    weights_record,
    without_folder,
)

HUB = "TencentARC/PhotoMaker"
WEIGHT_NAMES = {"v1": "photomaker-v1.bin", "v2": "photomaker-v2.bin"}
HEAD_WIDTH = 64  # attention head width of the published CLIP ViT-L/14 tower (16 heads of 64)
V2_HEAD_WIDTH = 128  # the v2 face perceiver's heads (2048 / 16)
V2_TOKENS = 2  # ID tokens per photo in v2
LORA_SUFFIXES = (".lora.down.weight", ".lora.up.weight", ".lora_A.weight", ".lora_B.weight",
                 ".lora_down.weight", ".lora_up.weight", ".alpha")
DOWN_SUFFIXES = (".lora.down.weight", ".lora_A.weight", ".lora_down.weight")


class MLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear (+ input when ``residual``): the fuse module's building block."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, residual: bool):
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.residual = residual

    def forward(self, x):
        out = self.fc2(nn.functional.gelu(self.fc1(self.layernorm(x))))
        return out + x if self.residual else out


class FuseModule(nn.Module):
    """Merges a class-word embedding with an ID embedding of the same width."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp1 = MLP(2 * dim, dim, dim, residual=False)
        self.mlp2 = MLP(dim, dim, dim, residual=True)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, word: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        merged = self.mlp1(torch.cat([word, identity], dim=-1)) + word
        return self.layer_norm(self.mlp2(merged))


class IDEncoder(nn.Module):
    """The published ``id_encoder``: CLIP vision tower + two projections + the fuse module."""

    def __init__(self, vision_config, second_dim: int):
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        self.tower = CLIPVisionModelWithProjection(vision_config)
        self.visual_projection_2 = nn.Linear(vision_config.hidden_size, second_dim, bias=False)
        self.fuse_module = FuseModule(vision_config.projection_dim + second_dim)

    def state_dict_published(self) -> dict:
        """Parameter names as in the published file (the tower's own names at the top level)."""
        names = {}
        for key, value in self.state_dict().items():
            names[key[len("tower."):] if key.startswith("tower.") else key] = value
        return names

    def load_published(self, state: dict) -> None:
        self.load_state_dict({(f"tower.{k}" if k.startswith(("vision_model.", "visual_projection.")) else k): v
                              for k, v in state.items()}, strict=True)

    @torch.no_grad()
    def id_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(photos, 3, H, W) -> (photos, projection_dim + second_dim)."""
        pooled = self.tower.vision_model(pixel_values=pixels).pooler_output
        return torch.cat([self.tower.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)


class PerceiverAttention(nn.Module):
    """Latent queries attend to [image tokens, latents] (the resampler block of IP-Adapter / PhotoMaker v2).

    ``kv_width``: the width keys and values are made from (default ``dim``: the concatenation above);
    :meth:`attend` is the attention itself, shared with PuLID-FLUX's cross-attention blocks."""

    def __init__(self, dim: int, embed: int, heads: int, head_width: int, kv_width: int | None = None):
        super().__init__()
        self.heads, self.head_width = heads, head_width
        inner = heads * head_width
        self.norm1, self.norm2 = nn.LayerNorm(embed), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_width or dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def attend(self, queries: torch.Tensor, keys_values: torch.Tensor, float_softmax: bool = False) -> torch.Tensor:
        """``queries`` (B, n, dim) attend to ``keys_values`` (B, m, kv width); the scale is split between q and k as
        published (more stable in fp16); ``float_softmax``: the softmax in float32 (PuLID-FLUX)."""
        batch, n = queries.shape[:2]

        def heads(t):
            return t.view(batch, -1, self.heads, self.head_width).transpose(1, 2)

        q = heads(self.to_q(queries))
        k, v = (heads(t) for t in self.to_kv(keys_values).chunk(2, dim=-1))
        scale = self.head_width ** -0.25
        logits = (q * scale) @ (k * scale).transpose(-1, -2)
        weights = logits.float().softmax(dim=-1).to(q.dtype) if float_softmax else torch.softmax(logits, dim=-1)
        return self.to_out((weights @ v).transpose(1, 2).reshape(batch, n, -1))

    def forward(self, tokens, latents):
        tokens, latents = self.norm1(tokens), self.norm2(latents)
        return self.attend(latents, torch.cat([tokens, latents], dim=1))


def perceiver_layers(dim: int, heads: int, head_width: int, depth: int, ff_hidden: int | None = None) -> nn.ModuleList:
    """``depth`` resampler blocks, each ``[PerceiverAttention, feed-forward]`` (the published ``layers.<i>.0`` /
    ``layers.<i>.1`` keys of IP-Adapter's Resampler, PhotoMaker v2, PuLID v1.1 and InfiniteYou)."""
    ff_hidden = ff_hidden or 4 * dim
    return nn.ModuleList(
        nn.ModuleList([PerceiverAttention(dim, dim, heads, head_width),
                       nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_hidden, bias=False), nn.GELU(),
                                     nn.Linear(ff_hidden, dim, bias=False))])
        for _ in range(depth))


def perceive(layers, tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """``latents`` refined by each block of ``layers`` over ``tokens`` (residual attention, then residual feed-forward)."""
    for attention, feed_forward in layers:
        latents = attention(tokens, latents) + latents
        latents = feed_forward(latents) + latents
    return latents


class FacePerceiver(nn.Module):
    """PhotoMaker v2's ``qformer_perceiver``: ArcFace embedding -> ``tokens`` ID tokens, refined by a Perceiver
    resampler over the CLIP tower's last hidden states, added back to themselves."""

    def __init__(self, face_dim: int, dim: int, tokens: int, clip_width: int, heads: int, depth: int = 4):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.token_proj = nn.Sequential(nn.Linear(face_dim, 4 * face_dim), nn.GELU(), nn.Linear(4 * face_dim, dim * tokens))
        self.token_norm = nn.LayerNorm(dim)
        resampler = nn.Module()
        resampler.proj_in = nn.Linear(clip_width, dim)
        resampler.proj_out = nn.Linear(dim, dim)
        resampler.norm_out = nn.LayerNorm(dim)
        resampler.layers = perceiver_layers(dim, heads, V2_HEAD_WIDTH, depth)
        self.perceiver_resampler = resampler

    def forward(self, face: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        tokens = self.token_norm(self.token_proj(face).reshape(-1, self.tokens, self.dim))
        r = self.perceiver_resampler
        return tokens + r.norm_out(r.proj_out(perceive(r.layers, r.proj_in(hidden), tokens)))


class IDEncoderV2(IDEncoder):
    """PhotoMaker v2's ``id_encoder``: the v1 parts plus the face perceiver (2 ID tokens per photo)."""

    def __init__(self, vision_config, second_dim: int, face_dim: int, heads: int):
        super().__init__(vision_config, second_dim)
        dim = vision_config.projection_dim + second_dim
        self.qformer_perceiver = FacePerceiver(face_dim, dim, V2_TOKENS, vision_config.hidden_size, heads)

    @torch.no_grad()
    def id_embeddings(self, pixels: torch.Tensor, faces: torch.Tensor | None = None) -> torch.Tensor:
        """(photos, 3, H, W) + (photos, face_dim) -> (photos * 2, dim): two ID tokens per photo, in order."""
        hidden = self.tower.vision_model(pixel_values=pixels).last_hidden_state
        return self.qformer_perceiver(faces, hidden).flatten(0, 1)


def vision_config_from(path, state: dict):
    """The tower's configuration read from the published shapes (heads: 64 wide, as published)."""
    from transformers import CLIPVisionConfig

    def shape(key):
        if key not in state:
            raise CheckpointError(f"{path}: missing key id_encoder.{key}")
        return tuple(state[key].shape)

    hidden, _, patch, _ = shape("vision_model.embeddings.patch_embedding.weight")
    positions = shape("vision_model.embeddings.position_embedding.weight")[0]
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise CheckpointError(f"{path}: id_encoder.vision_model.embeddings.position_embedding.weight has {positions} rows, "
                              f"not 1 + a square number of patches")
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
    intermediate = shape("vision_model.encoder.layers.0.mlp.fc1.weight")[0]
    projection = shape("visual_projection.weight")[0]
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                            num_attention_heads=max(1, hidden // HEAD_WIDTH), image_size=side * patch, patch_size=patch,
                            projection_dim=projection)


LEGACY_LORA = re.compile(r"^(.*?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def lora_module(key: str) -> tuple[str | None, str | None]:
    """(UNet module name, down/up/alpha) of one LoRA key, in any of the formats diffusers' ``load_lora_weights``
    reads for a UNet: ``<layer>.lora.down.weight`` / ``lora_A`` / ``lora_down``, and the attention-processor
    format of diffusers' LoRAAttnProcessor era, ``<attention>.processor.to_q_lora.down.weight``."""
    legacy = LEGACY_LORA.match(key)
    if legacy:
        prefix, projection, kind = legacy.groups()
        name = f"{prefix}.{projection}" + (".0" if projection == "to_out" else "")
    else:
        suffix = next((s for s in LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            return None, None
        name = key[: -len(suffix)].replace(".processor", "")
        kind = "alpha" if suffix == ".alpha" else ("down" if suffix in DOWN_SUFFIXES else "up")
    return (name[len("unet."):] if name.startswith("unet.") else name), kind


def check_lora(path, lora: dict, unet) -> None:
    """Every LoRA key must name a UNet linear layer and fit its size (checked on the meta-device UNet)."""
    modules = dict(unet.named_modules())
    unknown, wrong = [], []
    for key, value in sorted(lora.items()):
        module_name, kind = lora_module(key)
        module = modules.get(module_name) if module_name else None
        if not isinstance(module, nn.Linear):
            unknown.append(f"lora_weights.{key}")
            continue
        if kind == "down" and value.shape[1] != module.in_features:
            wrong.append(f"lora_weights.{key} is {tuple(value.shape)}, the layer takes {module.in_features}")
        if kind == "up" and value.shape[0] != module.out_features:
            wrong.append(f"lora_weights.{key} is {tuple(value.shape)}, the layer gives {module.out_features}")
    if unknown or wrong:
        parts = ([f"keys naming no UNet linear layer: {', '.join(unknown[:5])}"] if unknown else []) + \
                ([f"wrong shapes: {', '.join(wrong[:5])}"] if wrong else [])
        raise CheckpointError(f"{path}: LoRA does not fit this base model's UNet; " + "; ".join(parts))


def load_photomaker(path: Path, base_model: str | None, unet=None, text_widths: tuple[int, int] | None = None,
                    version: str | None = None):
    """Read and check a published PhotoMaker file; returns (IDEncoder with weights, LoRA state)."""
    state = read_state_dict(path)
    nested = split_prefixes(state, ("id_encoder", "lora_weights"))
    if not nested["id_encoder"]:
        raise CheckpointError(f"{path}: not a PhotoMaker file (needs id_encoder.* and lora_weights.* keys; found "
                              f"{', '.join(sorted(state)[:5]) or 'no keys'})")
    encoder_state = nested["id_encoder"]
    found = "v2" if any(k.startswith("qformer_perceiver.") for k in encoder_state) else "v1"
    if version is not None and found != version:
        raise CheckpointError(f"{path}: is a PhotoMaker {found} file, but version {version!r} was asked"
                              + (" (v2 files have id_encoder.qformer_perceiver.*)" if found == "v2" else ""))
    config = vision_config_from(path, encoder_state)
    second = encoder_state.get("visual_projection_2.weight")
    if second is None:
        raise CheckpointError(f"{path}: missing key id_encoder.visual_projection_2.weight")
    unet = unet if unet is not None else empty_unet(base_model)
    id_width = config.projection_dim + second.shape[0]
    if id_width != unet.config.cross_attention_dim:
        raise CheckpointError(f"{path}: ID embeddings of width {id_width} (made for a base model whose text tokens are that "
                              f"wide); this base model's UNet takes {unet.config.cross_attention_dim}")
    if text_widths is not None and (config.projection_dim, second.shape[0]) != tuple(text_widths):
        raise CheckpointError(f"{path}: ID halves {config.projection_dim} + {second.shape[0]} do not match the text encoders' "
                              f"widths {text_widths[0]} + {text_widths[1]}")
    from accelerate import init_empty_weights

    def build():
        if found == "v1":
            return IDEncoder(config, second.shape[0])
        face_dim = encoder_state.get("qformer_perceiver.token_proj.0.weight", torch.zeros(1, 512)).shape[1]
        q = encoder_state.get("qformer_perceiver.perceiver_resampler.layers.0.0.to_q.weight")
        heads = max(1, (q.shape[0] if q is not None else id_width) // V2_HEAD_WIDTH)
        return IDEncoderV2(config, second.shape[0], face_dim, heads)

    with init_empty_weights():
        shapes = {k: tuple(v.shape) for k, v in build().state_dict_published().items()}
    check_layout(path, {f"id_encoder.{k}": v for k, v in encoder_state.items()},
                 {f"id_encoder.{k}": v for k, v in shapes.items()}, "PhotoMaker id_encoder")
    if not nested["lora_weights"]:
        raise CheckpointError(f"{path}: PhotoMaker file without its LoRA (lora_weights.*); the published recipe needs it")
    check_lora(path, nested["lora_weights"], unet)
    encoder = build()
    encoder.load_published(encoder_state)
    encoder.eval()
    return encoder, nested["lora_weights"]


def trigger_ids(tokenizer, prompt: str, trigger: str, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with the trigger word removed and the class word before it repeated ``copies`` times,
    padded to the tokenizer's length, and the mask of those copies."""
    trigger_id = tokenizer.convert_tokens_to_ids(trigger)
    ids = tokenizer(prompt).input_ids
    clean, class_index = [], []
    for token in ids:
        if token == trigger_id:
            class_index.append(len(clean) - 1)
        else:
            clean.append(token)
    if len(class_index) != 1 or class_index[0] < 1:
        raise ValueError(f"PhotoMaker prompt {prompt!r} needs exactly one trigger word {trigger!r}, right after the class word")
    index = class_index[0]
    clean = clean[:index] + [clean[index]] * copies + clean[index + 1:]
    length = tokenizer.model_max_length
    clean = (clean + [tokenizer.pad_token_id] * length)[:length]
    mask = torch.zeros(length, dtype=torch.bool)
    mask[index: index + copies] = True
    return torch.tensor([clean]), mask


@METHODS.register("photomaker")
class PhotoMaker(TuningFreeMethod):
    name = "photomaker"
    families = ("sdxl",)
    # v2 also takes the ArcFace embedding: choosing its file chooses the arcface face stack (and its model folder).
    published_files = (PublishedFile("weights", WEIGHT_NAMES["v1"], HUB, "", "PhotoMaker v1", (("version", "v1"),)),
                       PublishedFile("weights", WEIGHT_NAMES["v2"], HUB + "-V2", "", "PhotoMaker v2",
                                     (("version", "v2"), ("face_backend", "arcface"))))
    defaults = {
        "version": "v1",  # v1, or v2 (adds the ArcFace embedding: face_backend=arcface + face_model_dir)
        "weights": None,  # photomaker-v1.bin / -v2.bin: file, folder or hub id (default TencentARC/PhotoMaker(-V2))
        "weight_name": None,
        "trigger_word": "img",
        "class_word": "person",  # published demos use man / woman / girl / boy
        "style_strength": 0.2,  # share of steps without the ID (the published style_strength_ratio 20)
        "lora_scale": 1.0,
        "face_backend": "dlib",
        "face_model_dir": None,
        "crop_size": 512,
        "subject": None,
    }

    def subject_for(self, name, options):
        return options.get("subject") or f"a {options['class_word']} {options['trigger_word']}"

    def prepare(self, base_model, info, options):
        if info.family != "sdxl":
            raise ValueError(f"photomaker is published for SDXL only; {base_model!r} is {info.family}")
        version = options["version"]
        if version not in WEIGHT_NAMES:
            raise ValueError(f"photomaker: version must be v1 or v2, not {version!r}")
        context = {}
        if version == "v2":
            context["faces"] = arcface_for("photomaker v2", options)
        spec = options["weights"] or (HUB if version == "v1" else HUB + "-V2")
        path = resolve_file(spec, options["weight_name"] or WEIGHT_NAMES[version], what="PhotoMaker weights")
        encoder, _ = load_photomaker(path, base_model, version=version)
        if version == "v2":
            check_face_dim(path, context["faces"], encoder.qformer_perceiver.token_proj[0].in_features, options)
        # v1 frames the person with the dlib stack; v2 uses its ArcFace stack for both.
        context.update(encoder=encoder, backend=context.get("faces") or face_backend(options))
        return context, [weights_record(path, "photomaker weights", spec)]

    def encode(self, name, photos, context, options, out_dir):
        from transformers import CLIPImageProcessor

        from likeness.methods.preparation import prepare_photo

        encoder = context["encoder"]
        size = encoder.tower.config.image_size
        processor = CLIPImageProcessor(size=size, crop_size=size)  # CLIP preprocessing at the tower's input size
        crops, faces = [], []
        for k, photo in enumerate(photos):
            prepared = prepare_photo(photo, backend=context["backend"], size=int(options["crop_size"]), framing="upper_body")
            context.setdefault("notes", []).extend(without_folder(note, photo) for note in prepared.notes)
            save_crop(prepared.image, out_dir, name, f"crop{k}")
            crops.append(prepared.image)
            if "faces" in context:
                # un-normalised, as published; several faces were noted by prepare_photo (the same face stack)
                faces.append(raw_embedding(largest_face(Path(photo), context["faces"])[1], photo))
        pixels = processor(crops, return_tensors="pt").pixel_values
        if faces:  # v2: two ID tokens per photo from the ArcFace embedding and the tower's last hidden states
            return {"id_embeds": encoder.id_embeddings(pixels, torch.from_numpy(np.stack(faces)).float())}
        return {"id_embeds": encoder.id_embeddings(pixels)}

    def apply(self, pipe, artifact, manifest):
        options = manifest.config["options"]
        path = Path(manifest.config["weights"][0]["path"])
        widths = (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size)
        encoder, lora = load_photomaker(path, None, unet=pipe.unet, text_widths=widths, version=options["version"])
        pipe.photomaker_fuse = encoder.fuse_module.to(pipe.device, pipe.unet.dtype)
        for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
            tokenizer.add_tokens([options["trigger_word"]], special_tokens=True)
        with diffusers_loading(path, "its LoRA"):
            pipe.load_lora_weights({f"unet.{k}" if not k.startswith("unet.") else k: v for k, v in lora.items()},
                                   adapter_name="photomaker")
        pipe.fuse_lora(components=["unet"], lora_scale=float(options["lora_scale"]), adapter_names=["photomaker"])
        pipe.unload_lora_weights()
        return pipe

    @torch.no_grad()
    def merged_embeddings(self, pipe, prompt: str, id_embeds: torch.Tensor, trigger: str):
        """(prompt embeddings with the ID fused into the class word, pooled embedding), as published."""
        copies = id_embeds.shape[0]
        hidden, mask, pooled = [], None, None
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids, mask = trigger_ids(tokenizer, prompt, trigger, copies)
            out = encoder(ids.to(pipe.device), output_hidden_states=True)
            pooled = out[0]
            hidden.append(out.hidden_states[-2])
        embeds = torch.cat(hidden, dim=-1)[0]  # (77, 2048)
        fused = pipe.photomaker_fuse(embeds[mask], id_embeds.to(embeds.dtype))
        embeds = embeds.clone()
        embeds[mask] = fused
        return embeds[None], pooled

    def call(self, personalized, prompts, tensors, **kwargs):
        pipe = personalized.pipe
        options = personalized.manifest.config["options"]
        trigger = options["trigger_word"]
        device, dtype = pipe.device, pipe.unet.dtype
        merged, pooled = zip(*(self.merged_embeddings(pipe, p, tensors["id_embeds"], trigger) for p in prompts))
        merged, pooled = torch.cat(merged).to(dtype), torch.cat(pooled).to(dtype)
        text_only = [p.replace(" " + trigger, "") for p in prompts]
        negative = kwargs.pop("negative_prompt", None)
        guidance = kwargs.get("guidance_scale", 5.0) > 1.0
        plain, negative_embeds, plain_pooled, negative_pooled = pipe.encode_prompt(
            prompt=text_only, device=device, num_images_per_prompt=1, do_classifier_free_guidance=guidance,
            negative_prompt=negative)
        steps = int(kwargs.get("num_inference_steps") or 50)
        start = int(float(options["style_strength"]) * steps)  # the published start_merge_step

        def switch(pipeline, step, timestep, tensors_in):
            # As published, steps 0..start (inclusive) are text-only; the merged prompt takes over after step ``start``.
            if step != start:
                return {}
            both = torch.cat([negative_embeds, merged]) if guidance else merged
            both_pooled = torch.cat([negative_pooled, pooled]) if guidance else pooled
            return {"prompt_embeds": both, "add_text_embeds": both_pooled}

        return pipe(prompt_embeds=plain, pooled_prompt_embeds=plain_pooled, negative_prompt_embeds=negative_embeds,
                    negative_pooled_prompt_embeds=negative_pooled, callback_on_step_end=switch,
                    callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"], **kwargs)
