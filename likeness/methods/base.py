"""The method interface every personalization method implements, and the artifact it writes.

A method turns photos of people into an **artifact folder** holding files plain diffusers can load
(textual-inversion embeddings, LoRA weights, safetensors) plus ``likeness.json``, the manifest::

    {"method": "textual-inversion", "base_model": {"model_id", "family", "revision"},
     "identities": {"obama": {"subject": "<obama>", "tokens": ["<obama>"], "photos": [...]}},
     "config": {...}, "sampling": {"num_inference_steps", "guidance_scale"}, "likeness_version": "..."}

Prompts follow the Stellar convention: ``"{} sleeping on a couch"``; at generation time ``{}`` is
replaced by the identity's ``subject`` (e.g. ``"sks person"`` or ``"<obama>"``).

Subclasses implement two things: :meth:`Method.personalize` (train and write the artifact) and
:meth:`Method.apply` (put the artifact into a freshly loaded pipeline). Loading, checks and
generation are shared, so every method fails the same way on the same bad input.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Sequence

import torch
from PIL import Image

from likeness import __version__
from likeness.data.names import check_unique, display_name, lookup, name_key
from likeness.models.families import sampling_kwargs
from likeness.models.loading import BaseModelInfo, FamilyMismatchError, load_pipeline
from likeness.registry import Registry

PLACEHOLDER = "{}"
MANIFEST_NAME = "likeness.json"

METHODS: Registry["Method"] = Registry("method")


class PromptPlaceholderError(ValueError):
    """A prompt has no ``{}`` where the person goes, so the personalized subject would silently vanish."""


class ArtifactError(ValueError):
    """An artifact folder is missing, incomplete, or made by another method. The message names the folder."""


class UnknownMethodError(ValueError):
    pass


def fill_prompt(template: str, subject: str) -> str:
    """Put ``subject`` where ``{}`` is; refuse prompts without the placeholder."""
    if PLACEHOLDER not in template:
        raise PromptPlaceholderError(
            f"prompt {template!r} has no {PLACEHOLDER!r} placeholder for the person; write it like "
            f"'{{}} sleeping on a couch'"
        )
    return template.replace(PLACEHOLDER, subject)


@dataclass
class IdentityEntry:
    """How one person is addressed inside an artifact."""

    subject: str  # what replaces "{}" in prompts
    tokens: list[str]  # new or repurposed tokens the artifact relies on
    photos: list[str]  # file names only (never local paths), in training order
    display: str = ""  # the person's name as given (the manifest key is its likeness.data.names key)
    photo_sha256: list[str] = field(default_factory=list)  # content hash of each photo, same order


@dataclass
class Manifest:
    method: str
    base_model: BaseModelInfo
    identities: dict[str, IdentityEntry]
    config: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    likeness_version: str = __version__
    created: str = ""

    @property
    def family(self) -> str:
        return self.base_model.family

    def save(self, folder: str | Path) -> Path:
        """Write the model card (README.md) and then ``likeness.json``, whose presence marks a finished artifact."""
        from likeness.methods.model_card import write_model_card

        write_model_card(folder, self)
        path = Path(folder) / MANIFEST_NAME
        record = asdict(self)
        record["created"] = self.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: artifact folder does not exist")
        if not path.is_file():
            hint = ("training did not finish; rerun the same `likeness personalize` command to resume"
                    if (folder / "checkpoints").is_dir() else "run `likeness personalize` first")
            raise ArtifactError(f"{folder}: not a finished likeness artifact (no {MANIFEST_NAME}); {hint}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            unsafe = [k for k in raw["identities"] if not isinstance(k, str) or name_key(k) != k]
            if unsafe:  # keys become file names inside the artifact: "../x" must never leave it
                raise ArtifactError(f"{path}: identity keys {unsafe!r} are not likeness name keys (see likeness.data.names)")
            return cls(
                method=raw["method"],
                base_model=BaseModelInfo(**raw["base_model"]),
                identities={name: IdentityEntry(**entry) for name, entry in raw["identities"].items()},
                config=raw.get("config", {}),
                sampling=raw.get("sampling", {}),
                likeness_version=raw.get("likeness_version", "?"),
                created=raw.get("created", ""),
            )
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, ValueError,
                RecursionError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})"[:600]) from None


def read_manifest(artifact: str | Path) -> Manifest:
    return Manifest.load(artifact)


class Personalized:
    """A base pipeline with an artifact applied: generate images of the artifact's people."""

    def __init__(self, pipe, manifest: Manifest, artifact: Path):
        self.pipe = pipe
        self.manifest = manifest
        self.artifact = artifact

    @property
    def identities(self) -> list[str]:
        """The keys of the artifact's people (see :mod:`likeness.data.names`)."""
        return list(self.manifest.identities)

    def display(self, key: str) -> str:
        return self.manifest.identities[key].display or key

    def key(self, identity: str | None = None) -> str:
        """The manifest key of ``identity``, given as a display name (``José García``) or a key."""
        names = self.identities
        if identity is None:
            if len(names) != 1:
                raise ValueError(f"{self.artifact} holds {len(names)} identities ({', '.join(names)}); say which one")
            return names[0]
        key = lookup(identity, self.manifest.identities)
        if key is None:
            held = ", ".join(f"{self.display(k)!r}" for k in names)
            raise KeyError(f"identity {identity!r} is not in {self.artifact}; it holds: {held}")
        return key

    def subject(self, identity: str | None = None) -> str:
        return self.manifest.identities[self.key(identity)].subject

    def pipeline_kwargs(self, identity: str | None, batch: int, guidance_scale: float) -> dict:
        """Extra pipeline-call arguments for a batch of ``batch`` prompts (e.g. image-prompt embeddings)."""
        return {}

    def prompt(self, template: str, identity: str | None = None) -> str:
        """The exact text given to the pipeline for ``template`` (useful to reproduce with plain diffusers)."""
        return fill_prompt(template, self.subject(identity))

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        identity: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | None = None,
        batch_size: int = 1,
    ) -> list[Image.Image]:
        """One image per ``(prompts[i], seeds[i])`` pair; prompt templates contain ``{}``.

        Each image's initial noise comes from ``torch.Generator("cpu").manual_seed(seed)``, as in
        plain diffusers, so the same seed gives the same image whatever the batch size.
        """
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
        texts = [self.prompt(t, identity) for t in prompts]  # validates every prompt before any work
        steps = num_inference_steps or self.manifest.sampling.get("num_inference_steps", 50)
        guidance = guidance_scale if guidance_scale is not None else self.manifest.sampling.get("guidance_scale", 7.5)
        images: list[Image.Image] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start : start + batch_size]]
            out = self.call_pipe(
                chunk,
                identity=identity,
                **sampling_kwargs(self.manifest.family, dict(
                    negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    height=height,
                    width=width,
                    generator=generators,
                )),
                **self.pipeline_kwargs(identity, len(chunk), guidance),
            )
            images.extend(out.images)
        return images

    def call_pipe(self, prompts: list[str], *, identity: str | None = None, **kwargs):
        """One pipeline call for a chunk of filled prompts. Methods that condition on more than the text
        (the tuning-free peers feed image or face embeddings) override it."""
        return self.pipe(prompt=prompts, **kwargs)


