"""What the tuning-free peer methods share: published weights by hub id / folder / file, their checks,
and an artifact that stores the photo's embeddings instead of trained weights.

The peers (IP-Adapter(-FaceID), InstantID, PhotoMaker, PuLID; on FLUX.1 PuLID-FLUX, InfiniteYou, FLUX
IP-Adapter) do not train per person: ``personalize`` only encodes the photo (CLIP image features, an ArcFace
embedding, 5 face keypoints, ID tokens) and writes

- ``embeddings.safetensors``: per person ``<name>.<tensor>`` (what generation feeds the adapter);
- ``<name>-crop.png``: the exact crop that was encoded (to reproduce the embedding with plain diffusers);
- ``likeness.json`` whose ``config.weights`` records each published file's path and sha256, so an
  artifact never silently runs on other weights (a changed file is refused at load time).

Generation then costs what the adapter costs, and ``generate`` / ``bench`` / ``report`` / ``--resume``
treat these artifacts like any other. Every check on the published files (variant, base model,
missing / unexpected keys, shapes) runs before any generation and names the file and the keys.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Iterable

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from likeness.methods.base import (
    ArtifactError,
    IdentityEntry,
    Manifest,
    Method,
    Personalized,
    named_identities,
    sha256_file,
    start_artifact,
)
from likeness.models.loading import base_model_info, load_pipeline, resolve_model_path
from likeness.models.pretrained import resolve_file  # noqa: F401  (the peers' published files go through the one path)

EMBEDDINGS_FILE = "embeddings.safetensors"
SHOWN_KEYS = 5  # how many offending key names an error message lists


class CheckpointError(ValueError):
    """A published weights file does not fit: another base model or variant, missing or unexpected keys,
    wrong shapes. The message names the file and the first offending keys."""


class MissingFaceModelError(FileNotFoundError):
    """A method needs the ArcFace model folder (InsightFace-style ONNX files) and none was given or found."""


# -- finding and reading published files ---------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{dotted key: tensor}`` from a safetensors file or a torch file (``weights_only=True``).

    Published torch files nest one level (``{"image_proj": {...}, "ip_adapter": {...}}``); safetensors
    files are flat with the same dotted prefixes. Both come out the same.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return dict(load_file(str(path)))
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read as a weights file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a dictionary of tensors")
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            raise CheckpointError(f"{path}: entry {prefix!r} is a {type(value).__name__}, not a tensor")

    walk("", raw)
    return flat


def read_shapes(path: str | Path) -> dict[str, tuple]:
    """``{key: shape}`` of a weights file; a safetensors file is read from its header only (an SDXL-sized
    IdentityNet is 5 GB in fp32, and checking it should not load it)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read as a weights file ({type(exc).__name__}: {str(exc)[:200]})") from None


