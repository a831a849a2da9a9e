"""PhotoVerse (Chen et al., arXiv 2309.05793): tuning-free personalization with a dual-branch adapter.

An encoder is trained once on many portraits; a new person then costs one forward pass of it.

- **Image encoder**: the CLIP vision model matching the base model (ViT-L/14 for SD 1.x), by hub
  id or local folder. It sees the face box enlarged 1.3x with non-face pixels masked
  (:mod:`likeness.methods.photoverse.data`). Features are read from ``m`` = 5 layers.
- **Text branch**: a text adapter maps the ``m`` layers' class tokens to ``m`` pseudo-word
  embeddings S* (the person's placeholder ``<name>`` expands to them, a standard multi-vector
  textual-inversion file), plus peft LoRA on every cross-attention's K/V.
- **Image branch**: an image adapter maps the penultimate layer's tokens to image tokens, read
  by new K/V projections on every cross-attention sharing its query (decoupled cross-attention,
  laid out like IP-Adapter: :mod:`likeness.methods.photoverse.modules`).
- **Training** (:meth:`PhotoVerse.train_encoder`, shared accelerate loop): random fusion per sample
  (u < 1/3 text only x2, u > 2/3 image only x2, else both); loss = diffusion MSE
  + 0.01 face-identity loss of the predicted clean image against the target's face
  (an injected :class:`likeness.faces.identity_loss.IdentityLoss`-like module)
  + 0.01 L1(pseudo-words) + 0.001 L1(image-branch values).
- **Personalization** (:meth:`PhotoVerse.personalize`) only encodes the photo: no training. At
  sampling both branches are summed with user-set scales (``text_scale``, ``image_scale``).

Encoder folder (``likeness train-encoder``): ``photoverse.json`` (base model, image encoder and its
weight digest, layers, sizes), ``text_adapter.safetensors``, ``ip_adapter.safetensors``
(``image_proj.*`` + ``ip_adapter.<id>.to_{k,v}_ip.weight``), ``pytorch_lora_weights.safetensors``
(diffusers LoRA format), ``loss.csv``/``loss.png``, ``prepared/index.jsonl`` (every training image's
status). Artifact (``likeness personalize --method photoverse --weights DIR``): ``<name>.safetensors``
(pseudo-words, loadable with ``pipe.load_textual_inversion``), ``<name>.image_embeds.safetensors``
(the CLIP features the pipeline takes as ``ip_adapter_image_embeds``), and links to the encoder's
``ip_adapter`` and LoRA files plus its ``photoverse.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from likeness.methods.base import (
    METHODS,
    PublishedFile,
    ArtifactError,
    IdentityEntry,
    Manifest,
    Method,
    Personalized,
    as_identities,
    split_config,
    training_runtime,
    start_artifact,
)
from likeness.methods.photoverse.modules import (
    BranchState,
    PlaceholderWords,
    TextAdapter,
    install,
    ip_adapter_state_dict,
    load_ip_adapter_state,
    set_scales,
)

log = logging.getLogger(__name__)

FORMAT = "likeness-photoverse/1"
ENCODER_CONFIG = "photoverse.json"
TEXT_ADAPTER_FILE = "text_adapter.safetensors"
IP_ADAPTER_FILE = "ip_adapter.safetensors"
LORA_FILE = "pytorch_lora_weights.safetensors"
TRAIN_TOKEN = "<photoverse>"  # the placeholder of training captions; its rows become each sample's S*
# The CLIP image encoder of each family's text side (what the paper pairs with SD 1.x); on the built-in tiny
# bases the tiny one (likeness.models.pretrained.TINY_IMAGE_ENCODER), so the default runs offline.
DEFAULT_IMAGE_ENCODERS = {"sd1": "openai/clip-vit-large-patch14", "sd2": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ENCODER_DEFAULTS = {
    "num_words": 5,  # m: layers read, one pseudo-word each
    "adapter_hidden": 1024,
    "lora_rank": 4,
    "identity_loss_weight": 0.01,
    "words_l1_weight": 0.01,
    "values_l1_weight": 0.001,
    "fusion": "random",  # or text / image / both (ablations, tests)
    "framing": "face",  # the wider training target (2 face widths); the encoder sees 1.3x the face box
    "face_backend": "dlib",
    "device": None,
    "overwrite": False,
    # Training: IP-Adapter's rate and AdamW; the paper does not publish its steps for SD 1.5.
    "learning_rate": 1e-4,
    "max_steps": 20000,
    "batch_size": 1,
}


class EncoderWeightsError(ValueError):
    """Encoder weights that are missing, malformed, or made for another base model / image encoder."""


def placeholder_tokens(name: str, count: int) -> list[str]:
    token = f"<{name}>"
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def default_layers(num_hidden_layers: int, count: int) -> list[int]:
    """``count`` hidden-state indices spread from the first block to the penultimate one."""
    return [int(round(x)) for x in np.linspace(1, num_hidden_layers - 1, count)]


class ImageEncoder(torch.nn.Module):
    """A frozen ``CLIPVisionModel`` that returns PhotoVerse's two feature sets from [0, 1] pixels."""

    def __init__(self, model, model_id: str, layers: list[int], mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.model_id = str(model_id)
        self.layers = list(layers)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, model_id: str | Path, *, layers: list[int] | None = None, num_layers: int = 5,
                        device=None, dtype=torch.float32) -> "ImageEncoder":
        from transformers import CLIPImageProcessor, CLIPVisionModel

        from likeness.models.pretrained import load_pretrained

        def refused(reason):
            return EncoderWeightsError(f"image encoder {str(model_id)!r} could not be loaded as a CLIPVisionModel: "
                                       f"{reason}; give a hub id or a folder written by save_pretrained")

        model = load_pretrained(CLIPVisionModel, str(model_id), dtype=dtype, error=refused)
        mean, std = CLIP_MEAN, CLIP_STD
        try:
            processor = load_pretrained(CLIPImageProcessor, str(model_id), need="preprocessor_config.json")
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except FileNotFoundError:
            pass  # a bare model folder: CLIP's published normalisation
        depth = model.config.num_hidden_layers
        layers = list(layers) if layers else default_layers(depth, num_layers)
        if max(layers) > depth or min(layers) < 0:
            raise EncoderWeightsError(f"image encoder {str(model_id)!r} has {depth} layers; cannot read layers {layers}")
        return cls(model, str(model_id), layers, mean, std).to(device or "cpu")  # buffers follow the model

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.model.config.patch_size) ** 2 + 1

    def describe(self) -> dict:
        """What encoder weights must match: architecture plus a digest of the patch embedding."""
        embeddings = getattr(self.model, "vision_model", self.model).embeddings  # transformers 4 nests it
        weight = embeddings.patch_embedding.weight.detach().float().cpu().contiguous()
        cfg = self.model.config
        return {"model_id": self.model_id, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
                "image_size": cfg.image_size, "patch_size": cfg.patch_size, "layers": self.layers,
                "digest": hashlib.sha256(weight.numpy().tobytes()).hexdigest()[:16]}

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> (class tokens of the chosen layers (B, m, D), penultimate tokens (B, T, D))."""
        param = next(self.model.parameters())
        x = ((pixels.to(param.device, torch.float32) - self.mean) / self.std).to(param.dtype)
        if x.shape[-1] != self.image_size:
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                                                align_corners=False)
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        return torch.stack([hidden[i][:, 0] for i in self.layers], dim=1).float(), hidden[-2].float()


def views_tensor(views) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(v, dtype=np.float32) / 255.0).permute(2, 0, 1) for v in views])


def resolve_identity_loss(spec):
    """The face-identity loss: an ``IdentityLoss``-like module (``embed(images, points)``,
    ``forward(images, points, reference)``), a name for ``build_identity_loss``, or None (no term)."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, str):
        try:
            from likeness.faces.identity_loss import build_identity_loss
        except ImportError:
            raise ValueError(f"identity loss {spec!r} needs likeness.faces.identity_loss (differentiable face "
                             f"embedders); pass identity_loss=None to train without the identity term") from None
        return build_identity_loss(spec)
    if not (hasattr(spec, "embed") and callable(spec)):
        raise TypeError(f"identity_loss must be a name or a module with embed(images, points) and "
                        f"forward(images, points, reference); got {type(spec).__name__}")
    return spec