@dataclass
class TrainingSetup:
    """What a method hands the shared loop: which tensors train, and how people are addressed."""

    identities: dict[str, IdentityEntry]
    trainable: dict[str, torch.nn.Parameter]
    modules: list[torch.nn.Module]
    after_step: Callable[[], None] | None = None
    # Optional wrapper around the photo batch maker (DreamBooth mixes in class images with it).
    wrap_batches: Callable[[Callable], Callable] | None = None
    prior_loss_weight: float = 1.0
    # The objective, when not the UNet's denoising loss (flow-matching bases: likeness.methods.baselines.flow_matching).
    loss_fn: Callable | None = None


# Options every trained method accepts besides TrainingConfig's fields.
COMMON_OPTIONS = {
    "device": None,  # cpu, cuda, cuda:<i>, mps; None = the runtime plan's default
    "plan": None,  # a likeness.models.runtime.RuntimePlan (wins over device / mixed_precision)
    "framing": "face",  # see likeness.methods.preparation.FRAMINGS
    "flip": True,
    "color_jitter": 0.0,
    "scale_range": None,
    "face_backend": "dlib",
    "segmenter": "auto",  # person/face masks: see likeness.segmentation (auto, heuristic, celebamask, transformers:<model>)
    "overwrite": False,
    # Face-identity loss on the decoded predicted image (likeness.faces.identity_loss); 0 = off.
    "id_loss_weight": 0.0,
    "id_loss_embedder": "dlib",  # "dlib" (torch port, offline) or "arcface" (needs id_loss_weights)
    "id_loss_weights": None,  # arcface: InsightFace recogniser .onnx / .pth; dlib: another .dat
}


