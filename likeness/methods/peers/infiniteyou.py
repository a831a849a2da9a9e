"""InfiniteYou (Jiang et al., ICCV 2025; ByteDance): identity on FLUX.1 [dev] through InfuseNet.

InfuseNet is a diffusers ``FluxControlNetModel`` (4 double-stream and 10 single-stream blocks in the
published files, as DiffSynth-Studio's loader for them records; their config.json was not at hand offline): its
residuals are added to FLUX's blocks as any FLUX ControlNet's are, but its text context is
**the identity tokens, not the prompt**. The face's ArcFace embedding (512-d, L2-normalised) goes through
a Perceiver resampler (``image_proj_model.bin``: ``{"image_proj": {...}}``, 8 queries of width 1280,
4 blocks of 20 heads, out to 4096 = FLUX's T5 width) giving 8 ID tokens; InfuseNet attends to them with
all-zero text positions, and its guidance input is 1.0 (FLUX itself gets the usual 3.5). The control
image is black (the published default without a pose photo), or, with ``keypoints=True``, the photo's
5 keypoints drawn as InstantID draws them.

Published layout (hub ``ByteDance/InfiniteYou``): ``infu_flux_v1.0/<variant>/InfuseNetModel/`` (a
diffusers model folder: ``config.json`` + two safetensors shards and their index) and
``infu_flux_v1.0/<variant>/image_proj_model.bin``; variants ``aes_stage2`` (the default: after SFT,
better text alignment and aesthetics) and ``sim_stage1`` (higher identity similarity). Defaults follow
the published ``test.py``: 30 steps, guidance 3.5, InfuseNet scale 1.0 from step 0 to the end; the
published demo renders 864x1152 (pass ``width=864, height=1152``).

The published code embeds the face with facexlib's ``arcface`` (an IR-SE50 recogniser, not the
``antelopev2`` pack's ``glintr100``; antelopev2 only detects) on the aligned 112 px crop **in BGR channel
order**; here the crop is given to the ``arcface`` backend's recogniser in the same BGR order, and its
L2-normalised output is used. ``personalize`` stores that embedding (and the keypoints); the projection
runs at generation.

In the denoising loop (diffusers' ``FluxControlNetPipeline`` with :class:`InfuseNet`), the initial noise
is drawn first from each image's generator, as plain FLUX draws it; the black control image's VAE latents
are then sampled from the same generators (the published code samples them from the global RNG). So
``conditioning_scale=0`` gives plain FLUX's pixels for the same seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from likeness.methods.base import METHODS, PublishedFile
from likeness.methods.peers.common import (
    CheckpointError,
    TuningFreeMethod,
    arcface_for,
    check_face_dim,
    check_layout,
    config_value,
    diffusers_loading,
    flux_transformer_config,
    pick_face,
    read_shapes,
    read_state_dict,
    recorded_file,
    require_flux1,
    resolve_file,
    save_crop,
    weights_record,
)
from likeness.methods.peers.instantid import draw_keypoints, frame_points
from likeness.methods.peers.ip_adapter import RESAMPLER_DEPTH, resampler_layout
from likeness.methods.peers.photomaker import perceive, perceiver_layers
from likeness.models.pretrained import ModelUnavailableError

HUB = "ByteDance/InfiniteYou"
RELEASE = "infu_flux_v1.0"
VARIANTS = ("aes_stage2", "sim_stage1")
PROJECTION_FILE = "image_proj_model.bin"
INFUSENET_FOLDER = "InfuseNetModel"
SHARDS = ("diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors")
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_FILE = "diffusion_pytorch_model.safetensors"
HEAD_WIDTH = 64  # the resampler's heads (20 x 64 = 1280 in the published file)
# InfuseNet's config entries that must equal the FLUX transformer's (residual widths, token widths, rotary axes).
MATCHING_CONFIG = ("in_channels", "patch_size", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                   "pooled_projection_dim", "axes_dims_rope")


def _published(variant: str) -> tuple[PublishedFile, ...]:
    folder = f"{RELEASE}/{variant}"
    when = (("variant", variant),)
    return (PublishedFile("weights", PROJECTION_FILE, HUB, folder, "ID projection (resampler)", when),
            PublishedFile("weights", "config.json", HUB, f"{folder}/{INFUSENET_FOLDER}", "InfuseNet config", when),
            PublishedFile("weights", INDEX_FILE, HUB, f"{folder}/{INFUSENET_FOLDER}", "InfuseNet weights index", when),
            *(PublishedFile("weights", shard, HUB, f"{folder}/{INFUSENET_FOLDER}", "InfuseNet weights", when)
              for shard in SHARDS))


# -- the ID projection -------------------------------------------------------------------------------------


class IDProjection(nn.Module):
    """ArcFace embedding (batch, 1, embed) -> ID tokens (batch, queries, output): learned queries refined by
    ``depth`` Perceiver blocks over [projected embedding, queries], then projected and layer-normed.
    Module names follow the published ``image_proj`` keys."""

    def __init__(self, embed: int, dim: int, queries: int, output: int, heads: int, depth: int = RESAMPLER_DEPTH):
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, queries, dim))
        self.proj_in = nn.Linear(embed, dim)
        self.proj_out = nn.Linear(dim, output)
        self.norm_out = nn.LayerNorm(output)
        self.layers = perceiver_layers(dim, heads, HEAD_WIDTH, depth)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        latents = perceive(self.layers, self.proj_in(embedding), self.latents.repeat(embedding.shape[0], 1, 1))
        return self.norm_out(self.proj_out(latents))


def load_projection(path: Path) -> IDProjection:
    """The published ``image_proj_model.bin`` (``image_proj.*`` keys), checked key by key and shape by shape."""
    state = read_state_dict(path)
    expected, width, embed = resampler_layout(state, "image_proj.", path)
    latents = state.get("image_proj.latents")
    proj_out = state.get("image_proj.proj_out.weight")
    if latents is None or latents.dim() != 3 or proj_out is None or proj_out.dim() != 2:
        check_layout(path, state, {**expected, "image_proj.latents": None, "image_proj.proj_out.weight": None},
                     "InfiniteYou ID projection")
        raise CheckpointError(f"{path}: image_proj.latents must be (1, queries, width) and image_proj.proj_out.weight "
                              f"(output, width)")
    queries, output = latents.shape[1], proj_out.shape[0]
    inner = state["image_proj.layers.0.0.to_q.weight"].shape[0]
    expected.update({"image_proj.latents": (1, queries, width), "image_proj.proj_out.weight": (output, width),
                     "image_proj.proj_out.bias": (output,), "image_proj.norm_out.weight": (output,),
                     "image_proj.norm_out.bias": (output,)})
    check_layout(path, state, expected, "InfiniteYou ID projection")
    model = IDProjection(embed, width, queries, output, inner // HEAD_WIDTH)
    model.load_state_dict({k[len("image_proj."):]: v for k, v in state.items()}, strict=True)
    return model.eval()


# -- InfuseNet ---------------------------------------------------------------------------------------------


def _infusenet_class():
    from diffusers import FluxControlNetModel

    class InfuseNet(FluxControlNetModel):
        """A FLUX ControlNet whose text context is the identity tokens (set per call), at text positions 0,
        with its own distilled-guidance value (the published pipeline's ``controlnet_guidance_scale``)."""

        identity_tokens: torch.Tensor | None = None
        guidance_value: float = 1.0

        def forward(self, hidden_states, controlnet_cond, *args, encoder_hidden_states=None, txt_ids=None,
                    guidance=None, **kwargs):
            if self.identity_tokens is not None:
                encoder_hidden_states = self.identity_tokens.to(device=hidden_states.device, dtype=hidden_states.dtype)
                txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3, device=hidden_states.device,
                                      dtype=hidden_states.dtype)
                if guidance is not None:
                    guidance = torch.full_like(guidance, self.guidance_value)
            return super().forward(hidden_states, controlnet_cond, *args, encoder_hidden_states=encoder_hidden_states,
                                   txt_ids=txt_ids, guidance=guidance, **kwargs)

    return InfuseNet