class DualBranch:
    """PhotoVerse's trainable parts put into a loaded pipeline, and its training objective."""

    def __init__(self, pipe, encoder: ImageEncoder, *, num_words: int, hidden: int, lora_rank: int,
                 identity_loss=None, weights: dict | None = None, seed: int = 0):
        from peft import LoraConfig

        self.pipe, self.encoder, self.identity_loss = pipe, encoder, identity_loss
        self.weights = {"identity": 0.01, "words": 0.01, "values": 0.001, **(weights or {})}
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
        tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
        tokens = placeholder_tokens(TRAIN_TOKEN[1:-1], num_words)
        if not all(t in tokenizer.get_vocab() for t in tokens):
            tokenizer.add_tokens(tokens)
            if len(tokenizer) > text_encoder.get_input_embeddings().num_embeddings:
                text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows are replaced
        self.words_hook = PlaceholderWords(text_encoder.get_input_embeddings(), tokenizer.convert_tokens_to_ids(tokens))
        self.state = BranchState()
        device = pipe.unet.device
        with torch.random.fork_rng(devices=[]):  # initial weights depend only on the seed
            torch.manual_seed(seed)
            self.text_adapter = TextAdapter(num_words, encoder.hidden_size, hidden,
                                            text_encoder.get_input_embeddings().embedding_dim).to(device)
            self.image_adapter = install(pipe.unet, image_dim=encoder.hidden_size, hidden=hidden,
                                         num_tokens=encoder.num_tokens, state=self.state)
            with torch.no_grad():  # IP-Adapter's start: the image K/V begin as copies of the text K/V
                for proc_name, proc in pipe.unet.attn_processors.items():
                    if hasattr(proc, "to_k_ip"):
                        attn = pipe.unet.get_submodule(proc_name[: -len(".processor")])
                        proc.to_k_ip[0].weight.copy_(attn.to_k.weight)
                        proc.to_v_ip[0].weight.copy_(attn.to_v.weight)
            pipe.unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                             target_modules=["attn2.to_k", "attn2.to_v"]))
        # peft leaves only the LoRA trainable; the image branch trains too.
        pipe.unet.encoder_hid_proj.requires_grad_(True)
        for proc in pipe.unet.attn_processors.values():
            if isinstance(proc, torch.nn.Module):
                proc.requires_grad_(True)
        if identity_loss is not None:
            identity_loss.to(device).requires_grad_(False).eval()
        self.trainable = {f"text_adapter.{n}": p for n, p in self.text_adapter.named_parameters()}
        self.trainable.update({f"unet.{n}": p for n, p in pipe.unet.named_parameters() if p.requires_grad})
        self.modules = [self.text_adapter, pipe.unet]
        self.terms: list[dict] = []  # per micro-step loss components (this process, this call)
        self.identity_skipped = 0  # samples whose face was too small for the identity embedder's chip

    def loss(self, pipe, noise_scheduler, batch, generator, *, prior_loss_weight: float = 1.0, identity=None) -> torch.Tensor:
        """Diffusion MSE + identity + L1(pseudo-words) + L1(image values), with the batch's fusion weights."""
        from likeness.methods.training import encode_captions

        unet, vae = pipe.unet, pipe.vae
        device = unet.device
        pixels = batch.pixels.to(device, next(vae.parameters()).dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(generator=generator).float() * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)

        layer_features, tokens = self.encoder(batch.encoder_pixels)
        words = self.text_adapter(layer_features.to(device))
        self.words_hook.words = words
        try:
            prompt_embeds, _ = encode_captions(pipe, batch.captions, device)
        finally:
            self.words_hook.words = None
        self.state.text_weight, self.state.image_weight = batch.text_weight, batch.image_weight
        self.state.collect_values, self.state.values = True, []
        unet_dtype = next(unet.parameters()).dtype
        try:
            pred = unet(noisy.to(unet_dtype), timesteps, prompt_embeds.to(unet_dtype),
                        added_cond_kwargs={"image_embeds": [tokens[:, None].to(device, unet_dtype)]}).sample.float()
            values = torch.stack(self.state.values).mean() if self.state.values else pred.new_zeros(())
        finally:
            self.state.reset()
        prediction_type = noise_scheduler.config.prediction_type
        target = noise_scheduler.get_velocity(latents, noise, timesteps) if prediction_type == "v_prediction" else noise
        mse = ((pred - target) ** 2).mean()
        words_l1 = words.abs().mean()
        identity = pred.new_zeros(())
        if self.identity_loss is not None and self.weights["identity"] > 0:
            from likeness.methods.training import predicted_x0

            height, width = batch.pixels.shape[-2:]
            usable = getattr(self.identity_loss, "usable", lambda *a: True)
            keep = [i for i in range(len(batch.captions)) if usable(batch.points[i], height, width)]
            self.identity_skipped += len(batch.captions) - len(keep)
            if keep:  # faces too small for the embedder's chip are left out of this term (counted)
                clean = predicted_x0(noise_scheduler, noisy.float(), pred, timesteps)[keep]
                image = vae.decode((clean / vae.config.scaling_factor).to(unet_dtype)).sample.float().clamp(-1, 1)
                points = batch.points[keep].to(device)
                with torch.no_grad():
                    reference = self.identity_loss.embed(batch.pixels[keep].to(device).float(), points)
                identity = self.identity_loss(image, points, reference).mean()
        total = (mse + self.weights["identity"] * identity + self.weights["words"] * words_l1
                 + self.weights["values"] * values)
        self.terms.append({k: float(v.detach()) for k, v in (("mse", mse), ("identity", identity), ("words_l1", words_l1),
                                                             ("values_l1", values), ("total", total))})
        return total

    def save(self, out_dir: Path, config: dict) -> None:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.text_adapter.state_dict().items()},
                  str(out_dir / TEXT_ADAPTER_FILE), metadata={"format": FORMAT})
        save_file(ip_adapter_state_dict(self.pipe.unet), str(out_dir / IP_ADAPTER_FILE), metadata={"format": FORMAT})
        lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.pipe.unet))
        type(self.pipe).save_lora_weights(str(out_dir), unet_lora_layers=lora, weight_name=LORA_FILE)
        (out_dir / ENCODER_CONFIG).write_text(json.dumps(config, indent=1, default=str), encoding="utf-8")