def write_images(
    personalized: "Personalized",
    prompts: Sequence,
    seeds: Sequence[int],
    out_root: str | Path,
    *,
    identities: Sequence[str] | None = None,
    skip_existing: bool = True,
    progress: bool = True,
    **sampling,
) -> list[Path]:
    """Generate every (identity, prompt, seed) and write likeness's canonical layout:
    ``<out_root>/<identity>/<item_id>.png`` + ``.json`` sidecar. ``prompts`` are
    :class:`likeness.data.prompts.Prompt` objects (id, detectables, ...). Existing images are kept,
    so an interrupted run continues where it stopped."""
    from tqdm.auto import tqdm

    from likeness.data.layout import canonical_item_id, write_sidecar

    info = personalized.manifest.base_model
    written = []
    keys = [personalized.key(name) for name in (identities or personalized.identities)]  # KeyError before any work
    jobs = [(name, prompt, seed) for name in keys for prompt in prompts for seed in seeds]
    for name, prompt, seed in tqdm(jobs, desc="generating", disable=not progress):
        entry = personalized.manifest.identities[name]
        reference = Path(entry.photos[0]).name if entry.photos else ""
        item_id = canonical_item_id(name, reference or "none", prompt.prompt_id, seed)
        image_path = Path(out_root) / name / f"{item_id}.png"
        if skip_existing and image_path.exists() and image_path.with_suffix(".json").exists():
            written.append(image_path)
            continue
        image = personalized.generate([prompt.template], [seed], identity=name, **sampling)[0]
        image_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = image_path.with_name(image_path.stem + ".tmp.png")
        image.save(tmp)
        tmp.replace(image_path)
        write_sidecar(image_path, {
            "item_id": item_id, "identity": personalized.display(name), "identity_key": name, "reference": reference,
            "prompt": personalized.prompt(prompt.template, name), **prompt.sidecar_fields(),
            "seed": int(seed), "method": personalized.manifest.method, "base_model": info.model_id,
            "base_model_revision": info.revision, "family": info.family,
            **_quantization_field(personalized.pipe), **_precision_field(personalized.pipe),
        })
        written.append(image_path)
    return written


