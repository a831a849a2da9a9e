"""General image editors that take a reference image, as tuning-free personalization methods.

FLUX.1 Kontext (``flux-kontext``), FLUX.2 with reference images (``flux2-reference``) and Qwen-Image-Edit-2509
(``qwen-image-edit``) are not identity methods, but they are the free baseline an identity method must beat: give
them the person's photo and ask for the scene. Here each is a method like any other:

- ``personalize`` trains nothing. It frames each person's photo(s) (the largest face, head and shoulders, eyes
  levelled: the same preparation as every trained method; ``reference=photo`` keeps the whole photo instead) and
  stores them in the artifact as ``<name>-reference-<i>.png``, plus ``likeness.json`` with the instruction template
  and its version.
- ``generate`` / ``bench`` / ``report`` / ``demo`` load it like any artifact: the pipeline gets the stored reference
  image(s) and the Stellar prompt turned into an instruction by the template.

The instruction template (``template=v1``): ``{}`` in the prompt becomes the method's subject phrase (for
``"{} sleeping on a couch"``: ``"the person in the reference image sleeping on a couch"``) and the scene goes into
the instruction::

    Make a photo of {scene}. Keep this person's face, facial features and identity exactly the same.

The subject phrase names the reference the way each model was trained to read it: "this image" (Kontext edits one
image), "image 1" (FLUX.2 numbers its references), "Picture 1" (Qwen-Image-Edit-Plus' own prompt labels the images
"Picture 1: ..."). A new wording gets a new version key; artifacts record the version and its exact text, so scores
made with one wording are never mixed with another's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from likeness.methods.base import (
    ArtifactError,
    IdentityEntry,
    sha256_file,
    Manifest,
    Method,
    Personalized,
    _without_paths,
    fill_prompt,
    named_identities,
    start_artifact,
)
from likeness.models.families import FAMILY_NAMES
from likeness.models.loading import base_model_info, load_pipeline, resolve_model_path

INSTRUCTIONS = {
    "v1": "Make a photo of {scene}. Keep this person's face, facial features and identity exactly the same.",
}
REFERENCE_MODES = ("crop", "photo")
# What a tuning-free method ignores from the shared training options a bench passes.
_TRAINING_KEYS = ("max_steps", "learning_rate", "seed", "gradient_accumulation_steps", "batch_size", "resolution",
                  "checkpoint_every", "mixed_precision", "gradient_checkpointing", "masked_loss", "progress", "scale_lr",
                  "lr_scheduler", "lr_warmup_steps", "adam_weight_decay", "max_grad_norm", "checkpoints_to_keep")


def instruction(template_version: str, subject_prompt: str) -> str:
    """The editor's instruction for a prompt whose ``{}`` is already filled with the subject phrase."""
    if template_version not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction template {template_version!r}; known: {', '.join(INSTRUCTIONS)}")
    return INSTRUCTIONS[template_version].format(scene=subject_prompt.strip().rstrip("."))


class EditorPersonalized(Personalized):
    """An editor pipeline plus the person's stored reference image(s)."""

    def __init__(self, pipe, manifest: Manifest, artifact: Path, method: "EditorMethod", references: dict):
        super().__init__(pipe, manifest, artifact)
        self.method = method
        self.references = references  # name -> [PIL images]

    def prompt(self, template: str, identity: str | None = None) -> str:
        return instruction(self.manifest.config["template"]["version"], fill_prompt(template, self.subject(identity)))

    def call_pipe(self, prompts, *, identity=None, **kwargs):
        images = self.references[self.key(identity)]
        return self.method.call(self.pipe, prompts, images, **kwargs)


