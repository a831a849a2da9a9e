"""StellarNet (the baseline of the Stellar paper, arXiv 2312.06116; no code was released): a first
public implementation on SDXL.

**Dynamic Textual Inversion.** The person's photo, multiplied by its person mask, goes through a
frozen CLIP image encoder; two image-to-text projections (one per SDXL text encoder; 2 linear layers,
hidden 1024, LayerNorm + LeakyReLU between) turn its pooled feature into 5 pseudo-word embeddings
for each encoder, which take the place of the placeholder ``S*`` in "a photo of a S* person". Each
projection adds its output to 5 learned base embeddings (initialised from the word "person"; its
last layer starts at zero, so training starts from "a photo of a person person"). The UNet stays
frozen and learns rank-4 peft LoRA offsets. Loss: the denoising MSE only inside the person mask
(:func:`likeness.methods.training.masked_mse`) plus ``reg_weight`` x the mean squared distance of
the pseudo-words from the embedding of "person" (keeps them in the text encoder's word space).

**Trained once** (:meth:`StellarNet.train_encoder`, ``likeness train-encoder --method stellarnet``) on
a portrait set (:mod:`likeness.data.portraits`: CelebAMask-HQ, Stellar layout or any folder, minus
excluded identities), with masks from :mod:`likeness.segmentation`, on the shared accelerate loop
(accumulation, mixed precision on GPU, checkpoints, exact resume). The weights folder holds
``stellarnet.safetensors`` (projections + base embeddings), ``pytorch_lora_weights.safetensors`` and
``stellarnet.json`` (base model + hashes of its token tables, image encoder, masks, data, losses).

**Tuning-free per person** (:meth:`StellarNet.personalize` with ``weights=``): the photo is framed,
masked and encoded once; the artifact stores the 5+5 pseudo-words as a standard SDXL
textual-inversion file (``{"clip_l": (5, d1), "clip_g": (5, d2)}``) next to a copy of the LoRA, so
plain diffusers loads it (``load_textual_inversion`` x 2 + ``load_lora_weights``). The LoRA is fused
at load time, so a personalized image costs what a plain one does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from likeness.methods.base import (
    MANIFEST_NAME,
    METHODS,
    PublishedFile,
    ArtifactError,
    IdentityEntry,
    Manifest,
    Method,
    as_identities,
    split_config,
    training_runtime,
)
from likeness.models.loading import FamilyMismatchError

log = logging.getLogger(__name__)

ENCODER_FILE = "stellarnet.safetensors"
CONFIG_FILE = "stellarnet.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TRAIN_TOKEN = "<stellar>"
TRAIN_TEMPLATES = (
    "a photo of {}", "a close-up photo of {}", "a portrait of {}", "a good photo of {}", "a cropped photo of {}",
    "a bright photo of {}", "a dark photo of {}", "a photo of the face of {}",
)
# CLIP's normalisation, used when the image encoder folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class WeightsError(ValueError):
    """StellarNet weights are missing, incomplete, or were trained for another base model."""


def _encoders(pipe):
    """(tokenizer, text encoder, SDXL file key) per text encoder."""
    return [(pipe.tokenizer, pipe.text_encoder, "clip_l"), (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")]


def placeholder_tokens(token: str, num_words: int) -> list[str]:
    """``<x>``, ``<x>_1`` ...: the names ``load_textual_inversion`` gives a multi-vector embedding."""
    return [token] + [f"{token}_{i}" for i in range(1, num_words)]


def embedding_hash(encoder, rows: int | None = None) -> str:
    """A short hash of a text encoder's token-embedding table (its first ``rows`` rows): what identifies
    the base model the projections were trained for, whatever path or hub id it was loaded from."""
    weight = encoder.get_input_embeddings().weight.detach()[:rows].float().cpu().contiguous()
    return hashlib.sha256(weight.numpy().tobytes()).hexdigest()[:16]


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _require_sdxl(pipe, model_id) -> None:
    if getattr(pipe, "text_encoder_2", None) is None:
        raise FamilyMismatchError(f"stellarnet works on SDXL base models; {model_id!r} is {pipe.likeness_info.family}")


class ImageEncoder:
    """A frozen CLIP vision tower (hub id or folder) with its preprocessing done in torch, batched."""

    def __init__(self, model: str | Path, device=None, dtype=torch.float32):
        from transformers import CLIPImageProcessor, CLIPVisionModel

        from likeness.models.pretrained import load_pretrained

        self.model_id = str(model)

        def refused(reason):
            return WeightsError(f"image encoder {self.model_id!r} could not be loaded: {reason}; give a hub id or a "
                                f"folder written by save_pretrained (a CLIP vision model)")

        self.model = load_pretrained(CLIPVisionModel, self.model_id, device=device or "cpu", dtype=dtype, error=refused)
        self.model.requires_grad_(False).eval()
        mean, std = CLIP_MEAN, CLIP_STD
        try:
            processor = load_pretrained(CLIPImageProcessor, self.model_id, need="preprocessor_config.json")
            mean, std = processor.image_mean, processor.image_std
        except FileNotFoundError:
            pass  # a bare model folder: CLIP's published normalisation
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.size = int(self.model.config.image_size)
        self.dim = int(self.model.config.hidden_size)
        digest = hashlib.sha256(json.dumps(self.model.config.to_dict(), sort_keys=True, default=str).encode())
        digest.update(str(sum(float(p.double().sum()) for p in self.model.parameters())).encode())
        self.revision = "sha256:" + digest.hexdigest()[:16]

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, dim) of masked photos ``pixels`` (B x 3 x H x W in [0, 1])."""
        x = F.interpolate(pixels.float(), size=(self.size, self.size), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
        x = ((x - self.mean) / self.std).to(self.device, next(self.model.parameters()).dtype)
        return self.model(pixel_values=x).pooler_output.float()


class Projection(torch.nn.Module):
    """Image feature -> ``num_words`` pseudo-word embeddings for one text encoder (2 layers)."""

    def __init__(self, in_dim: int, word_dim: int, num_words: int, hidden: int, init_word: torch.Tensor):
        super().__init__()
        self.num_words, self.word_dim = num_words, word_dim
        self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.LayerNorm(hidden),
                                       torch.nn.LeakyReLU(0.2), torch.nn.Linear(hidden, num_words * word_dim))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)
        self.base = torch.nn.Parameter(init_word.float().repeat(num_words, 1).clone())
        self.register_buffer("anchor", init_word.float().repeat(num_words, 1).clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.base + self.net(features.to(self.base.dtype)).view(-1, self.num_words, self.word_dim)


class StellarNetEncoder(torch.nn.Module):
    """The two projections (SDXL: CLIP-L and OpenCLIP-G text encoders)."""

    def __init__(self, in_dim: int, word_dims: list[int], num_words: int, hidden: int, init_words: list[torch.Tensor]):
        super().__init__()
        self.projections = torch.nn.ModuleList(
            Projection(in_dim, d, num_words, hidden, w) for d, w in zip(word_dims, init_words))

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [p(features) for p in self.projections]

    def regulariser(self, words: list[torch.Tensor]) -> torch.Tensor:
        """Mean over words of the squared distance from the anchor word ("person"), averaged over encoders."""
        return torch.stack([((w - p.anchor) ** 2).sum(-1).mean() for w, p in zip(words, self.projections)]).mean()


class Injector:
    """Forward hooks on the token-embedding layers: the placeholder's positions get the pseudo-words of
    the current batch (a product with a 0/1 match matrix, so gradients reach only the projections)."""

    def __init__(self, pipe, encoder: StellarNetEncoder, token_ids: list[torch.Tensor]):
        self.encoder, self.token_ids = encoder, token_ids
        self.features: torch.Tensor | None = None
        self.words: dict[int, torch.Tensor] = {}
        self.hooks = [enc.get_input_embeddings().register_forward_hook(self._hook(i))
                      for i, (_, enc, _) in enumerate(_encoders(pipe))]

    def _hook(self, index: int):
        def hook(module, inputs, output):
            ids = inputs[0]
            match = (ids[..., None] == self.token_ids[index].to(ids.device)).to(output.dtype)  # (B, L, words)
            if self.features is None or not bool(match.any()):
                return output
            words = self.encoder.projections[index](self.features.to(output.device))  # (B, words, dim)
            self.words[index] = words
            return output * (1 - match.sum(-1, keepdim=True)) + torch.einsum("blk,bkd->bld", match, words.to(output.dtype))

        return hook

    def regulariser(self) -> torch.Tensor:
        return self.encoder.regulariser([self.words[i] for i in sorted(self.words)])

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _masked_photo(image, person_mask: np.ndarray) -> torch.Tensor:
    """(3, H, W) in [0, 1]: the photo with everything outside the person mask set to black."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return pixels * torch.from_numpy(person_mask)[None]


class PortraitSampler:
    """Training views of a portrait set: photo framed square, masks from the segmenter, flipped at random.

    A photo that fails (unreadable, bad mask, no person) is counted in ``skipped`` by reason and
    replaced by another drawn from the same generator, so the batch stream stays a pure function of
    (seed, step)."""

    def __init__(self, portraits, segmenter, resolution: int, flip: bool, cache_size: int = 512):
        self.portraits, self.segmenter, self.resolution, self.flip = portraits, segmenter, resolution, flip
        self.cache: dict[int, tuple] = {}
        self.cache_size = cache_size
        self.bad: dict[int, str] = {}
        self.skipped: dict[str, int] = {}

    def load(self, index: int):
        from likeness.data.images import load_image
        from likeness.segmentation import center_square

        if index in self.cache:
            return self.cache[index]
        item = self.portraits.items[index]
        image = load_image(item.photo)
        masks = self.segmenter.segment_person(image, path=item.photo)
        sample = (center_square(image, self.resolution), masks.center_square(self.resolution))
        if len(self.cache) < self.cache_size:
            self.cache[index] = sample
        return sample

    def draw(self, rng: np.random.Generator):
        from likeness.data.identities import DatasetError
        from likeness.data.images import ImageError
        from likeness.segmentation import MaskError, NoPersonError

        n = len(self.portraits.items)
        for _ in range(64):
            index = int(rng.integers(n))
            if index in self.bad:
                continue
            try:
                image, masks = self.load(index)
            except (ImageError, MaskError, NoPersonError) as exc:
                reason = getattr(exc, "status", "unusable")
                self.bad[index] = reason
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                log.warning("skipping training photo: %s", exc)
                continue
            if self.flip and rng.random() < 0.5:
                from PIL import Image

                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                masks = type(masks)(masks.person[:, ::-1].copy(), masks.face[:, ::-1].copy(), masks.source)
            return image, masks
        raise DatasetError(self.portraits.root, f"64 draws in a row found no usable photo; skipped so far: {self.skipped}")


@dataclass
class EncoderSession:
    """One encoder training run in memory (see :meth:`StellarNet.encoder_session`)."""

    pipe: object
    training: object
    options: dict
    portraits: object
    segmenter: object
    image_encoder: ImageEncoder
    encoder: StellarNetEncoder | None = None
    injector: Injector | None = None
    sampler: PortraitSampler | None = None
    trainable: dict = field(default_factory=dict)
    base_hashes: list = field(default_factory=list)
    vocab_rows: list = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)

    def make_batch(self, step: int, micro: int, rng: np.random.Generator):
        """Photos, person masks for the loss, captions "a photo of S* person"; the masked photos' image
        features go to the injector, which turns them into this batch's pseudo-words."""
        from likeness.methods.preparation import caption
        from likeness.methods.training import Batch

        subject = f"{TRAIN_TOKEN} {self.options['class_noun']}"
        pixels, masks, references, captions = [], [], [], []
        for _ in range(self.training.batch_size):
            image, m = self.sampler.draw(rng)
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
            masks.append(torch.from_numpy(m.face if self.training.masked_loss == "face" else m.person)[None])
            references.append(_masked_photo(image, m.person))
            captions.append(caption(subject, rng, TRAIN_TEMPLATES))
        self.injector.features = self.image_encoder(torch.stack(references))
        return Batch(pixels=torch.stack(pixels), captions=captions,
                     mask=torch.stack(masks) if self.training.masked_loss else None)

    def extra_loss(self) -> torch.Tensor:
        return float(self.options["reg_weight"]) * self.injector.regulariser()

    def save(self, out_dir: Path, result) -> None:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.encoder.state_dict().items()},
                  str(out_dir / ENCODER_FILE))
        _save_lora(self.pipe, out_dir)
        o = self.options
        record = {
            "method": "stellarnet", "base_model": self.pipe.likeness_info.to_dict(), "base_hashes": self.base_hashes,
            "vocab_rows": self.vocab_rows,
            "image_encoder": {"model": self.image_encoder.model_id, "revision": self.image_encoder.revision,
                              "dim": self.image_encoder.dim},
            "num_words": int(o["num_words"]), "hidden": int(o["hidden"]), "rank": int(o["rank"]),
            "word_dims": [p.word_dim for p in self.encoder.projections], "init_token": o["init_token"],
            "class_noun": o["class_noun"], "reg_weight": float(o["reg_weight"]), "resolution": self.training.resolution,
            "masks": {**self.segmenter.describe(), "loss_mask": self.training.masked_loss},
            "data": {**self.portraits.summary(), "skipped_in_training": dict(self.sampler.skipped)},
            "training": asdict(self.training), "final_loss": result.losses[-1] if result.losses else None,
            "resumed_from": result.resumed_from, "encoder_sha256": _file_hash(out_dir / ENCODER_FILE),
        }
        (out_dir / CONFIG_FILE).write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")


