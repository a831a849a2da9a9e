"""Celeb Basis (Yuan et al., arXiv 2306.00926): a person is 2 x k numbers in a basis of celebrity names.

The text encoder already knows how to draw famous people from their names, and names live in a
small region of its token-embedding space. So a new person is written as two name-like tokens,
each the celebrities' mean token plus a weighted sum of the basis directions
(:mod:`likeness.methods.celeb_basis.basis`). The weights come from the person's frozen
face-recognition embedding through the only trained part, :class:`CoefficientEncoder` (one linear
layer, LeakyReLU(0.2), each half L2-normalised). Several people (up to ``max_people``) train
jointly with one shared layer; per person an exponential moving average (0.99) of the layer's
output is kept, and that average is what the artifact stores and uses.

Training runs on the shared loop (:func:`likeness.methods.training.train`): the placeholder rows of
the token-embedding table are replaced, inside the embedding layer's forward, by the embeddings the
layer produces, so gradients reach the layer and nothing else. Defaults follow the paper: AdamW at
1e-2, 400 steps per person, flip + colour jitter + shrink-and-paste on black, caption templates
around the placeholder.

Artifact files:

- ``celeb_basis.safetensors``: the basis (mean, directions, radius) + the hash of the embedding
  table(s) it was built on; using it with another base model is refused;
- ``coefficients.safetensors``: ``{name: (2, k)}``, the numbers that define each person;
- ``coefficient_encoder.safetensors``: the trained layer (to place a new face in the same basis);
- ``<name>.safetensors``: each person's two token embeddings as a standard textual-inversion file
  (SD 1.x: ``{"<name>": (2, d)}``; SDXL: ``{"clip_l": ..., "clip_g": ...}``), so a plain diffusers
  pipeline uses them through ``pipe.load_textual_inversion``.

In a prompt the placeholder ``<name>`` expands to its two tokens; two people in one prompt work
("{} and <biden> shaking hands").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from likeness.methods.base import (
    METHODS,
    ArtifactError,
    IdentityEntry,
    Manifest,
    Method,
    TrainingSetup,
    as_identities,
)
from likeness.methods.celeb_basis.basis import DEFAULT_RANK, CelebBasis, cached_basis

MAX_PEOPLE = 10
BASIS_FILE = "celeb_basis.safetensors"
COEFFICIENTS_FILE = "coefficients.safetensors"
ENCODER_FILE = "coefficient_encoder.safetensors"
# The paper keeps Textual Inversion's style of placeholder, expanded to two name-like tokens.
TOKENS_PER_PERSON = 2


class TooManyPeopleError(ValueError):
    """More people than the coefficient layer is (or was) trained for."""


def encoders(pipe) -> list[tuple]:
    """(tokenizer, text encoder, SDXL file key) for each text encoder, in pipeline order."""
    pairs = [(pipe.tokenizer, pipe.text_encoder, "clip_l")]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2, "clip_g"))
    return pairs


def placeholder_tokens(name: str) -> list[str]:
    """``<name>`` and ``<name>_1``: the names ``load_textual_inversion`` gives a 2-vector embedding."""
    return [f"<{name}>", f"<{name}>_1"]


class CoefficientEncoder(torch.nn.Module):
    """Frozen face embedding -> ``(2, k)`` basis coefficients. The only trained part of Celeb Basis.

    ``ema`` holds each person's moving average of the output. It is a parameter without gradient
    so the shared loop checkpoints it with the layer and a resumed run continues the same average.
    """

    def __init__(self, face_dim: int, rank: int, people: int):
        super().__init__()
        self.rank = rank
        self.linear = torch.nn.Linear(face_dim, TOKENS_PER_PERSON * rank)
        self.ema = torch.nn.Parameter(torch.zeros(people, TOKENS_PER_PERSON, rank), requires_grad=False)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.linear(faces), negative_slope=0.2)
        return F.normalize(out.view(-1, TOKENS_PER_PERSON, self.rank), dim=-1)

    @torch.no_grad()
    def update_ema(self, faces: torch.Tensor, momentum: float) -> None:
        self.ema.mul_(momentum).add_(self(faces), alpha=1.0 - momentum)


@dataclass
class CelebBasisSetup(TrainingSetup):
    """The shared setup plus what Celeb Basis needs to save its artifact."""

    basis: CelebBasis | None = None
    encoder: CoefficientEncoder | None = None
    faces: torch.Tensor | None = None  # (people, face_dim): one frozen face embedding per person
    token_ids: list[torch.Tensor] | None = None  # per text encoder: (people * 2,) placeholder ids
    hooks: list | None = None


def face_embedding(photos: list[str | Path], backend, encoder=None) -> torch.Tensor:
    """One face-recognition embedding per person: the normalised mean over their usable photos.

    Averaging descriptors is the usual face-recognition template; with one photo it is that photo's
    embedding. The photos here already passed preparation, so each has a face. ``encoder``: an
    :class:`~likeness.faces.arcface_torch.ArcFaceEmbedder` (the paper's iresnet) run on the ArcFace-aligned
    crop from ``backend``'s 5 points, instead of ``backend``'s own embedding.
    """
    from likeness.data.images import image_to_array, load_image
    from likeness.faces import largest_face_crop

    vectors = []
    for path in photos:
        crop = largest_face_crop(image_to_array(load_image(path)), backend)
        if crop is None or crop.face.embedding is None:
            raise ValueError(f"{path}: no usable face for the face-recognition embedding")
        if encoder is not None:
            raw = encoder(np.asarray(crop.aligned, dtype=np.float32)[None])[0]
            vectors.append(raw / max(float(np.linalg.norm(raw)), 1e-12))
        else:
            vectors.append(np.asarray(crop.face.embedding, dtype=np.float32))
    return F.normalize(torch.from_numpy(np.mean(vectors, axis=0)), dim=0)


@METHODS.register("celeb-basis")
class CelebBasisMethod(Method):
    name = "celeb-basis"
    families = ("sd1", "sd2", "sdxl")
    defaults = {
        "rank": DEFAULT_RANK,  # basis directions per token position (clipped to what the names support)
        "names": None,  # None = the built-in list; or a file / list of "First Last" names
        "steps_per_person": 400,
        "max_people": MAX_PEOPLE,
        "ema_momentum": 0.99,
        "learning_rate": 1e-2,
        "scale_lr": False,
        "adam_weight_decay": 1e-2,
        "flip": True,
        "color_jitter": 0.2,
        "scale_range": (0.1, 1.0),
        # Face features: None = face_backend's embedding (dlib's 128-d by default); "arcface-torch" = an iresnet
        # (the paper's ArcFace features) from face_weights (an InsightFace recogniser .onnx or arcface_torch .pth),
        # on the ArcFace-aligned crop from face_backend's 5 points.
        "face_encoder": None,
        "face_weights": None,
    }
    # The paper samples SD 1.x with guidance 10; it has no SDXL setting, so SDXL keeps the pipeline's 5.
    default_sampling = {
        "sd1": {"num_inference_steps": 50, "guidance_scale": 10.0},
        "sd2": {"num_inference_steps": 50, "guidance_scale": 10.0},
        "sdxl": {"num_inference_steps": 50, "guidance_scale": 5.0},
    }

    def personalize(self, identities, out_dir, base_model, **config) -> Path:
        """The shared :meth:`Method.personalize`, after checking the number of people (before any
        model loads) and setting ``max_steps`` to ``steps_per_person`` x people unless given."""
        identities = list(identities.items()) if isinstance(identities, dict) else list(identities)
        people = as_identities(identities)
        limit = config.get("max_people") or self.defaults["max_people"]
        if len(people) > limit:
            raise TooManyPeopleError(
                f"{len(people)} people given, but one coefficient layer trains at most {limit} people jointly; "
                f"split them into groups of {limit} or fewer (one artifact per group)"
            )
        if config.get("max_steps") is None:
            per_person = config.get("steps_per_person") or self.defaults["steps_per_person"]
            config["max_steps"] = per_person * len(people)
        return super().personalize(identities, out_dir, base_model, **config)  # display names kept

    def setup(self, pipe, names, options) -> CelebBasisSetup:
        from likeness.faces import get_backend

        if len(names) > options["max_people"]:
            raise TooManyPeopleError(f"{len(names)} people exceed max_people={options['max_people']}")
        for module in (pipe.unet, pipe.vae, *(enc for _, enc, _ in encoders(pipe))):
            module.requires_grad_(False)
        pairs = encoders(pipe)
        basis = cached_basis([e for _, e, _ in pairs], [t for t, _, _ in pairs], rank=options["rank"],
                             names=options["names"])
        backend = get_backend(options["face_backend"])
        face_encoder = _face_encoder(options, pipe.device)
        face_dim = face_encoder.embedding_dim if face_encoder is not None else backend.embedding_dim
        with torch.random.fork_rng():  # the layer's initial weights do not depend on earlier randomness
            torch.manual_seed(0)
            encoder = CoefficientEncoder(face_dim, basis.rank, len(names)).to(pipe.device)
        identities = {n: IdentityEntry(subject=f"<{n}>", tokens=placeholder_tokens(n), photos=[]) for n in names}
        setup = CelebBasisSetup(identities=identities, modules=[encoder], basis=basis, encoder=encoder,
                                trainable={"linear.weight": encoder.linear.weight, "linear.bias": encoder.linear.bias,
                                           "ema": encoder.ema})
        setup.token_ids = add_placeholders(pipe, [t for e in identities.values() for t in e.tokens], basis)
        setup.hooks = [
            enc.get_input_embeddings().register_forward_hook(_replace_rows(setup, index))
            for index, (_, enc, _) in enumerate(pairs)
        ]

        def faces_ready(make_batch):
            # The shared loop fills each person's usable photos after setup; this is the first
            # point that sees them, so the frozen face embeddings are computed here.
            setup.faces = torch.stack([face_embedding(identities[n].photos, backend, face_encoder)
                                       for n in names]).to(pipe.device)
            with torch.no_grad():
                encoder.ema.copy_(encoder(setup.faces))
            return make_batch

        setup.wrap_batches = faces_ready
        setup.after_step = lambda: encoder.update_ema(setup.faces, options["ema_momentum"])
        return setup

    def save_weights(self, pipe, setup: CelebBasisSetup, out_dir: Path, options) -> None:
        for hook in setup.hooks:
            hook.remove()
        out_dir = Path(out_dir)
        names = list(setup.identities)
        coefficients = setup.encoder.ema.detach().float().cpu()
        setup.basis.save(out_dir / BASIS_FILE)
        save_file({n: coefficients[i].contiguous() for i, n in enumerate(names)}, str(out_dir / COEFFICIENTS_FILE),
                  metadata={"rank": str(setup.basis.rank), "people": json.dumps(names)})
        encoder_state = {k: v.detach().float().cpu().contiguous() for k, v in setup.encoder.linear.state_dict().items()}
        save_file(encoder_state, str(out_dir / ENCODER_FILE),
                  metadata={"face_backend": str(options["face_backend"]), "people": json.dumps(names),
                            "face_encoder": _face_encoder_record(options),
                            "rank": str(setup.basis.rank)})
        embeddings = setup.basis.embed(coefficients)
        sdxl = len(embeddings) > 1
        for i, name in enumerate(names):
            token = setup.identities[name].tokens[0]
            tensors = {key if sdxl else token: embeddings[e][i].contiguous()
                       for e, (_, _, key) in enumerate(encoders(pipe))}
            save_file(tensors, str(out_dir / f"{name}.safetensors"))
        # Leave the in-memory pipeline as the artifact describes it (the stored averages).
        for e, (_, enc, _) in enumerate(encoders(pipe)):
            with torch.no_grad():
                enc.get_input_embeddings().weight[setup.token_ids[e]] = embeddings[e].reshape(-1, embeddings[e].shape[-1]).to(
                    enc.get_input_embeddings().weight)

    def apply(self, pipe, artifact, manifest: Manifest) -> None:
        artifact = Path(artifact)
        basis = CelebBasis.load(_artifact_file(artifact, BASIS_FILE))
        basis.check_compatible([enc for _, enc, _ in encoders(pipe)])
        coefficients = read_coefficients(artifact, basis.rank)
        missing = [n for n in manifest.identities if n not in coefficients]
        if missing:
            raise TooManyPeopleError(
                f"{artifact}: the manifest lists {len(manifest.identities)} people but the coefficient layer was trained "
                f"for {len(coefficients)} ({', '.join(coefficients)}); no coefficients for {', '.join(missing)}"
            )
        for name, entry in manifest.identities.items():
            per_encoder = basis.embed(coefficients[name])
            for (tokenizer, enc, _), embedding in zip(encoders(pipe), per_encoder):
                pipe.load_textual_inversion(embedding.to(enc.dtype), token=entry.tokens[0], text_encoder=enc,
                                            tokenizer=tokenizer)


def _face_encoder(options, device):
    """The iresnet named by ``face_encoder`` / ``face_weights``, or None for the face backend's own embedding."""
    name, weights = options.get("face_encoder"), options.get("face_weights")
    if name in (None, "", "backend"):
        if weights:
            raise ValueError("face_weights is given but face_encoder is not: pass face_encoder=arcface-torch")
        return None
    if name != "arcface-torch":
        raise ValueError(f"unknown face_encoder {name!r}; known: arcface-torch (or none: face_backend's embedding)")
    if not weights:
        raise ValueError("face_encoder=arcface-torch needs face_weights=<InsightFace recogniser .onnx or arcface_torch .pth>")
    from likeness.faces.arcface_torch import ArcFaceEmbedder

    return ArcFaceEmbedder(weights, device=device)


def _face_encoder_record(options) -> str:
    """What made the face features, file name only (the artifact is shared without local paths)."""
    if options.get("face_encoder") in (None, "", "backend"):
        return str(options["face_backend"])
    return f"{options['face_encoder']}:{Path(options['face_weights']).name}"


def add_placeholders(pipe, tokens: list[str], basis: CelebBasis) -> list[torch.Tensor]:
    """Add the placeholder tokens to every tokenizer (rows start at the basis mean); their ids per encoder."""
    ids_per_encoder = []
    for e, ((tokenizer, enc, _), mean) in enumerate(zip(encoders(pipe), basis.embed(torch.zeros(2, basis.rank)))):
        clashes = [t for t in tokens if t in tokenizer.get_vocab()]
        if clashes:
            raise ValueError(f"placeholder token(s) {', '.join(clashes)} already exist in the base model's vocabulary")
        tokenizer.add_tokens(tokens)
        ids = torch.tensor(tokenizer.convert_tokens_to_ids(tokens))
        enc.resize_token_embeddings(len(tokenizer))
        with torch.no_grad():
            enc.get_input_embeddings().weight[ids] = mean.repeat(len(tokens) // 2, 1).to(enc.get_input_embeddings().weight)
        ids_per_encoder.append(ids)
    return ids_per_encoder


def _replace_rows(setup: CelebBasisSetup, encoder_index: int):
    """A forward hook for a token-embedding layer: placeholder positions get the layer's embeddings.

    The replacement is a product with a 0/1 match matrix rather than an in-place write, so autograd
    sees a plain function of the coefficient layer and the frozen table gets no gradient.
    """

    def hook(module, inputs, output):
        ids = inputs[0]
        token_ids = setup.token_ids[encoder_index].to(ids.device)
        match = (ids[..., None] == token_ids).to(output.dtype)  # (batch, length, people * 2)
        if not bool(match.any()):
            return output
        vectors = setup.basis.embed(setup.encoder(setup.faces))[encoder_index]
        vectors = vectors.reshape(-1, vectors.shape[-1]).to(output.dtype)
        return output * (1 - match.sum(-1, keepdim=True)) + match @ vectors

    return hook


def _artifact_file(artifact: Path, name: str) -> Path:
    path = artifact / name
    if not path.is_file():
        raise ArtifactError(f"{path}: missing from the celeb-basis artifact")
    return path


def read_coefficients(artifact: str | Path, rank: int | None = None) -> dict[str, torch.Tensor]:
    """``{name: (2, k)}`` from an artifact, checked against the basis rank."""
    path = _artifact_file(Path(artifact), COEFFICIENTS_FILE)
    with safe_open(str(path), framework="pt") as handle:
        stored_rank = int((handle.metadata() or {}).get("rank", -1))
    coefficients = load_file(str(path))
    for name, value in coefficients.items():
        if tuple(value.shape) != (TOKENS_PER_PERSON, stored_rank) or (rank is not None and stored_rank != rank):
            raise ArtifactError(f"{path}: coefficients of {name!r} have shape {tuple(value.shape)}, expected "
                                f"({TOKENS_PER_PERSON}, {rank or stored_rank}) for this basis")
    return coefficients
