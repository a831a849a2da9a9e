"""The method interface every personalization method implements, and the artifact it writes.

A method turns photos of people into an **artifact folder** holding files plain diffusers can load
(textual-inversion embeddings, LoRA weights, safetensors) plus ``likeness.json``, the manifest::

    {"method": "textual_inversion", "base_model": {"model_id", "family", "revision"},
     "identities": {"obama": {"subject": "<obama>", "tokens": ["<obama>"], "photos": [...]}},
     "config": {...}, "sampling": {"num_inference_steps", "guidance_scale"}, "likeness_version": "..."}

Prompts follow the Stellar convention: ``"{} sleeping on a couch"``; at generation time ``{}`` is
replaced by the identity's ``subject`` (e.g. ``"sks person"`` or ``"<obama>"``).

Subclasses implement two things: :meth:`Method.personalize` (train and write the artifact) and
:meth:`Method.apply` (put the artifact into a freshly loaded pipeline). Loading, checks and
generation are shared, so every method fails the same way on the same bad input.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Sequence

import torch
from PIL import Image

from likeness import __version__
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
    photos: list[str]


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
            raise ArtifactError(f"{folder}: not a likeness artifact (no {MANIFEST_NAME}); run `likeness personalize` first")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                method=raw["method"],
                base_model=BaseModelInfo(**raw["base_model"]),
                identities={name: IdentityEntry(**entry) for name, entry in raw["identities"].items()},
                config=raw.get("config", {}),
                sampling=raw.get("sampling", {}),
                likeness_version=raw.get("likeness_version", "?"),
                created=raw.get("created", ""),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None


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
        return list(self.manifest.identities)

    def subject(self, identity: str | None = None) -> str:
        names = self.identities
        if identity is None:
            if len(names) != 1:
                raise ValueError(f"{self.artifact} holds {len(names)} identities ({', '.join(names)}); say which one")
            identity = names[0]
        if identity not in self.manifest.identities:
            raise KeyError(f"identity {identity!r} is not in {self.artifact}; it holds: {', '.join(names)}")
        return self.manifest.identities[identity].subject

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
            out = self.pipe(
                prompt=chunk,
                negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                generator=generators,
            )
            images.extend(out.images)
        return images


class Method:
    """Base class. Subclasses set ``name`` and implement :meth:`personalize` and :meth:`apply`."""

    name: ClassVar[str] = ""
    # Sampling defaults recorded in the manifest (a user's explicit values always win).
    default_sampling: ClassVar[dict] = {"num_inference_steps": 50, "guidance_scale": 7.5}

    def personalize(self, identities: Iterable, out_dir: str | Path, base_model: str, **config) -> Path:
        """Train on the photos of ``identities`` (objects with ``name`` and ``photos``) and write an artifact folder."""
        raise NotImplementedError

    def apply(self, pipe, artifact: Path, manifest: Manifest) -> None:
        """Load the artifact's files into ``pipe`` (a plain pipeline of the artifact's base model)."""
        raise NotImplementedError

    def load(self, artifact: str | Path, *, base_model: str | None = None, device=None, dtype=None) -> Personalized:
        """The artifact's base model (or ``base_model``, which must be of the same family) with the artifact applied."""
        artifact = Path(artifact)
        manifest = Manifest.load(artifact)
        if manifest.method != self.name:
            raise ArtifactError(f"{artifact}: made by method {manifest.method!r}, not {self.name!r}")
        pipe = load_pipeline(base_model or manifest.base_model.model_id, device=device, dtype=dtype,
                             expect_family=manifest.family)
        self.apply(pipe, artifact, manifest)
        return Personalized(pipe, manifest, artifact)

    def generate(self, artifact: str | Path, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> list[Image.Image]:
        """Convenience: :meth:`load` then :meth:`Personalized.generate`."""
        loading = {k: kwargs.pop(k) for k in ("base_model", "device", "dtype") if k in kwargs}
        return self.load(artifact, **loading).generate(prompts, seeds, **kwargs)


def get_method(name: str) -> Method:
    """A method instance by registry name; a clear error listing the known ones otherwise."""
    import likeness.methods  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(METHODS.names()) or 'none'}")
    return METHODS.create(name)


def load_artifact(artifact: str | Path, **kwargs) -> Personalized:
    """Load any artifact: the manifest says which method reads it."""
    return get_method(Manifest.load(artifact).method).load(artifact, **kwargs)


def personalize(method: str, identities: Iterable, out_dir: str | Path, base_model: str, **config) -> Path:
    return get_method(method).personalize(identities, out_dir, base_model, **config)


def generate(artifact: str | Path, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> list[Image.Image]:
    return get_method(Manifest.load(artifact).method).generate(artifact, prompts, seeds, **kwargs)


__all__ = [
    "METHODS", "Method", "Manifest", "IdentityEntry", "Personalized", "PLACEHOLDER", "MANIFEST_NAME",
    "ArtifactError", "PromptPlaceholderError", "UnknownMethodError", "FamilyMismatchError",
    "fill_prompt", "get_method", "load_artifact", "personalize", "generate", "read_manifest",
]