def split_prefixes(state: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"a.x": t}`` -> ``{"a": {"x": t}}`` for the given top-level prefixes (diffusers' nested layout)."""
    out: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in out:
            out[head][rest] = value
    return out


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _shape(value) -> tuple:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def check_layout(path: str | Path, state: dict, expected: dict[str, tuple | None], what: str) -> None:
    """Refuse a file whose keys or shapes differ from ``expected`` (shape ``None``: any shape), naming the
    first offending keys. ``state`` maps keys to tensors or to shapes. Checked before anything is loaded into a model."""
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = [f"{k} is {_shape(state[k])}, expected {tuple(shape)}" for k, shape in sorted(expected.items())
             if k in state and shape is not None and _shape(state[k]) != tuple(shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_few(wrong)}")
    if problems:
        raise CheckpointError(f"{path}: not a valid {what} checkpoint for this base model; " + "; ".join(problems))


def empty_unet(base_model: str):
    """The base model's UNet built from its config on the meta device: attention layout and sizes, no weights."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(resolve_model_path(base_model), subfolder="unet")
    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


def require_flux1(info, base_model: str, what: str, instead: str) -> None:
    """The FLUX.1 peers' base check, one wording for all: ``what`` is made for FLUX.1 [dev], the base is not;
    ``instead`` names the method to use on other bases."""
    from likeness.models.families import FAMILY_NAMES

    if info.family != "flux1":
        raise ValueError(f"{what} made for FLUX.1 [dev]; {base_model!r} is {FAMILY_NAMES.get(info.family, info.family)}. "
                         f"Use a FLUX.1 base (black-forest-labs/FLUX.1-dev), or {instead}")


def config_value(value):
    """A model-config entry in a comparable form: tuples and lists alike (a saved config.json has lists, a built one
    may have tuples)."""
    if isinstance(value, (list, tuple)):
        return [config_value(v) for v in value]
    return value


def flux_transformer_config(base_model: str) -> dict:
    """The base's FLUX ``transformer/config.json`` (depth and widths; no weights read)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.load_config(resolve_model_path(base_model), subfolder="transformer")


def attention_layout(unet) -> list[tuple[str, int, int | None]]:
    """``(processor name, hidden size, cross-attention dim or None)`` in the order published IP-Adapter files
    number their layers (diffusers' ``attn_processors`` order)."""
    layout = []
    blocks = list(unet.config.block_out_channels)
    for name in unet.attn_processors:
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        layout.append((name, hidden, cross))
    return layout


def weights_record(path: Path, role: str, spec) -> dict:
    return {"role": role, "given": str(spec), "path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def recorded_file(manifest: Manifest, role: str) -> Path:
    """The path of the published file the artifact recorded for ``role`` (checked at load by :func:`verify_weights`)."""
    for record in manifest.config.get("weights", []):
        if record.get("role") == role:
            return Path(record["path"])
    raise ArtifactError(f"the artifact records no {role} file (its likeness.json lists "
                        f"{', '.join(r.get('role', '?') for r in manifest.config.get('weights', [])) or 'none'})")


def verify_weights(artifact: Path, record: dict) -> Path:
    """The recorded file, unchanged since the artifact was made (else a clear error)."""
    path = Path(record["path"])
    if not path.is_file():
        raise ArtifactError(f"{artifact}: needs the {record['role']} file {path}, which no longer exists; put it back "
                            f"(it was given as {record['given']!r}) or personalize again with the new location")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise ArtifactError(f"{artifact}: the {record['role']} file {path} changed since the artifact was made "
                            f"(sha256 {digest[:12]}..., recorded {record['sha256'][:12]}...); personalize again")
    return path


# -- faces ---------------------------------------------------------------------------------------------


def face_backend(options: dict):
    """The face stack named by ``face_backend`` (``arcface`` needs ``face_model_dir``: an InsightFace-style folder)."""
    from likeness.faces import get_backend

    name = options.get("face_backend") or "dlib"
    if name == "arcface":
        folder = options.get("face_model_dir")
        if not folder:
            raise MissingFaceModelError("this method needs an ArcFace model folder (InsightFace-style ONNX files, e.g. an "
                                        "unpacked buffalo_l or antelopev2 pack): pass face_model_dir=FOLDER")
        if not Path(folder).is_dir():
            raise MissingFaceModelError(f"{folder}: ArcFace model folder does not exist (face_model_dir)")
        return get_backend("arcface", model_dir=str(Path(folder).resolve()))
    return get_backend(name)


def arcface_for(method: str, options: dict):
    """The ArcFace backend a method needs, checked before anything heavy (a missing face model is the commonest mistake)."""
    if options["face_backend"] != "arcface":
        raise ValueError(f"{method} needs the ArcFace embedding: pass face_backend=arcface and face_model_dir=FOLDER "
                         f"(not face_backend={options['face_backend']!r})")
    return face_backend(options)


def check_face_dim(path, backend, face_dim: int, options: dict) -> None:
    if backend.embedding_dim != face_dim:
        raise CheckpointError(f"{path}: expects a {face_dim}-d face embedding, but the ArcFace model in "
                              f"{options['face_model_dir']} gives {backend.embedding_dim}-d")


@contextmanager
def diffusers_loading(path, what: str = "it"):
    """Turn what diffusers raises while loading an already checked file (sizes only it checks) into a
    :class:`CheckpointError` naming the file."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: diffusers could not load {what} ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:400]})") from None


def pick_face(path: Path, faces: list, notes: list[str] | None = None):
    """The largest of ``faces`` detected in the photo at ``path``, as the published pipelines choose; a photo
    without a face is an error naming it, and a photo with several faces adds a note (kept in the artifact's
    manifest and printed) saying which one was used and how to choose another."""
    from likeness.methods.preparation import NoFaceError

    if not faces:
        raise NoFaceError(path)
    face = max(faces, key=lambda f: f.area)
    if len(faces) > 1 and notes is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        notes.append(f"{Path(path).name}: {len(faces)} faces found; encoded the largest (box {x0},{y0}-{x1},{y1}); "
                     f"crop the photo to the one person to encode another")
    return face


def without_folder(note: str, path) -> str:
    """A note about a photo with its local folder removed (manifests get shared)."""
    return note.replace(str(path), Path(path).name)


def largest_face(path: Path, backend, notes: list[str] | None = None):
    """(RGB photo, the largest face with landmarks and embedding); see :func:`pick_face`."""
    from likeness.data.images import image_to_array, load_image

    image = load_image(path)
    array = image_to_array(image)
    face = backend.embed(array, [pick_face(path, backend.detect(array), notes)])[0]
    return image, face


def raw_embedding(face, path) -> np.ndarray:
    """The recogniser's un-normalised output: what InstantID and PhotoMaker v2 were trained on (their published
    code passes InsightFace's ``embedding``, not ``normed_embedding`` as IP-Adapter-FaceID does)."""
    if face.raw_embedding is None:
        raise ValueError(f"{path}: this face backend gives no raw (un-normalised) embedding; use face_backend=arcface")
    return np.asarray(face.raw_embedding, dtype=np.float32)


# -- artifacts -------------------------------------------------------------------------------------------


class PeerPersonalized(Personalized):
    """A pipeline with a peer's adapter loaded and the artifact's embeddings; each call feeds the person's
    embeddings (repeated over the batch, negative half first as diffusers' classifier-free guidance expects)."""

    def __init__(self, pipe, manifest: Manifest, artifact: Path, method: "TuningFreeMethod", tensors: dict):
        super().__init__(pipe, manifest, artifact)
        self.method = method
        self.tensors = tensors

    def person(self, identity: str | None) -> dict[str, torch.Tensor]:
        """The stored tensors of ``identity`` (a display name such as ``José O'Neil``, or its key)."""
        prefix = self.key(identity) + "."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def call_pipe(self, prompts, *, identity=None, **kwargs):
        return self.method.call(self, prompts, self.person(identity), **kwargs)


class TuningFreeMethod(Method):
    """A method whose ``personalize`` encodes photos with published encoders (no training).

    Subclasses implement :meth:`prepare` (check the published files against the base model, return what
    encoding needs plus the manifest records), :meth:`encode` (one person's tensors), :meth:`apply` and
    :meth:`call` (one pipeline call with a person's tensors).
    """

    subject_text: ClassVar[str] = "a person"
    # How many of a person's photos the published pipeline encodes (the first ones); None: all of them.
    photos_encoded: ClassVar[int | None] = None
    default_sampling = {
        "sd1": {"num_inference_steps": 50, "guidance_scale": 7.5},
        "sd2": {"num_inference_steps": 50, "guidance_scale": 7.5},
        "sdxl": {"num_inference_steps": 30, "guidance_scale": 5.0},
    }

    def prepare(self, base_model: str, info, options: dict) -> tuple[dict, list[dict]]:
        raise NotImplementedError

    def encode(self, name: str, photos: list[Path], context: dict, options: dict, out_dir: Path) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def subject_for(self, name: str, options: dict) -> str:
        return options.get("subject") or self.subject_text

    def call(self, personalized: PeerPersonalized, prompts: list[str], tensors: dict, **kwargs):
        raise NotImplementedError

    def personalize(self, identities, out_dir, base_model, **config):
        """Encode each person's photos with the published encoders and write the artifact (no training).

        Every check (options, weights vs base model, faces, face model) runs before the artifact folder
        holds anything final; a failure leaves no ``likeness.json``.
        """
        config.pop("progress", None)
        # A bench passes the shared training options (max_steps, ...); a tuning-free method has nothing to train.
        for key in ("max_steps", "learning_rate", "seed", "gradient_accumulation_steps", "batch_size", "resolution",
                    "checkpoint_every", "mixed_precision", "gradient_checkpointing", "masked_loss"):
            config.pop(key, None)
        plan = config.pop("plan", None)  # only its device matters here: the encoders run once
        if plan is not None and config.get("device") is None:
            config["device"] = plan.device
        options = {**{"device": None, "overwrite": False}, **self.defaults}
        unknown = sorted(k for k in config if k not in options)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for {self.name}; allowed: {', '.join(sorted(options))}")
        options.update({k: v for k, v in config.items() if v is not None})
        people = named_identities(identities)
        info = base_model_info(base_model)
        context, records = self.prepare(base_model, info, options)
        context["notes"] = notes = []  # encode() adds what the user should know (several faces in a photo)
        out_dir = start_artifact(out_dir, options["overwrite"])
        tensors: dict[str, torch.Tensor] = {}
        entries = {}
        for name, display, photos in people:
            if self.photos_encoded is not None and len(photos) > self.photos_encoded:
                used = ", ".join(Path(p).name for p in photos[:self.photos_encoded])
                notes.append(f"{name}: {len(photos)} photos given; {self.name} encodes {self.photos_encoded} as published "
                             f"({used}), the others are not used")
            for key, value in self.encode(name, photos, context, options, out_dir).items():
                tensors[f"{name}.{key}"] = value.detach().float().cpu().contiguous()
            # file names and content hashes only: the artifact folder can be shared as it is
            entries[name] = IdentityEntry(subject=self.subject_for(name, options), tokens=[],
                                          photos=[Path(p).name for p in photos], display=display,
                                          photo_sha256=[sha256_file(p) for p in photos])
        for note in notes:
            print(f"{self.name}: {note}", file=sys.stderr, flush=True)
        save_file(tensors, str(Path(out_dir) / EMBEDDINGS_FILE))
        recorded = {k: v for k, v in options.items() if k not in ("device", "overwrite")}
        sampling = dict(self.default_sampling.get(info.family, self.default_sampling))
        Manifest(method=self.name, base_model=info, identities=entries,
                 config={"options": json.loads(json.dumps(recorded, default=str)), "weights": records, "tuning_free": True,
                         "notes": notes},
                 sampling=sampling).save(out_dir)
        return Path(out_dir)

    def load(self, artifact, *, base_model=None, device=None, dtype=None, plan=None, quantize=None) -> PeerPersonalized:
        artifact = Path(artifact)
        manifest = Manifest.load(artifact)
        if manifest.method != self.name:
            raise ArtifactError(f"{artifact}: made by method {manifest.method!r}, not {self.name!r}")
        embeddings = artifact / EMBEDDINGS_FILE
        if not embeddings.is_file():
            raise ArtifactError(f"{embeddings}: embeddings missing from the artifact")
        for record in manifest.config.get("weights", []):
            if record.get("needed_at_generation", True):  # encoders only made the stored embeddings
                verify_weights(artifact, record)
        pipe = load_pipeline(base_model or manifest.base_model.model_id, device=device, dtype=dtype, plan=plan,
                             expect_family=manifest.family, quantize=quantize)
        pipe = self.apply(pipe, artifact, manifest) or pipe
        device = pipe.device if pipe.device.type != "meta" else "cpu"  # sequential offload leaves weights on "meta"
        tensors = {k: v.to(device) for k, v in load_file(str(embeddings)).items()}
        return PeerPersonalized(pipe, manifest, artifact, self, tensors)


def cfg_pair(negative: torch.Tensor, positive: torch.Tensor, batch: int, guidance: bool, dtype, device) -> torch.Tensor:
    """``[negative] * batch + [positive] * batch`` along dim 0 (diffusers' layout for precomputed embeddings)."""
    parts = ([negative] * batch if guidance else []) + [positive] * batch
    return torch.cat(parts).to(device=device, dtype=dtype)


def save_crop(image: Image.Image, out_dir: Path, name: str, suffix: str = "crop") -> Path:
    path = Path(out_dir) / f"{name}-{suffix}.png"
    image.save(path)
    return path


def normalise_points(points: np.ndarray, origin: np.ndarray, side: float) -> np.ndarray:
    return ((np.asarray(points, dtype=np.float64) - origin) / side).astype(np.float32)