def _precision_field(pipe) -> dict:
    """The denoiser's dtype where it is not float32 (half-precision pixels differ from float32 ones by rounding)."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    name = str(getattr(denoiser, "dtype", "float32")).replace("torch.", "")
    return {} if name == "float32" else {"dtype": name}


def _quantization_field(pipe) -> dict:
    record = getattr(pipe, "likeness_quantization", None) or {}
    return {} if record.get("quantize", "none") == "none" else {"quantization": record}


@dataclass(frozen=True)
class PublishedFile:
    """One published weights file a method loads: where users get it and which option takes it.

    ``option`` is the method option that accepts the file, a folder holding it, or a hub id (``hub`` is the
    default); ``when`` the option values under which this file is the one needed (``{"version": "v1.1"}``; the key
    ``family`` names the base family it is published for). The demo (:mod:`likeness.methods.discovery`) uses these to say which methods a weights folder or the local hub
    cache can run; loading itself always goes through :func:`likeness.models.pretrained.resolve_file`.
    """

    option: str
    filename: str
    hub: str | None = None
    subfolder: str = ""
    role: str = "weights"
    when: tuple[tuple[str, object], ...] = ()


class Method:
    """Base class. A method sets ``name`` and ``defaults`` and implements :meth:`setup`,
    :meth:`save_weights` and :meth:`apply`; the shared :meth:`personalize` does the rest
    (photos, training loop, manifest). Methods that do not fit may override :meth:`personalize`."""

    name: ClassVar[str] = ""
    # The base-model families it runs on (likeness.models.families names: sd1, sd2, sdxl, flux1, flux2, sd3,
    # qwen-image); empty: every family the shared training supports.
    families: ClassVar[tuple[str, ...]] = ()
    # The published files it needs besides the base model (tuning methods: none).
    published_files: ClassVar[tuple[PublishedFile, ...]] = ()
    # Method options and TrainingConfig overrides, from the method's paper / diffusers example.
    defaults: ClassVar[dict] = {}
    # Sampling defaults recorded in the manifest (a user's explicit values always win): either one
    # dict, or one per family (here: the values the diffusers pipelines themselves default to).
    default_sampling: ClassVar[dict] = {
        "sd1": {"num_inference_steps": 50, "guidance_scale": 7.5},
        "sd2": {"num_inference_steps": 50, "guidance_scale": 7.5},
        "sdxl": {"num_inference_steps": 50, "guidance_scale": 5.0},
        # The flow-matching pipelines' own defaults; FLUX.1's guidance is its distilled-guidance input, Qwen-Image's
        # is true classifier-free guidance (see likeness.models.families.sampling_kwargs).
        "flux1": {"num_inference_steps": 28, "guidance_scale": 3.5},
        "flux2": {"num_inference_steps": 50, "guidance_scale": 4.0},
        "sd3": {"num_inference_steps": 28, "guidance_scale": 7.0},
        "qwen-image": {"num_inference_steps": 50, "guidance_scale": 4.0},
    }

    def setup(self, pipe, names: list[str], options: dict) -> TrainingSetup:
        """Add tokens / adapters to ``pipe`` and say what trains."""
        raise NotImplementedError

    def save_weights(self, pipe, setup: TrainingSetup, out_dir: Path, options: dict) -> None:
        """Write the trained weights in a format plain diffusers loads."""
        raise NotImplementedError

    def personalize(self, identities: Iterable, out_dir: str | Path, base_model: str, **config) -> Path:
        """Train on the photos of ``identities`` and write an artifact folder; returns its path.

        ``identities``: ``{name: photos}``, ``[Identity]`` or ``[(name, photos)]``. ``config``: any
        :class:`~likeness.methods.training.TrainingConfig` field, ``COMMON_OPTIONS`` and the method's
        ``defaults``. Rerunning into the folder of an interrupted run resumes it.
        """
        from likeness.faces import get_backend
        from likeness.methods.preparation import Augmentation, photo_batches, prepare_identities
        from likeness.methods.training import build_identity_term, native_resolution, remove_checkpoints, train

        quantize = _generation_quantize(config)
        training, options = split_config(config, {**COMMON_OPTIONS, **self.defaults})
        plan = training_runtime(training, options)
        out_dir = start_artifact(out_dir, options["overwrite"])
        named = named_identities(identities)
        people = [(key, photos) for key, _, photos in named]
        pipe = load_pipeline(base_model, plan=plan.with_(dtype="float32", offload="none"))
        training.resolution = training.resolution or native_resolution(pipe)
        prepared, notes = prepare_identities(people, size=training.resolution, framing=options["framing"],
                                             backend=get_backend(options["face_backend"]), segmenter=options["segmenter"])
        notes = [_without_paths(note, [p for _, photos in people for p in photos]) for note in notes]
        setup = self.setup(pipe, [name for name, _ in people], {**options, "out_dir": out_dir})
        for key, display, _ in named:
            setup.identities[key].display = display
        for name, photos in prepared.items():  # local paths while training; the manifest keeps names only
            setup.identities[name].photos = [str(p.source) for p in photos]
            setup.identities[name].photo_sha256 = [sha256_file(p.source) for p in photos]
        aug = Augmentation(flip=options["flip"], color_jitter=options["color_jitter"],
                           scale_range=tuple(options["scale_range"]) if options["scale_range"] else None)
        make_batch = photo_batches(prepared, {n: e.subject for n, e in setup.identities.items()},
                                   batch_size=training.batch_size, aug=aug, mask=training.masked_loss)
        if setup.wrap_batches is not None:
            make_batch = setup.wrap_batches(make_batch)
        fingerprint = {"method": self.name, "base_model": pipe.likeness_info.to_dict(), "options": recorded_options(options),
                       "photos": {n: e.photo_sha256 for n, e in setup.identities.items()}}
        identity = None
        if options["id_loss_weight"]:
            identity = build_identity_term(prepared, options["id_loss_weight"], options["id_loss_embedder"],
                                           options["id_loss_weights"], device=pipe.device)
        result = train(pipe, setup.trainable, make_batch, training, out_dir, modules=setup.modules,
                       after_step=setup.after_step, prior_loss_weight=setup.prior_loss_weight,
                       fingerprint_extra=json.loads(json.dumps(fingerprint, default=str)), identity=identity,
                       loss_fn=setup.loss_fn, plan=plan)
        notes = notes + result.notes
        from accelerate import PartialState

        if not PartialState().is_main_process:  # under `accelerate launch`, one process writes the artifact
            return out_dir
        self.save_weights(pipe, setup, out_dir, options)
        Manifest(
            method=self.name,
            base_model=pipe.likeness_info,
            # file names and content hashes only: the artifact folder can be shared as it is
            identities={n: replace(e, photos=[Path(p).name for p in e.photos]) for n, e in setup.identities.items()},
            config={"training": asdict(training), "options": recorded_options(options), "notes": notes,
                    "runtime": plan.to_dict(), "masks": mask_record(options["segmenter"], prepared),
                    "final_loss": result.losses[-1] if result.losses else None, "resumed_from": result.resumed_from},
            sampling={**self.default_sampling.get(pipe.likeness_info.family, self.default_sampling), **quantize},
        ).save(out_dir)  # written last: its presence means the artifact is complete
        remove_checkpoints(out_dir)
        return out_dir

    def apply(self, pipe, artifact: Path, manifest: Manifest) -> None:
        """Load the artifact's files into ``pipe`` (a plain pipeline of the artifact's base model)."""
        raise NotImplementedError

    def load(self, artifact: str | Path, *, base_model: str | None = None, device=None, dtype=None,
             plan=None, quantize: str | None = None) -> Personalized:
        """The artifact's base model (or ``base_model``, which must be of the same family) with the artifact
        applied, on ``plan``'s device and dtype (a :class:`~likeness.models.runtime.RuntimePlan`; or the older
        ``device`` / ``dtype`` pair); ``quantize`` (int8, nf4, fp8) quantizes the denoiser's weights
        (:mod:`likeness.models.quantization`)."""
        artifact = Path(artifact)
        manifest = Manifest.load(artifact)
        if manifest.method != self.name:
            raise ArtifactError(f"{artifact}: made by method {manifest.method!r}, not {self.name!r}")
        pipe = load_pipeline(base_model or manifest.base_model.model_id, device=device, dtype=dtype, plan=plan,
                             expect_family=manifest.family, quantize=quantize or manifest.sampling.get("quantize"))
        self.apply(pipe, artifact, manifest)
        return Personalized(pipe, manifest, artifact)

    def generate(self, artifact: str | Path, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> list[Image.Image]:
        """Convenience: :meth:`load` then :meth:`Personalized.generate`."""
        loading = {k: kwargs.pop(k) for k in ("base_model", "device", "dtype", "plan", "quantize") if k in kwargs}
        return self.load(artifact, **loading).generate(prompts, seeds, **kwargs)


def _generation_quantize(config: dict) -> dict:
    """Pop ``quantize`` from personalization options: not a training option but the artifact's default weight
    quantization at generation (checked now, so a typo fails before training; kept in the manifest's sampling)."""
    from likeness.models.quantization import QUANTIZE_CHOICES, QuantizationError

    value = config.pop("quantize", None)
    if value in (None, "none"):
        return {}
    if value not in QUANTIZE_CHOICES:
        raise QuantizationError(f"unknown quantize {value!r}; use one of {', '.join(QUANTIZE_CHOICES)}")
    return {"quantize": value}


def training_runtime(training, options: dict):
    """The runtime plan of a training run: ``options["plan"]``, else one resolved on this machine from
    ``options["device"]`` and ``training.mixed_precision``. ``training.mixed_precision`` is set to the resolved
    value, so the manifest records what ran ("bf16", not "auto")."""
    from likeness.models.runtime import current_plan

    plan = options.get("plan") or current_plan(options.get("device"), "auto", training.mixed_precision)
    training.mixed_precision = plan.mixed_precision
    return plan


def recorded_options(options: dict) -> dict:
    """The method options that describe the artifact (not where or how it was run: the manifest's "runtime")."""
    return {k: v for k, v in options.items() if k not in ("device", "plan", "overwrite")}


def mask_record(segmenter, prepared: dict) -> dict:
    """Which masks an artifact was trained with: the segmenter's description and each photo's mask source
    (keyed by file name)."""
    from likeness.segmentation import get_segmenter

    # Photos by file name, like the manifest's identities (no local paths: artifacts get shared); a file
    # name two people share is prefixed with the identity's key.
    names = [Path(p.source).name for photos in prepared.values() for p in photos]
    sources = {}
    for key, photos in prepared.items():
        for p in photos:
            name = Path(p.source).name
            sources[name if names.count(name) == 1 else f"{key}/{name}"] = p.mask_source
    return {**get_segmenter(segmenter).describe(), "sources": sources}


def named_identities(identities) -> list[tuple[str, str, list[Path]]]:
    """``[(key, display name, photos)]`` from ``{name: photos}``, ``[Identity]`` (anything with
    ``name`` and ``photos``) or ``[(name, photos)]``; names go through :mod:`likeness.data.names`."""
    if isinstance(identities, dict):
        items = list(identities.items())
    else:
        items = [(i.name, i.photos) if hasattr(i, "photos") else tuple(i) for i in identities]
    result = []
    for name, photos in items:
        photos = [photos] if isinstance(photos, (str, Path)) else list(photos)
        if not photos:
            raise ValueError(f"identity {name!r} has no photos")
        result.append((safe_name(name), display_name(name), [Path(p) for p in photos]))
    if not result:
        raise ValueError("no identities to personalize")
    check_unique(display for _, display, _ in result)
    return result


def as_identities(identities) -> list[tuple[str, list[Path]]]:
    """``[(key, photos)]``: :func:`named_identities` without the display names."""
    return [(key, photos) for key, _, photos in named_identities(identities)]


def safe_name(name: str) -> str:
    """The key an identity's name becomes in tokens and file names (:func:`likeness.data.names.name_key`)."""
    return name_key(name)


def _without_paths(text: str, photos) -> str:
    """A note with local photo paths replaced by file names (manifests get shared)."""
    for photo in sorted(photos, key=lambda p: -len(str(p))):
        for form in {str(Path(photo).resolve()), str(photo)}:
            text = text.replace(form, Path(photo).name)
    return text


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_config(config: dict, method_defaults: dict) -> tuple["TrainingConfig", dict]:
    """Split user options into the shared :class:`TrainingConfig` and the method's own options.

    Defaults: the method's (from its paper / the diffusers example), then the user's. Unknown keys
    are an error, so a typo never silently falls back to a default.
    """
    from dataclasses import fields

    from likeness.methods.training import TrainingConfig

    training_keys = {f.name for f in fields(TrainingConfig)}
    merged = {**method_defaults, **{k: v for k, v in config.items() if v is not None}}
    unknown = sorted(k for k in merged if k not in training_keys and k not in method_defaults)
    if unknown:
        allowed = ", ".join(sorted(training_keys | set(method_defaults)))
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; allowed: {allowed}")
    training = TrainingConfig(**{k: v for k, v in merged.items() if k in training_keys})
    options = {k: v for k, v in merged.items() if k not in training_keys}
    return training, options


def start_artifact(out_dir: str | Path, overwrite: bool = False) -> Path:
    """The artifact folder, refusing to overwrite a finished artifact unless asked."""
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a finished artifact; choose another output folder or pass overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def get_method(name: str) -> Method:
    """A method instance by registry name; a clear error listing the known ones otherwise."""
    import likeness.methods  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(METHODS.names()) or 'none'}")
    return METHODS.create(name)


