"""InstantID (Wang et al., 2024): a face-embedding IP-Adapter plus IdentityNet, a ControlNet on 5 face keypoints.

The ArcFace embedding of the face goes through a Perceiver resampler (``ip-adapter.bin``: ``image_proj.*``
with ``proj_in`` of width 512, 16 queries; ``ip_adapter.<n>.to_{k,v}_ip``), giving 16 identity tokens
that the UNet attends to like any IP-Adapter's (loaded by diffusers' ``load_ip_adapter``). IdentityNet is
a diffusers ``ControlNetModel`` (the published ``ControlNetModel/`` folder) whose spatial input is the 5
keypoints drawn as the published recipe does (coloured sticks from eyes and mouth corners to the nose,
then a dot on each point), and whose cross-attention context is **the identity tokens, not the text**:
that is what :class:`IdentityNet` changes, and the rest runs in diffusers'
``StableDiffusionXLControlNetPipeline``.

``personalize`` stores the embedding and the keypoints normalised to a head-and-shoulders square around
the face; at generation they are drawn at the requested size, so the face sits where it sat in the photo.
Defaults follow the published demo: IP-Adapter scale 0.8, IdentityNet scale 0.8, 30 steps, guidance 5.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from likeness.methods.base import METHODS, PublishedFile
from likeness.methods.peers.ip_adapter import load_checked, load_into
from likeness.methods.peers.common import (
    CheckpointError,
    TuningFreeMethod,
    arcface_for,
    cfg_pair,
    check_face_dim,
    check_layout,
    config_value,
    empty_unet,
    largest_face,
    raw_embedding,
    read_shapes,
    recorded_file,
    resolve_file,
    weights_record,
)
from likeness.models.loading import resolve_model_path

HUB = "InstantX/InstantID"
ADAPTER_FILE = "ip-adapter.bin"
CONTROLNET_FOLDER = "ControlNetModel"
# The published drawing: colours per point (left eye, right eye, nose, left mouth, right mouth), sticks to the nose.
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
STICKS = ((0, 2), (1, 2), (3, 2), (4, 2))
STICK_WIDTH = 4
DOT_RADIUS = 10
STICK_OPACITY = 0.6
# Keypoints are stored relative to a square of FRAME face widths, the face centre FRAME_ROW from the top.
FRAME, FRAME_ROW = 3.6, 0.36
# Config entries IdentityNet must share with the UNet it steers.
MATCHING_CONFIG = ("in_channels", "block_out_channels", "down_block_types", "cross_attention_dim",
                   "transformer_layers_per_block", "addition_embed_type", "addition_time_embed_dim",
                   "projection_class_embeddings_input_dim", "layers_per_block")


def draw_keypoints(points: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The IdentityNet input, pixel for pixel as the published ``draw_kps`` (OpenCV) draws it: on black, an
    ellipse ("stick") from each eye and mouth corner to the nose in that point's colour at 60 % intensity,
    then a filled dot of radius 10 on each point. As there, a stick's centre, half-length and angle (whole
    degrees) are truncated to integers and its outline is the ellipse sampled every degree with coordinates
    rounded half to even; a dot covers the pixels within 10 of the point truncated to integers."""
    width, height = size
    sticks = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(sticks)
    points = np.asarray(points, dtype=np.float64)
    for a, b in STICKS:
        (x0, y0), (x1, y1) = points[a], points[b]
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        half_length = int(math.hypot(x0 - x1, y0 - y1) / 2)
        outline = _ellipse_outline(centre, half_length, int(math.degrees(math.atan2(y0 - y1, x0 - x1))))
        draw.polygon(outline, fill=KEYPOINT_COLOURS[a], outline=KEYPOINT_COLOURS[a])
    canvas = (np.asarray(sticks, dtype=np.float64) * STICK_OPACITY).astype(np.uint8)
    rows, columns = np.mgrid[:height, :width]
    for (x, y), colour in zip(points, KEYPOINT_COLOURS):
        canvas[(columns - int(x)) ** 2 + (rows - int(y)) ** 2 <= DOT_RADIUS ** 2] = colour
    return Image.fromarray(canvas)