class EncoderWeights:
    """A trained encoder folder: its config, and the checks that it fits a base model and image encoder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / ENCODER_CONFIG
        if not path.is_file():
            raise EncoderWeightsError(f"{self.folder}: not PhotoVerse encoder weights (no {ENCODER_CONFIG}); train "
                                      f"them with `likeness train-encoder --method photoverse`"
                                      + ("; training did not finish, rerun it to resume"
                                         if (self.folder / "checkpoints").is_dir() else ""))
        try:
            self.config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EncoderWeightsError(f"{path}: malformed ({exc})") from None
        if self.config.get("format") != FORMAT:
            raise EncoderWeightsError(f"{path}: format {self.config.get('format')!r}, expected {FORMAT!r}")
        for name in (TEXT_ADAPTER_FILE, IP_ADAPTER_FILE, LORA_FILE):
            if not (self.folder / name).is_file():
                raise EncoderWeightsError(f"{self.folder / name}: missing from the PhotoVerse encoder weights")

    def check_base_model(self, info, model_id: str) -> None:
        trained = self.config["base_model"]
        if info.family != trained["family"] or (str(model_id) != trained["model_id"] and info.revision != trained["revision"]):
            raise EncoderWeightsError(
                f"{self.folder}: encoder weights were trained for base model {trained['model_id']!r} "
                f"({trained['family']}, revision {trained['revision']}), not {str(model_id)!r} ({info.family}, "
                f"revision {info.revision}); pass --base-model {trained['model_id']} or train an encoder for this model")

    def check_image_encoder(self, encoder: ImageEncoder) -> None:
        trained, given = self.config["image_encoder"], encoder.describe()
        keys = ("hidden_size", "num_hidden_layers", "image_size", "patch_size", "digest")
        diffs = [f"{k} {given[k]} != {trained[k]}" for k in keys if given[k] != trained[k]]
        if diffs:
            raise EncoderWeightsError(
                f"{self.folder}: encoder weights were trained with image encoder {trained['model_id']!r}, but "
                f"{given['model_id']!r} differs ({'; '.join(diffs)}); use the image encoder they were trained with")

    def text_adapter(self, device) -> TextAdapter:
        cfg = self.config
        adapter = TextAdapter(cfg["num_words"], cfg["image_encoder"]["hidden_size"], cfg["adapter_hidden"], cfg["text_dim"])
        state = load_file(str(self.folder / TEXT_ADAPTER_FILE))
        try:
            adapter.load_state_dict(state)
        except RuntimeError as exc:
            raise EncoderWeightsError(f"{self.folder / TEXT_ADAPTER_FILE}: does not match {ENCODER_CONFIG} ({exc})") from None
        return adapter.to(device).eval()


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link when possible (encoder files are shared by every artifact made from them), else copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class PhotoVersePersonalized(Personalized):
    """Generation with the image branch: each call passes the person's CLIP features as
    ``ip_adapter_image_embeds``; the unconditional half of a guided batch gets no image branch."""

    def __init__(self, pipe, manifest, artifact, image_embeds: dict[str, torch.Tensor], state: BranchState):
        super().__init__(pipe, manifest, artifact)
        self.image_embeds = image_embeds
        self.state = state

    def set_scales(self, *, text: float | None = None, image: float | None = None) -> None:
        set_scales(self.pipe.unet, text=text, image=image)

    def pipeline_kwargs(self, identity, batch, guidance_scale):
        embeds = self.image_embeds[self.key(identity)].to(self.pipe.device, self.pipe.unet.dtype)[None, None].expand(batch, 1, -1, -1)
        if guidance_scale > 1 and getattr(self.pipe.unet.config, "time_cond_proj_dim", None) is None:
            self.state.image_weight = torch.tensor([0.0] * batch + [1.0] * batch)
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
        else:
            self.state.image_weight = None
        return {"ip_adapter_image_embeds": [embeds]}


@METHODS.register("photoverse")
class PhotoVerse(Method):
    name = "photoverse"
    families = ("sd1", "sd2")
    # Not published: the encoder folder `likeness train-encoder --method photoverse` writes (found by its photoverse.json).
    published_files = (PublishedFile("weights", ENCODER_CONFIG, None, "", "encoder from `likeness train-encoder --method photoverse`"),)
    defaults = {
        "weights": None,  # a trained encoder folder (required)
        "image_encoder": None,  # default: the one the encoder was trained with
        "text_scale": 1.0,
        "image_scale": 1.0,
        "face_backend": "dlib",
        "device": None,
        "overwrite": False,
    }

    # ---------------------------------------------------------------- training the encoder, once
    def train_encoder(self, data: str | Path, out_dir: str | Path, base_model: str, *, image_encoder: str | None = None,
                      identity_loss="dlib", exclude=(), **config) -> Path:
        """Train the adapters and LoRA on a folder of portraits; writes the encoder folder ``out_dir``.

        ``identity_loss``: an ``IdentityLoss``-like module, a name for ``build_identity_loss``, or None.
        ``exclude``: people (or files listing them) left out of training. Rerunning into the folder of
        an interrupted run resumes it exactly.
        """
        from accelerate import PartialState

        from likeness.faces import get_backend
        from likeness.methods.photoverse.data import (
            encoder_batches,
            list_training_images,
            prepare_training_set,
            read_exclude,
        )
        from likeness.methods.training import native_resolution, remove_checkpoints, train
        from likeness.models.loading import load_pipeline
        from likeness.models.pretrained import image_encoder_for

        plan = config.pop("plan", None)
        training, options = split_config(config, ENCODER_DEFAULTS)
        plan = training_runtime(training, {**options, "plan": plan})
        out_dir = Path(out_dir)
        if (out_dir / ENCODER_CONFIG).exists() and not options["overwrite"]:
            raise FileExistsError(f"{out_dir} already holds trained encoder weights; choose another folder or pass overwrite")
        out_dir.mkdir(parents=True, exist_ok=True)
        excluded = read_exclude(exclude)
        images, dropped = list_training_images(data, excluded)
        loss_module = resolve_identity_loss(identity_loss)
        pipe = load_pipeline(base_model, plan=plan.with_(dtype="float32", offload="none"))
        family = pipe.likeness_info.family
        if family == "sdxl":
            raise ValueError("PhotoVerse is built for SD 1.x / 2.x (one text encoder); SDXL is not supported")
        training.resolution = training.resolution or native_resolution(pipe)
        encoder_id = image_encoder or image_encoder_for(base_model, DEFAULT_IMAGE_ENCODERS[family])
        encoder = ImageEncoder.from_pretrained(encoder_id, num_layers=options["num_words"], device=pipe.device)
        items, report = prepare_training_set(images, out_dir / "prepared", size=training.resolution,
                                             encoder_size=encoder.image_size, backend=get_backend(options["face_backend"]),
                                             framing=options["framing"])
        report["excluded"] = dropped
        model = DualBranch(pipe, encoder, num_words=options["num_words"], hidden=options["adapter_hidden"],
                           lora_rank=options["lora_rank"], identity_loss=loss_module, seed=training.seed,
                           weights={"identity": options["identity_loss_weight"], "words": options["words_l1_weight"],
                                    "values": options["values_l1_weight"]})
        make_batch = encoder_batches(items, TRAIN_TOKEN, batch_size=training.batch_size, fusion=options["fusion"])
        recorded = {k: v for k, v in options.items() if k not in ("device", "overwrite")}
        fingerprint = {"method": self.name, "base_model": pipe.likeness_info.to_dict(), "options": recorded,
                       "image_encoder": encoder.describe(), "data": [str(i.target) for i in items],
                       "identity_loss": identity_loss if isinstance(identity_loss, (str, type(None))) else
                       type(identity_loss).__name__}
        result = train(pipe, model.trainable, make_batch, training, out_dir, modules=model.modules,
                       fingerprint_extra=json.loads(json.dumps(fingerprint, default=str)), loss_fn=model.loss, plan=plan)
        self.last_training = model  # the in-memory parts (tests, notebooks)
        self.last_result = result
        if not PartialState().is_main_process:
            return out_dir
        text_encoder = pipe.text_encoder
        model.save(out_dir, {
            "format": FORMAT, "method": self.name, "base_model": pipe.likeness_info.to_dict(),
            "image_encoder": encoder.describe(), "num_words": options["num_words"],
            "adapter_hidden": options["adapter_hidden"], "lora_rank": options["lora_rank"],
            "num_tokens": encoder.num_tokens, "text_dim": text_encoder.get_input_embeddings().embedding_dim,
            "cross_attention_dim": pipe.unet.config.cross_attention_dim,
            "training": asdict(training), "options": recorded, "data": {"root": str(data), **report,
                                                                       "excluded_people": excluded},
            "identity_loss": fingerprint["identity_loss"], "identity_loss_skipped": model.identity_skipped,
            "final_loss": result.losses[-1] if result.losses else None,
            "resumed_from": result.resumed_from,
        })  # photoverse.json is written last: its presence means the folder is complete
        model.words_hook.remove()
        remove_checkpoints(out_dir)
        return out_dir

    # ---------------------------------------------------------------- personalization: encode only
    def personalize(self, identities, out_dir, base_model=None, **config) -> Path:
        """Encode each person's photos (no training) and write an artifact folder; returns its path.

        Training options other methods take (``max_steps`` ...) are accepted and have no effect.
        """
        from likeness.data.images import ImageError, image_to_array, load_image
        from likeness.faces import get_backend
        from likeness.methods.photoverse.data import encoder_view
        from likeness.methods.preparation import NoFaceError
        from likeness.models.loading import base_model_info, pick_device
        from likeness.methods.training import TrainingConfig

        tic = time.perf_counter()
        training_keys = {f.name for f in fields(TrainingConfig)}
        ignored = sorted(k for k, v in config.items() if k in training_keys and v is not None)
        plan = config.pop("plan", None)
        _, options = split_config({k: v for k, v in config.items() if k not in training_keys}, self.defaults)
        if not options["weights"]:
            raise ValueError("photoverse needs trained encoder weights: pass weights=FOLDER (--weights) made by "
                             "`likeness train-encoder --method photoverse`")
        people = as_identities(identities)
        weights = EncoderWeights(options["weights"])
        if base_model is None:  # default: the base model the encoder was trained on
            base_model = weights.config["base_model"]["model_id"]
        info = base_model_info(base_model)
        weights.check_base_model(info, base_model)
        device = plan.torch_device if plan is not None and options["device"] is None else pick_device(options["device"])
        encoder = ImageEncoder.from_pretrained(options["image_encoder"] or weights.config["image_encoder"]["model_id"],
                                               layers=weights.config["image_encoder"]["layers"], device=device)
        weights.check_image_encoder(encoder)
        text_adapter = weights.text_adapter(device)
        backend = get_backend(options["face_backend"])
        out_dir = start_artifact(out_dir, options["overwrite"])
        notes = [f"tuning-free: ignored training option(s) {', '.join(ignored)}"] if ignored else []
        entries = {}
        for name, photos in people:
            views, used, errors = [], [], []
            for path in photos:
                try:
                    image = load_image(path)
                    faces = backend.detect(image_to_array(image))
                    if not faces:
                        raise NoFaceError(path)
                except (ImageError, NoFaceError) as exc:
                    errors.append(exc)
                    continue
                face = max(faces, key=lambda f: f.area)
                if len(faces) > 1:
                    notes.append(f"{path}: {len(faces)} faces found; using the largest")
                views.append(encoder_view(image, face, encoder.image_size))
                used.append(str(path))
            if not views:
                raise errors[0]
            notes += [f"skipped {exc}" for exc in errors]
            with torch.no_grad():
                layer_features, tokens = encoder(views_tensor(views).to(device))
                words = text_adapter(layer_features).mean(0)
            tokens_list = placeholder_tokens(name, weights.config["num_words"])
            save_file({tokens_list[0]: words.float().cpu().contiguous()}, str(out_dir / f"{name}.safetensors"))
            save_file({"image_embeds": tokens.mean(0).float().cpu().contiguous()},
                      str(out_dir / f"{name}.image_embeds.safetensors"))
            entries[name] = IdentityEntry(subject=tokens_list[0], tokens=tokens_list, photos=used)
        for file in (IP_ADAPTER_FILE, LORA_FILE, ENCODER_CONFIG):
            _link_or_copy(weights.folder / file, out_dir / file)
        recorded = {k: v for k, v in options.items() if k not in ("device", "overwrite")}
        recorded["weights"] = str(weights.folder.resolve())
        Manifest(method=self.name, base_model=info, identities=entries,
                 config={"options": recorded, "image_encoder": weights.config["image_encoder"], "notes": notes,
                         "encode_seconds": round(time.perf_counter() - tic, 3)},
                 sampling=dict(self.default_sampling.get(info.family, self.default_sampling))).save(out_dir)
        return out_dir

    # ---------------------------------------------------------------- generation
    def apply(self, pipe, artifact, manifest: Manifest) -> BranchState:
        artifact = Path(artifact)
        path = artifact / ENCODER_CONFIG
        for name in (ENCODER_CONFIG, IP_ADAPTER_FILE, LORA_FILE):
            if not (artifact / name).is_file():
                raise ArtifactError(f"{artifact / name}: missing from the photoverse artifact")
        cfg = json.loads(path.read_text(encoding="utf-8"))
        text_dim = pipe.text_encoder.get_input_embeddings().embedding_dim
        if cfg["text_dim"] != text_dim or cfg["cross_attention_dim"] != pipe.unet.config.cross_attention_dim:
            raise ArtifactError(f"{artifact}: made for a base model with text width {cfg['text_dim']} and cross-attention "
                                f"width {cfg['cross_attention_dim']}; this one has {text_dim} and "
                                f"{pipe.unet.config.cross_attention_dim}")
        pipe.load_lora_weights(str(artifact), weight_name=LORA_FILE)
        pipe.fuse_lora()  # the text branch's LoRA costs nothing per step once fused
        pipe.unload_lora_weights()
        options = manifest.config.get("options", {})
        state = BranchState()
        install(pipe.unet, image_dim=cfg["image_encoder"]["hidden_size"], hidden=cfg["adapter_hidden"],
                num_tokens=cfg["num_tokens"], state=state, text_scale=float(options.get("text_scale", 1.0)),
                image_scale=float(options.get("image_scale", 1.0)))
        load_ip_adapter_state(pipe.unet, load_file(str(artifact / IP_ADAPTER_FILE)), str(artifact / IP_ADAPTER_FILE))
        for name, entry in manifest.identities.items():
            file = artifact / f"{name}.safetensors"
            if not file.is_file():
                raise ArtifactError(f"{file}: pseudo-word file missing from the photoverse artifact")
            pipe.load_textual_inversion(str(file), token=entry.tokens[0])
        return state

    def load(self, artifact, *, base_model=None, device=None, dtype=None, text_scale=None, image_scale=None, plan=None):
        from likeness.models.loading import load_pipeline

        artifact = Path(artifact)
        manifest = Manifest.load(artifact)
        if manifest.method != self.name:
            raise ArtifactError(f"{artifact}: made by method {manifest.method!r}, not {self.name!r}")
        pipe = load_pipeline(base_model or manifest.base_model.model_id, device=device, dtype=dtype, plan=plan,
                             expect_family=manifest.family)
        state = self.apply(pipe, artifact, manifest)
        embeds = {}
        for name in manifest.identities:
            file = artifact / f"{name}.image_embeds.safetensors"
            if not file.is_file():
                raise ArtifactError(f"{file}: image features missing from the photoverse artifact")
            embeds[name] = load_file(str(file))["image_embeds"]
        personalized = PhotoVersePersonalized(pipe, manifest, artifact, embeds, state)
        personalized.set_scales(text=text_scale, image=image_scale)
        return personalized

    def generate(self, artifact, prompts, seeds, **kwargs):
        loading = {k: kwargs.pop(k) for k in ("base_model", "device", "dtype", "text_scale", "image_scale") if k in kwargs}
        return self.load(artifact, **loading).generate(prompts, seeds, **kwargs)