def load_artifact(artifact: str | Path, **kwargs) -> Personalized:
    """Load any artifact: the manifest says which method reads it. ``quantize`` (none / int8 / nf4 / fp8) only
    reaches methods whose ``load`` takes it; asking another method for it is an error naming the method."""
    import inspect

    method = get_method(Manifest.load(artifact).method)
    quantize = kwargs.pop("quantize", None)
    if quantize is not None:  # "none" too: it overrides an artifact's recorded default
        if "quantize" in inspect.signature(method.load).parameters:
            kwargs["quantize"] = quantize
        elif quantize != "none":
            raise ValueError(f"method {method.name!r} does not support --quantize yet; leave it out (or use none)")
    return method.load(artifact, **kwargs)


def personalize(method: str, identities: Iterable, out_dir: str | Path, base_model: str, **config) -> Path:
    return get_method(method).personalize(identities, out_dir, base_model, **config)


def generate(artifact: str | Path, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> list[Image.Image]:
    return get_method(Manifest.load(artifact).method).generate(artifact, prompts, seeds, **kwargs)


__all__ = [
    "METHODS", "Method", "Manifest", "IdentityEntry", "Personalized", "PLACEHOLDER", "MANIFEST_NAME",
    "ArtifactError", "PromptPlaceholderError", "UnknownMethodError", "FamilyMismatchError",
    "fill_prompt", "get_method", "load_artifact", "personalize", "generate", "read_manifest",
]