def _ellipse_outline(centre: tuple[int, int], half_length: int, degrees: int) -> list[tuple[int, int]]:
    """Integer outline of a stick: the ellipse (half-axes ``half_length`` and STICK_WIDTH, turned by ``degrees``)
    at every whole degree, repeated points dropped."""
    turn_cos, turn_sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    ts = np.radians(np.arange(361))
    along, across = half_length * np.cos(ts), STICK_WIDTH * np.sin(ts)
    xs = np.rint(centre[0] + along * turn_cos - across * turn_sin).astype(int)
    ys = np.rint(centre[1] + along * turn_sin + across * turn_cos).astype(int)
    outline: list[tuple[int, int]] = []
    for point in zip(xs.tolist(), ys.tolist()):
        if not outline or point != outline[-1]:
            outline.append(point)
    return outline


def frame_points(face) -> np.ndarray:
    """The face's 5 points relative to a head-and-shoulders square around it (0..1 in both directions)."""
    x0, y0, x1, y1 = face.box
    side = max(x1 - x0, y1 - y0) * FRAME
    origin = np.array([(x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side * FRAME_ROW])
    return ((np.asarray(face.landmarks, dtype=np.float64) - origin) / side).astype(np.float32)


def _identitynet_class():
    from diffusers import ControlNetModel

    class IdentityNet(ControlNetModel):
        """A ControlNet whose cross-attention context is the identity tokens (set per call), as in InstantID."""

        identity_tokens: torch.Tensor | None = None

        def forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
            if self.identity_tokens is not None:
                encoder_hidden_states = self.identity_tokens.to(sample.dtype)
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)

    return IdentityNet