class EditorMethod(Method):
    """A reference-image editor used as a tuning-free method. Subclasses set the registry name, the family (one, in
    ``families``), the pipeline class, the subject phrase, the default base model and how one call passes the images."""

    pipeline: ClassVar[str] = ""  # diffusers class the artifact is sampled with
    accepted_classes: ClassVar[tuple[str, ...]] = ()  # model_index "_class_name" of bases it runs on
    subject_phrase: ClassVar[str] = "the person in the reference image"
    default_base: ClassVar[str] = ""
    max_supported_references: ClassVar[int] = 1
    defaults = {"template": "v1", "reference": "crop", "reference_size": 1024, "max_references": 1, "framing": "upper_body",
                "face_backend": "dlib", "segmenter": "heuristic"}
    default_sampling: ClassVar[dict] = {}

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline)

    def check_base(self, base_model: str, info) -> str:
        """The base's pipeline class, after checking it is one this editor runs on (else a clear error)."""
        from likeness.models.tiny import is_tiny

        family = self.families[0]
        if info.family != family:
            raise ValueError(f"{self.name} runs on {FAMILY_NAMES[family]} ({family}) editing checkpoints, but "
                             f"{base_model!r} is {FAMILY_NAMES.get(info.family, info.family)}; pass --base-model "
                             f"{self.default_base} (or a local folder of it)")
        index = json.loads((resolve_model_path(base_model) / "model_index.json").read_text())
        class_name = index.get("_class_name", "")
        if class_name not in self.accepted_classes and not is_tiny(base_model):
            raise ValueError(f"{self.name} needs an editing checkpoint ({' or '.join(self.accepted_classes)}), but "
                             f"{base_model!r} is a {class_name}; pass --base-model {self.default_base}")
        return class_name

    def sampling(self, class_name: str, base_model: str) -> dict:
        return dict(self.default_sampling)

    def call(self, pipe, prompts: list[str], images: list, **kwargs):
        return pipe(prompt=prompts, image=images, **kwargs)

    def personalize(self, identities, out_dir, base_model=None, **config):
        """Record each person's reference image(s); nothing trains."""
        from likeness.faces import get_backend
        from likeness.methods.base import _generation_quantize
        from likeness.methods.preparation import prepare_identities

        for key in _TRAINING_KEYS:
            config.pop(key, None)
        config.pop("plan", None)  # nothing runs a model here: the photo is only cropped
        quantize = _generation_quantize(config)
        options = {"device": None, "overwrite": False, **self.defaults}
        unknown = sorted(k for k in config if k not in options)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for {self.name}; allowed: {', '.join(sorted(options))}")
        options.update({k: v for k, v in config.items() if v is not None})
        base_model = base_model or self.default_base
        version = str(options["template"])
        instruction(version, "x")  # unknown version: refused before any work
        if options["reference"] not in REFERENCE_MODES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCE_MODES)}, not {options['reference']!r}")
        count = int(options["max_references"])
        if not 1 <= count <= self.max_supported_references:
            raise ValueError(f"max_references={count}: {self.name} takes 1 to {self.max_supported_references} reference images")
        info = base_model_info(base_model)
        class_name = self.check_base(base_model, info)
        named = named_identities(identities)
        size = int(options["reference_size"])
        prepared, notes = {}, []
        if options["reference"] == "crop":
            people = [(key, photos[:count]) for key, _, photos in named]
            prepared, notes = prepare_identities(people, size=size, framing=options["framing"],
                                                 backend=get_backend(options["face_backend"]), segmenter=options["segmenter"])
        out_dir = start_artifact(out_dir, options["overwrite"])
        from likeness.data.images import load_image

        entries = {}
        for key, display, photos in named:
            used = [p.source for p in prepared[key]] if prepared else photos[:count]
            images = [p.image for p in prepared[key]] if prepared else [_fit(load_image(p), size) for p in used]
            for i, image in enumerate(images):
                image.save(Path(out_dir) / f"{key}-reference-{i}.png")
            entries[key] = IdentityEntry(subject=self.subject_phrase, tokens=[], photos=[Path(p).name for p in used],
                                         display=display, photo_sha256=[sha256_file(p) for p in used])
        recorded = {k: v for k, v in options.items() if k not in ("device", "overwrite")}
        Manifest(method=self.name, base_model=info, identities=entries,
                 config={"options": recorded, "tuning_free": True, "pipeline": self.pipeline, "base_class": class_name,
                         "template": {"version": version, "instruction": INSTRUCTIONS[version],
                                      "subject": self.subject_phrase},
                         "notes": [_without_paths(n, [p for _, _, photos in named for p in photos]) for n in notes]},
                 sampling={**self.sampling(class_name, base_model), **quantize}).save(out_dir)
        return Path(out_dir)

    def load(self, artifact, *, base_model=None, device=None, dtype=None, plan=None, quantize=None) -> EditorPersonalized:
        from likeness.data.images import load_image

        artifact = Path(artifact)
        manifest = Manifest.load(artifact)
        if manifest.method != self.name:
            raise ArtifactError(f"{artifact}: made by method {manifest.method!r}, not {self.name!r}")
        references = {}
        for key in manifest.identities:
            paths = sorted(artifact.glob(f"{key}-reference-*.png"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
            if not paths:
                raise ArtifactError(f"{artifact}: reference image {key}-reference-0.png missing from the artifact")
            references[key] = [load_image(p) for p in paths]
        pipe = load_pipeline(base_model or manifest.base_model.model_id, device=device, dtype=dtype, plan=plan,
                             expect_family=manifest.family, pipeline_class=self.pipeline_class(),
                             quantize=quantize or manifest.sampling.get("quantize"))
        return EditorPersonalized(pipe, manifest, artifact, self, references)


def _fit(image, size: int):
    """The whole photo, shrunk so its longer side is at most ``size`` (never enlarged)."""
    scale = size / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


__all__ = ["INSTRUCTIONS", "EditorMethod", "EditorPersonalized", "instruction"]