@METHODS.register("stellarnet")
class StellarNet(Method):
    name = "stellarnet"
    families = ("sdxl",)
    # Not published: the encoder folder `likeness train-encoder --method stellarnet` writes (found by its stellarnet.json).
    published_files = (PublishedFile("weights", CONFIG_FILE, None, "", "encoder from `likeness train-encoder --method stellarnet`"),)
    # Options of the one-time encoder training (`train_encoder`), besides TrainingConfig's fields.
    encoder_defaults = {
        "image_encoder": None,  # hub id or folder of a CLIP vision model (required, except on the tiny bases)
        "num_words": 5,
        "hidden": 1024,
        "rank": 4,
        "reg_weight": 0.01,
        "init_token": "person",
        "class_noun": "person",
        "segmenter": "auto",
        "face_backend": "dlib",
        "layout": "auto",
        "exclude": None,
        "limit": None,
        "flip": True,
        "device": None,
        "overwrite": False,
        # TrainingConfig overrides
        "max_steps": 10000,
        "learning_rate": 1e-4,
        "masked_loss": "person",
    }
    # Options of the tuning-free personalization.
    defaults = {
        "weights": None,
        "image_encoder": None,  # default: the one the weights name
        "framing": "face",
        "segmenter": "auto",
        "face_backend": "dlib",
        "device": None,
        "overwrite": False,
    }
    # The paper's outputs: guidance 5 at 1024 px (SDXL's native size, the pipeline default); it used
    # 100 steps, we default to diffusers' 50 (pass --steps 100 to match).
    default_sampling = {"num_inference_steps": 50, "guidance_scale": 5.0}

    # ------------------------------------------------------------------ training (once)

    def train_encoder(self, data, out_dir, base_model, **config) -> Path:
        """Train the projections + LoRA on the portraits under ``data``; write a weights folder at ``out_dir``.

        Rerunning into the folder of an interrupted run resumes it from its last checkpoint.
        """
        from likeness.methods.training import remove_checkpoints, train

        out_dir = Path(out_dir)
        if (out_dir / CONFIG_FILE).exists() and not config.get("overwrite"):
            raise FileExistsError(f"{out_dir} already holds finished stellarnet weights; choose another folder or overwrite")
        session = self.encoder_session(data, base_model, **config)  # its pipeline carries the runtime plan
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = train(session.pipe, session.trainable, session.make_batch, session.training, out_dir,
                           modules=[session.pipe.unet, session.encoder], extra_loss=session.extra_loss,
                           fingerprint_extra=session.fingerprint)
        finally:
            session.injector.remove()
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return out_dir
        session.save(out_dir, result)  # stellarnet.json last: its presence means the weights are complete
        remove_checkpoints(out_dir)
        self.last_training = result
        return out_dir

    def encoder_session(self, data, base_model, **config) -> "EncoderSession":
        """Everything the encoder training needs, ready for :func:`likeness.methods.training.train`:
        the pipeline with placeholder tokens and LoRA, the projections, the injector, the batch maker."""
        if not config.get("image_encoder"):  # only the built-in tiny bases have a default (built offline)
            from likeness.models.pretrained import image_encoder_for

            config["image_encoder"] = image_encoder_for(base_model, None)

        from likeness.data.portraits import load_portraits
        from likeness.methods.training import native_resolution
        from likeness.models.loading import load_pipeline
        from likeness.segmentation import get_segmenter

        plan = config.pop("plan", None)
        training, options = split_config(config, self.encoder_defaults)
        plan = training_runtime(training, {**options, "plan": plan})
        if not options["image_encoder"]:
            raise ValueError("stellarnet needs image_encoder=<hub id or folder of a CLIP vision model> "
                             "(e.g. openai/clip-vit-large-patch14)")
        if training.masked_loss not in (None, "person", "face"):
            raise ValueError(f"masked_loss must be person, face or None, not {training.masked_loss!r}")
        segmenter = get_segmenter(options["segmenter"], **({"face_backend": options["face_backend"]}
                                                           if options["segmenter"] in ("auto", "heuristic") else {}))
        portraits = load_portraits(data, layout=options["layout"], exclude=options["exclude"],
                                   require_masks=options["segmenter"] == "celebamask", limit=options["limit"])
        pipe = load_pipeline(base_model, plan=plan.with_(dtype="float32", offload="none"))
        _require_sdxl(pipe, base_model)
        training.resolution = training.resolution or native_resolution(pipe)
        image_encoder = ImageEncoder(options["image_encoder"], device=pipe.device)
        session = EncoderSession(pipe=pipe, training=training, options=options, portraits=portraits,
                                 segmenter=segmenter, image_encoder=image_encoder)
        session.base_hashes = [embedding_hash(enc) for _, enc, _ in _encoders(pipe)]
        session.vocab_rows = [enc.get_input_embeddings().num_embeddings for _, enc, _ in _encoders(pipe)]
        encoder, token_ids = self._build(pipe, image_encoder.dim, options)
        session.encoder = encoder.to(pipe.device)
        pipe.unet.add_adapter(_lora_config(options["rank"]))
        session.injector = Injector(pipe, session.encoder, token_ids)
        session.trainable = {f"encoder.{n}": p for n, p in session.encoder.named_parameters()}
        session.trainable.update({f"unet.{n}": p for n, p in pipe.unet.named_parameters() if p.requires_grad})
        session.sampler = PortraitSampler(portraits, segmenter, training.resolution, options["flip"])
        fingerprint = {"method": self.name, "base_model": pipe.likeness_info.to_dict(), "base_hashes": session.base_hashes,
                       "image_encoder": image_encoder.revision, "segmenter": segmenter.describe(),
                       "options": {k: v for k, v in options.items() if k not in ("device", "overwrite")},
                       "data": [str(i.photo) for i in portraits.items]}
        session.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        return session

    def _build(self, pipe, feature_dim: int, options: dict):
        """Placeholder tokens in both tokenizers and the projections, initialised at ``init_token``."""
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(False)
        tokens = placeholder_tokens(TRAIN_TOKEN, int(options["num_words"]))
        init_words, dims, token_ids = [], [], []
        for tokenizer, enc, _ in _encoders(pipe):
            init = tokenizer.encode(options["init_token"], add_special_tokens=False)
            if len(init) != 1:
                raise ValueError(f"init_token {options['init_token']!r} must be one token; it splits into {len(init)}")
            table = enc.get_input_embeddings().weight
            init_words.append(table[init[0]].detach().clone())
            dims.append(table.shape[1])
            if tokens[0] not in tokenizer.get_vocab():
                tokenizer.add_tokens(tokens)
            ids = tokenizer.convert_tokens_to_ids(tokens)
            if len(tokenizer) > enc.get_input_embeddings().num_embeddings:
                enc.resize_token_embeddings(len(tokenizer))
            enc.requires_grad_(False)
            token_ids.append(torch.tensor(ids))
        with torch.random.fork_rng():  # the projections' initial weights do not depend on earlier randomness
            torch.manual_seed(0)
            encoder = StellarNetEncoder(feature_dim, dims, int(options["num_words"]), int(options["hidden"]), init_words)
        return encoder, token_ids

    # ------------------------------------------------------------------ tuning-free personalization

    def personalize(self, identities, out_dir, base_model=None, **config) -> Path:
        """Encode each person's photo(s) with trained ``weights`` and write an artifact (no training).

        ``base_model`` defaults to the one the weights were trained on; another one is refused unless
        its token tables are the same. All photos are encoded before anything is written.
        """
        from likeness.faces import get_backend
        from likeness.methods.base import mask_record, start_artifact
        from likeness.methods.preparation import prepare_identities
        from likeness.segmentation import MIN_PERSON_FRACTION, NoPersonError, get_segmenter

        plan = config.pop("plan", None)
        training, options = split_config(config, self.defaults)
        if plan is not None and options["device"] is None:
            options["device"] = plan.device
        ignored = {k: v for k, v in config.items() if v is not None and k in asdict(training) and k not in ("progress",)}
        if ignored:
            log.warning("stellarnet is tuning-free; ignoring training option(s) %s", ", ".join(sorted(ignored)))
        if not options["weights"]:
            raise WeightsError("stellarnet is tuning-free: pass weights=<folder written by `likeness train-encoder "
                               "--method stellarnet`> (--weights on the command line)")
        weights = Path(options["weights"])
        record = read_weights(weights)
        people = as_identities(identities)
        out_dir = Path(out_dir)
        if (out_dir / MANIFEST_NAME).exists() and not options["overwrite"]:
            raise FileExistsError(f"{out_dir} already holds a finished artifact; choose another output folder or pass overwrite")
        tic = time.perf_counter()
        # Only the text encoders are needed (to check the base model); the UNet and VAE are not loaded.
        pipe = TextEncoders(base_model or record["base_model"]["model_id"], device=options["device"])
        check_base_model(pipe, record, weights)
        image_encoder = ImageEncoder(options["image_encoder"] or record["image_encoder"]["model"], device=pipe.device)
        if image_encoder.dim != record["image_encoder"]["dim"]:
            raise WeightsError(f"{weights}: trained with a {record['image_encoder']['dim']}-d image encoder "
                               f"({record['image_encoder']['model']}), but {image_encoder.model_id} gives {image_encoder.dim}-d")
        if image_encoder.revision != record["image_encoder"]["revision"]:
            log.warning("image encoder %s differs from the one %s was trained with (%s)", image_encoder.model_id,
                        weights, record["image_encoder"]["model"])
        encoder = load_encoder(weights, record).to(pipe.device)
        segmenter = get_segmenter(options["segmenter"], **({"face_backend": options["face_backend"]}
                                                           if options["segmenter"] in ("auto", "heuristic") else {}))
        backend = get_backend(options["face_backend"])
        load_seconds = time.perf_counter() - tic

        def has_person(photo) -> None:
            if photo.person_mask.mean() < MIN_PERSON_FRACTION:
                raise NoPersonError(photo.source, f"{photo.mask_source} person mask is empty")

        prepared, notes = prepare_identities(people, size=int(record["resolution"]), framing=options["framing"],
                                             backend=backend, segmenter=segmenter, accept=has_person)
        words, entries = {}, {}
        for name, good in prepared.items():
            features = image_encoder(torch.stack([_masked_photo(p.image, p.person_mask) for p in good]))
            with torch.no_grad():
                per_encoder = [w.mean(0) for w in encoder(features)]  # several photos: their mean pseudo-words
            words[name] = per_encoder
            entries[name] = IdentityEntry(subject=f"<{name}> {record.get('class_noun', 'person')}",
                                          tokens=placeholder_tokens(f"<{name}>", record["num_words"]),
                                          photos=[str(p.source) for p in good])

        encode_seconds = time.perf_counter() - tic - load_seconds
        # Everything is encoded: only now is anything written.
        out_dir = start_artifact(out_dir, options["overwrite"])
        for name, per_encoder in words.items():
            save_file({key: w.detach().float().cpu().contiguous() for (_, _, key), w in zip(_encoders(pipe), per_encoder)},
                      str(out_dir / f"{name}.safetensors"))
        shutil.copyfile(weights / LORA_WEIGHTS, out_dir / LORA_WEIGHTS)
        recorded = {k: v for k, v in options.items() if k not in ("device", "overwrite")}
        Manifest(
            method=self.name,
            base_model=pipe.likeness_info,
            identities=entries,
            config={"options": recorded, "notes": notes, "weights": str(weights),
                    "weights_sha256": record["encoder_sha256"], "image_encoder": image_encoder.model_id,
                    "masks": mask_record(segmenter, prepared), "trained_with_masks": record["masks"],
                    "training_data": record["data"],
                    "seconds": {"loading": round(load_seconds, 3), "encoding": round(encode_seconds, 3),
                                "people": len(words)}},
            sampling=dict(self.default_sampling),
        ).save(out_dir)
        return out_dir

    def apply(self, pipe, artifact, manifest: Manifest) -> None:
        artifact = Path(artifact)
        lora = artifact / LORA_WEIGHTS
        if not lora.is_file():
            raise ArtifactError(f"{lora}: LoRA weights missing from the stellarnet artifact")
        for name, entry in manifest.identities.items():
            path = artifact / f"{name}.safetensors"
            if not path.is_file():
                raise ArtifactError(f"{path}: pseudo-word file missing from the stellarnet artifact")
            state = load_file(str(path))
            for tokenizer, enc, key in _encoders(pipe):
                if key not in state:
                    raise ArtifactError(f"{path}: no {key!r} embeddings (expected clip_l and clip_g)")
                pipe.load_textual_inversion(state[key].to(enc.dtype), token=entry.tokens[0], text_encoder=enc,
                                            tokenizer=tokenizer)
        pipe.load_lora_weights(str(artifact), weight_name=LORA_WEIGHTS)
        pipe.fuse_lora()  # fused: no extra arithmetic in the denoising steps
        pipe.unload_lora_weights()