def check_identitynet(folder: Path, base_model: str) -> None:
    """IdentityNet's config must match the base UNet's, and its weights file its config (names, shapes)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, UNet2DConditionModel

    config = ControlNetModel.load_config(str(folder))
    unet = UNet2DConditionModel.load_config(resolve_model_path(base_model), subfolder="unet")
    differ = [f"{k}: IdentityNet {config.get(k)!r}, UNet {unet.get(k)!r}" for k in MATCHING_CONFIG
              if k in unet and config_value(config.get(k)) != config_value(unet.get(k))]
    if differ:
        raise CheckpointError(f"{folder}: IdentityNet made for another base model; " + "; ".join(differ[:4]))
    files = [folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin") if (folder / n).is_file()]
    if not files:
        raise CheckpointError(f"{folder}: no diffusion_pytorch_model.safetensors (or .bin) in the IdentityNet folder")
    with init_empty_weights():
        model = ControlNetModel.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_layout(files[0], read_shapes(files[0]), expected, "IdentityNet (ControlNet)")


@METHODS.register("instantid")
class InstantID(TuningFreeMethod):
    photos_encoded = 1  # the published pipeline takes one photo
    name = "instantid"
    families = ("sdxl",)
    published_files = (
        PublishedFile("weights", ADAPTER_FILE, HUB, "", "ip-adapter"),
        PublishedFile("controlnet", "config.json", HUB, CONTROLNET_FOLDER, "IdentityNet"),
        PublishedFile("controlnet", "diffusion_pytorch_model.safetensors", HUB, CONTROLNET_FOLDER, "IdentityNet weights"),
    )
    defaults = {
        "weights": None,  # ip-adapter.bin: file, folder or hub id (default InstantX/InstantID)
        "controlnet": None,  # IdentityNet folder (default: ControlNetModel/ beside ip-adapter.bin, or on the hub)
        "scale": 0.8,  # IP-Adapter scale of the published demo
        "controlnet_scale": 0.8,  # IdentityNet conditioning scale of the published demo
        "face_backend": "arcface",
        "face_model_dir": None,  # InsightFace-style ONNX folder (antelopev2 in the published recipe)
        "subject": None,
    }

    def prepare(self, base_model, info, options):
        if info.family != "sdxl":
            raise ValueError(f"instantid is published for SDXL only; {base_model!r} is {info.family}")
        backend = arcface_for(self.name, options)
        spec = options["weights"] or HUB
        adapter = resolve_file(spec, ADAPTER_FILE, what="InstantID ip-adapter")
        controlnet = self.controlnet_folder(options, adapter)
        check_identitynet(controlnet, base_model)
        state, kind = load_checked(adapter, empty_unet(base_model), "plus")
        check_face_dim(adapter, backend, state["image_proj"]["proj_in.weight"].shape[1], options)
        weights_file = next(controlnet / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
                            if (controlnet / n).is_file())
        records = [weights_record(adapter, "instantid ip-adapter weights", spec),
                   weights_record(weights_file, "instantid IdentityNet weights", options["controlnet"] or spec)]
        return {"backend": backend}, records

    def controlnet_folder(self, options, adapter: Path) -> Path:
        """IdentityNet's folder: given, or ``ControlNetModel/`` beside ``ip-adapter.bin`` (the published layout),
        or fetched from the hub (config and weights)."""
        spec = options["controlnet"]
        if spec and Path(spec).expanduser().is_dir():
            return Path(spec).expanduser()
        beside = adapter.parent / CONTROLNET_FOLDER
        if not spec and (beside / "config.json").is_file():
            return beside
        subfolders = (CONTROLNET_FOLDER, "") if spec else (CONTROLNET_FOLDER,)
        config = resolve_file(spec or HUB, "config.json", subfolders, what="IdentityNet")
        sub = config.parent.name if config.parent.name == CONTROLNET_FOLDER else ""
        resolve_file(spec or HUB, "diffusion_pytorch_model.safetensors", (sub,), what="IdentityNet weights")
        return config.parent

    def encode(self, name, photos, context, options, out_dir):
        from likeness.methods.peers.common import save_crop

        image, face = largest_face(Path(photos[0]), context["backend"], context.get("notes"))
        points = frame_points(face)
        save_crop(draw_keypoints(points * 256, (256, 256)), out_dir, name, "keypoints")
        embedding = torch.from_numpy(raw_embedding(face, photos[0]))[None, None, None]  # (1, 1, 1, D), un-normalised as published
        return {"image_embeds": embedding, "negative_image_embeds": torch.zeros_like(embedding),
                "keypoints": torch.from_numpy(points)}

    def apply(self, pipe, artifact, manifest):
        from diffusers import StableDiffusionXLControlNetPipeline

        options = manifest.config["options"]
        adapter = recorded_file(manifest, "instantid ip-adapter weights")
        state, _ = load_checked(adapter, pipe.unet, "plus")
        controlnet = _identitynet_class().from_pretrained(str(recorded_file(manifest, "instantid IdentityNet weights").parent),
                                                          dtype=pipe.unet.dtype).to(pipe.device)
        components = {k: v for k, v in pipe.components.items() if k not in ("image_encoder", "feature_extractor")}
        identity_pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet)
        identity_pipe.set_progress_bar_config(disable=True)
        identity_pipe.likeness_info = pipe.likeness_info
        load_into(identity_pipe, state, adapter, float(options["scale"]))
        return identity_pipe

    def call(self, personalized, prompts, tensors, **kwargs):
        pipe = personalized.pipe
        options = personalized.manifest.config["options"]
        n, guidance = len(prompts), kwargs.get("guidance_scale", 5.0) > 1.0
        dtype, device = pipe.unet.dtype, pipe.device
        default = pipe.unet.config.sample_size * pipe.vae_scale_factor
        height, width = kwargs.pop("height", None) or default, kwargs.pop("width", None) or default
        side = min(width, height)  # the head-and-shoulders square, centred horizontally, at the top
        points = tensors["keypoints"].cpu().numpy() * side + np.array([(width - side) / 2, 0.0])
        keypoints = draw_keypoints(points, (width, height))
        embeds = cfg_pair(tensors["negative_image_embeds"], tensors["image_embeds"], n, guidance, dtype, device)
        with torch.no_grad():
            projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
            pipe.controlnet.identity_tokens = projection(embeds.flatten(0, 1))  # (batch, 16, cross-attention dim)
        try:
            return pipe(prompt=prompts, image=keypoints, ip_adapter_image_embeds=[embeds], height=height, width=width,
                        controlnet_conditioning_scale=float(options["controlnet_scale"]), **kwargs)
        finally:
            pipe.controlnet.identity_tokens = None