def infusenet_files(folder: Path) -> list[Path]:
    """InfuseNet's weights files: the shards its index names, or one ``diffusion_pytorch_model.safetensors``."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index}: not a safetensors index (no weight_map)") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: the InfuseNet index names {', '.join(missing)}, not in the folder; download "
                                  f"every shard of {INFUSENET_FOLDER}/ (hub {HUB})")
        return [folder / n for n in names]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} nor {INDEX_FILE} in the InfuseNet folder; download "
                          f"{INFUSENET_FOLDER}/ completely (hub {HUB})")


def check_infusenet(folder: Path, base_model: str) -> list[Path]:
    """InfuseNet's config must fit the base FLUX transformer, and its weights its config (names, shapes, read
    from the safetensors headers). Returns the weights files."""
    from accelerate import init_empty_weights
    from diffusers import FluxControlNetModel

    config = FluxControlNetModel.load_config(str(folder))
    transformer = flux_transformer_config(base_model)
    differ = [f"{k}: InfuseNet {config.get(k)!r}, transformer {transformer.get(k)!r}" for k in MATCHING_CONFIG
              if k in transformer and config_value(config.get(k, transformer[k])) != config_value(transformer[k])]
    if differ:
        raise CheckpointError(f"{folder}: InfuseNet made for another base model; " + "; ".join(differ[:4]))
    files = infusenet_files(folder)
    with init_empty_weights():
        model = FluxControlNetModel.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {}
    for path in files:
        shapes.update(read_shapes(path))
    check_layout(files[0] if len(files) == 1 else folder, shapes, expected, "InfuseNet (FluxControlNetModel)")
    return files


# -- the method --------------------------------------------------------------------------------------------


@METHODS.register("infiniteyou")
class InfiniteYou(TuningFreeMethod):
    photos_encoded = 1  # the published pipeline takes one photo
    name = "infiniteyou"
    families = ("flux1",)
    published_files = _published("aes_stage2") + _published("sim_stage1")
    defaults = {
        "weights": None,  # hub id (default ByteDance/InfiniteYou), its snapshot folder, or one variant's folder
        "variant": "aes_stage2",  # or sim_stage1 (higher identity similarity)
        "infusenet": None,  # an InfuseNetModel/ folder (default: the variant's)
        "projection": None,  # an image_proj_model.bin (default: the variant's)
        "conditioning_scale": 1.0,  # InfuseNet residual scale (published infusenet_conditioning_scale)
        "guidance_start": 0.0,  # fraction of the steps before InfuseNet starts (published infusenet_guidance_start)
        "guidance_end": 1.0,  # fraction of the steps after which it stops (published infusenet_guidance_end)
        "infusenet_guidance": 1.0,  # InfuseNet's distilled-guidance input (published controlnet_guidance_scale)
        "keypoints": False,  # control image: the photo's 5 keypoints (True) or black, as published without a pose photo
        "face_backend": "arcface",
        "face_model_dir": None,  # detector + recogniser ONNX folder (published: antelopev2's detector, facexlib's arcface)
        "subject": None,
    }
    default_sampling = {"flux1": {"num_inference_steps": 30, "guidance_scale": 3.5}}

    def prepare(self, base_model, info, options):
        require_flux1(info, base_model, f"{self.name}: InfiniteYou (InfuseNet, a FLUX.1 ControlNet) is",
                      "method instantid, pulid or photomaker on an SDXL base")
        if options["variant"] not in VARIANTS:
            raise ValueError(f"{self.name}: variant must be one of {', '.join(VARIANTS)}, not {options['variant']!r}")
        for key in ("conditioning_scale", "guidance_start", "guidance_end", "infusenet_guidance"):
            options[key] = float(options[key])
        if not 0.0 <= options["guidance_start"] < options["guidance_end"] <= 1.0:
            raise ValueError(f"{self.name}: guidance_start and guidance_end need 0 <= start < end <= 1 (got "
                             f"{options['guidance_start']}, {options['guidance_end']})")
        backend = arcface_for(self.name, options)
        projection, infusenet = self.locate(options)
        files = check_infusenet(infusenet, base_model)
        model = load_projection(projection)
        check_face_dim(projection, backend, model.proj_in.in_features, options)
        joint = _infusenet_config(infusenet)["joint_attention_dim"]
        if model.proj_out.out_features != joint:
            raise CheckpointError(f"{projection}: gives {model.proj_out.out_features}-wide ID tokens, but the InfuseNet in "
                                  f"{infusenet} takes {joint}-wide ones; use the two files of one variant")
        spec = options["weights"] or HUB
        records = [weights_record(projection, "infiniteyou ID projection", options["projection"] or spec)]
        records += [weights_record(infusenet / "config.json", "infiniteyou InfuseNet config", options["infusenet"] or spec)]
        records += [weights_record(f, "infiniteyou InfuseNet weights", options["infusenet"] or spec) for f in files]
        return {"backend": backend}, records

    def locate(self, options) -> tuple[Path, Path]:
        """(image_proj_model.bin, InfuseNetModel/ folder) of the chosen variant: explicit options first, then
        ``weights`` as a variant folder, a snapshot of the hub repository, or a hub id."""
        variant = options["variant"]
        spec = options["weights"] or HUB
        projection = Path(options["projection"]).expanduser() if options["projection"] else None
        infusenet = Path(options["infusenet"]).expanduser() if options["infusenet"] else None
        if projection is not None and not projection.is_file():
            raise FileNotFoundError(f"{projection}: no such ID projection file (projection=); pass the variant's "
                                    f"{PROJECTION_FILE}")
        if infusenet is not None and not (infusenet / "config.json").is_file():
            raise FileNotFoundError(f"{infusenet}: not an InfuseNet folder (no config.json; infusenet=); pass the variant's "
                                    f"{INFUSENET_FOLDER}/ folder")
        if projection is not None and infusenet is not None:
            return projection, infusenet
        folder = Path(str(spec)).expanduser()
        if folder.is_dir():
            variant_dir = self.variant_folder(folder, variant)
            if projection is None:
                projection = variant_dir / PROJECTION_FILE
                if not projection.is_file():
                    raise FileNotFoundError(
                        f"{variant_dir}: the InfiniteYou {variant} folder has no {PROJECTION_FILE} (the ID projection, "
                        f"published beside {INFUSENET_FOLDER}/ at {HUB} {RELEASE}/{variant}/{PROJECTION_FILE}); download it "
                        f"into {variant_dir}, or pass projection=FILE")
            if infusenet is None:
                infusenet = variant_dir / INFUSENET_FOLDER
                if not (infusenet / "config.json").is_file():
                    raise FileNotFoundError(
                        f"{variant_dir}: the InfiniteYou {variant} folder has no {INFUSENET_FOLDER}/config.json (published "
                        f"at {HUB} {RELEASE}/{variant}/{INFUSENET_FOLDER}/); download that folder into {variant_dir}, "
                        f"or pass infusenet=FOLDER")
            return projection, infusenet
        sub = f"{RELEASE}/{variant}"
        if projection is None:
            projection = resolve_file(spec, PROJECTION_FILE, (sub,), what=f"InfiniteYou {variant} ID projection")
        if infusenet is None:
            config = resolve_file(spec, "config.json", (f"{sub}/{INFUSENET_FOLDER}",), what=f"InfiniteYou {variant} InfuseNet")
            infusenet = config.parent
            try:
                index = resolve_file(spec, INDEX_FILE, (f"{sub}/{INFUSENET_FOLDER}",), what="InfuseNet weights index")
            except ModelUnavailableError:  # not the published two shards: one file, or an error naming it
                resolve_file(spec, SINGLE_FILE, (f"{sub}/{INFUSENET_FOLDER}",), what="InfuseNet weights")
            else:
                for shard in sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())):
                    resolve_file(spec, shard, (f"{sub}/{INFUSENET_FOLDER}",), what="InfuseNet weights")
        return projection, infusenet

    @staticmethod
    def variant_folder(folder: Path, variant: str) -> Path:
        for candidate in (folder / RELEASE / variant, folder / variant):
            if candidate.is_dir():
                return candidate
        if folder.name in VARIANTS and folder.name != variant:
            raise ValueError(f"{folder}: holds the {folder.name} variant, but variant={variant!r}; pass variant={folder.name} "
                             f"or the {variant} folder")
        if (folder / INFUSENET_FOLDER).is_dir() or (folder / PROJECTION_FILE).is_file():
            return folder
        others = [v for v in VARIANTS if (folder / RELEASE / v).is_dir() or (folder / v).is_dir()]
        hint = f"; it holds {', '.join(others)} only: pass variant={others[0]}" if others else ""
        raise FileNotFoundError(f"{folder}: not an InfiniteYou folder: expected {RELEASE}/{variant}/ (the hub layout), "
                                f"{variant}/, or a variant folder holding {INFUSENET_FOLDER}/ and {PROJECTION_FILE}{hint}")

    def encode(self, name, photos, context, options, out_dir):
        from likeness.data.images import image_to_array, load_image
        from likeness.faces.arcface import aligned_crops

        backend = context["backend"]
        path = Path(photos[0])
        array = image_to_array(load_image(path))
        face = pick_face(path, backend.detect(array), context.get("notes"))
        # As published: the recogniser sees the aligned crop in BGR order (facexlib, fed OpenCV's BGR image).
        face = backend.embed(np.ascontiguousarray(array[..., ::-1]), [face])[0]
        save_crop(Image.fromarray(aligned_crops(array, [face])[0].astype(np.uint8)), out_dir, name)
        embedding = torch.from_numpy(np.asarray(face.embedding, dtype=np.float32))[None, None]  # (1, 1, D), unit norm
        return {"id_embedding": embedding, "keypoints": torch.from_numpy(frame_points(face))}

    def apply(self, pipe, artifact, manifest):
        from diffusers import FluxControlNetPipeline

        from likeness.models.loading import place_pipeline

        options = manifest.config["options"]
        projection_path = recorded_file(manifest, "infiniteyou ID projection")
        folder = recorded_file(manifest, "infiniteyou InfuseNet config").parent
        dtype = pipe.transformer.dtype
        plan = getattr(pipe, "likeness_plan", None)
        offload = plan.offload if plan is not None else "none"
        with diffusers_loading(folder, "InfuseNet"):
            infusenet = _infusenet_class().from_pretrained(str(folder), dtype=dtype)
        if offload == "none":
            infusenet.to(pipe.device)
        infusenet.guidance_value = float(options["infusenet_guidance"])
        components = {k: v for k, v in pipe.components.items() if k != "controlnet"}
        identity_pipe = FluxControlNetPipeline(**components, controlnet=infusenet)
        identity_pipe.set_progress_bar_config(disable=True)
        identity_pipe.likeness_info = pipe.likeness_info
        if plan is not None:
            identity_pipe.likeness_plan = plan
        if offload == "model":  # the new pipeline's hooks, InfuseNet's included, replace the base pipeline's
            place_pipeline(identity_pipe, plan)
        elif offload == "sequential":  # the base's layers keep their hooks; InfuseNet gets its own
            from accelerate import cpu_offload

            cpu_offload(infusenet, execution_device=identity_pipe._execution_device)
        # The projection runs once per call (8 tokens): it stays on the execution device.
        identity_pipe.id_projection = load_projection(projection_path).to(device=identity_pipe._execution_device,
                                                                          dtype=dtype)
        return identity_pipe

    def call(self, personalized, prompts, tensors, **kwargs):
        return run_infusenet(personalized.pipe, personalized.manifest.config["options"], tensors, len(prompts),
                             prompt=prompts, **kwargs)


def run_infusenet(pipe, options: dict, tensors: dict, batch: int, **kwargs):
    """One ``FluxControlNetPipeline`` call with a person's ``tensors`` (``id_embedding``, ``keypoints``) for
    ``batch`` images: the ID tokens projected now, the control image black (or the keypoints), the initial noise
    drawn from ``generator`` before the pipeline samples the control image's latents from it (unless ``latents``
    are given), InfuseNet's scale and step range from ``options``."""
    from likeness.models.families import native_resolution

    default = native_resolution(pipe)
    height, width = kwargs.pop("height", None) or default, kwargs.pop("width", None) or default
    device = pipe._execution_device  # the GPU under CPU offload, else where the pipeline is
    with torch.no_grad():
        projection = pipe.id_projection
        embedding = tensors["id_embedding"].to(device=projection.latents.device, dtype=projection.latents.dtype)
        tokens = projection(embedding)  # (1, queries, joint width)
    if options.get("keypoints"):
        side = min(width, height)  # the head-and-shoulders square, centred horizontally, at the top
        points = tensors["keypoints"].cpu().numpy() * side + np.array([(width - side) / 2, 0.0])
        control = draw_keypoints(points, (width, height))
    else:
        control = Image.new("RGB", (width, height))
    if kwargs.get("latents") is None:
        # Plain FLUX's initial noise, drawn first from each image's generator; the pipeline then samples the
        # control image's VAE latents from the same generators.
        dtype = pipe.text_encoder_2.dtype if pipe.text_encoder_2 is not None else pipe.transformer.dtype  # as FluxPipeline
        kwargs["latents"], _ = pipe.prepare_latents(batch, pipe.transformer.config.in_channels // 4, height, width,
                                                    dtype, device, kwargs.get("generator"))
    pipe.controlnet.identity_tokens = tokens.expand(batch, -1, -1)
    try:
        return pipe(control_image=control, height=height, width=width,
                    controlnet_conditioning_scale=float(options["conditioning_scale"]),
                    control_guidance_start=float(options["guidance_start"]),
                    control_guidance_end=float(options["guidance_end"]), **kwargs)
    finally:
        pipe.controlnet.identity_tokens = None


def _infusenet_config(folder: Path) -> dict:
    from diffusers import FluxControlNetModel

    return FluxControlNetModel.load_config(str(folder))