class TextEncoders:
    """The two text encoders and tokenizers of an SDXL base model, without its UNet and VAE: all that
    tuning-free personalization needs (to check the base model), at a fraction of the memory."""

    def __init__(self, model_id, device=None):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        from likeness.models.loading import (BaseModelInfo, detect_family, model_revision, pick_device,
                                             resolve_model_path)

        path = resolve_model_path(model_id)
        family = detect_family(path)
        self.likeness_info = BaseModelInfo(str(model_id), family, model_revision(str(model_id), path))
        if family != "sdxl":
            raise FamilyMismatchError(f"base model {model_id!r} is {family}, but stellarnet works on SDXL; "
                                      f"use an SDXL base model")
        self.device = pick_device(device)
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        self.tokenizer_2 = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2")
        self.text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
        self.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2")


def _lora_config(rank: int):
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=int(rank), init_lora_weights="gaussian", target_modules=UNET_TARGETS)


def _save_lora(pipe, out_dir: Path) -> None:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    type(pipe).save_lora_weights(str(out_dir), weight_name=LORA_WEIGHTS, unet_lora_layers=layers)


def read_weights(folder: str | Path) -> dict:
    """The ``stellarnet.json`` of a weights folder, checked for completeness."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise WeightsError(f"{folder}: stellarnet weights folder does not exist")
    if not path.is_file():
        hint = (" (training did not finish; rerun the same train-encoder command to resume)"
                if (folder / "checkpoints").is_dir() else "")
        raise WeightsError(f"{folder}: not a finished stellarnet weights folder (no {CONFIG_FILE}){hint}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: malformed ({exc.msg})") from None
    if record.get("method") != "stellarnet":
        raise WeightsError(f"{path}: written by method {record.get('method')!r}, not stellarnet")
    for name in (ENCODER_FILE, LORA_WEIGHTS):
        if not (folder / name).is_file():
            raise WeightsError(f"{folder / name}: missing from the stellarnet weights folder")
    if _file_hash(folder / ENCODER_FILE) != record.get("encoder_sha256"):
        raise WeightsError(f"{folder / ENCODER_FILE}: does not match {CONFIG_FILE} (changed or corrupt)")
    return record


def check_base_model(pipe, record: dict, weights: Path) -> None:
    """Refuse a base model whose token tables differ from the ones the weights were trained on."""
    trained = record["base_model"]
    rows = record.get("vocab_rows") or [None, None]
    hashes = [embedding_hash(enc, r) for (_, enc, _), r in zip(_encoders(pipe), rows)]
    if hashes != record["base_hashes"]:
        raise WeightsError(f"{weights}: these stellarnet weights were trained for base model {trained['model_id']!r} "
                           f"(revision {trained['revision']}); {pipe.likeness_info.model_id!r} has different text "
                           f"encoders. Use that base model, or train weights for this one (likeness train-encoder)")


def load_encoder(weights: Path, record: dict) -> StellarNetEncoder:
    dims = record["word_dims"]
    encoder = StellarNetEncoder(record["image_encoder"]["dim"], dims, record["num_words"], record["hidden"],
                                [torch.zeros(d) for d in dims])
    state = load_file(str(weights / ENCODER_FILE))
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"{weights / ENCODER_FILE}: does not fit {CONFIG_FILE} ({str(exc).splitlines()[0]})") from None
    return encoder.eval()
