"""The reference rows every paper prints: ``real-photos`` (the upper bound) and ``copy-reference`` (the cheat).

Neither generates anything, and neither needs a model: they return photos, so a benchmark run shows what its
identity numbers mean beside the methods it compares, offline and in seconds.

* ``real-photos``: for each prompt, another real photo of the person (not the reference the run personalizes
  from); with several, the seed picks one. DreamBooth's "real images" row: the identity score a perfect method
  could reach, with a small copy-paste gap (``copy-gap``). An identity with a single photo has no other photo:
  personalization fails with :class:`SinglePhotoError` (``single_photo: ...``), its items are recorded as failed
  with that reason, and the rest of the run goes on.
* ``copy-reference``: the reference photo itself, whatever the prompt. IPS ~1, yet it follows no prompt: what the
  exploitation penalty (``ips-penalised``) and the copy-paste gap must catch.

The other photos are the person's photos after the reference (a person given with several photos), else the
reference's siblings in its dataset folder (the benchmark runner personalizes from one photo at a time). The
artifact folder holds copies of the photos it returns (so it loads anywhere; unlike trained artifacts, it is
made of the photos, so share it only where the photos may go) and the usual manifest; the prompt's ``{}``
becomes "a person". Generation ignores steps, guidance and size: the photo is returned upright, in RGB, at
its own size.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from PIL import Image

from likeness.data.identities import sibling_photos
from likeness.data.images import load_image
from likeness.methods.base import (
    COMMON_OPTIONS, METHODS, IdentityEntry, Manifest, Method, Personalized, named_identities, sha256_file, split_config,
    start_artifact,
)
from likeness.models.loading import BaseModelInfo

PHOTOS_DIR = "photos"
SUBJECT = "a person"


class SinglePhotoError(ValueError):
    """``real-photos`` for a person with one photo: there is no other photo to return."""


class PhotoRows(Personalized):
    """A "personalized pipeline" that returns photos from the artifact: no pipeline at all."""

    def __init__(self, manifest: Manifest, artifact: Path):
        super().__init__(None, manifest, artifact)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], *, identity: str | None = None, **_sampling):
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
        for template in prompts:
            self.prompt(template, identity)  # the same placeholder check as every method
        key = self.key(identity)
        photos = self.manifest.identities[key].photos
        folder = self.artifact / PHOTOS_DIR / key
        return [load_image(folder / photos[seed % len(photos)]).copy() for seed in seeds]


class PhotoRow(Method):
    """Shared by the two rows: copy the chosen photos into the artifact, return them at generation."""

    default_sampling = {"num_inference_steps": 0, "guidance_scale": 0.0}

    def chosen(self, key: str, photos: list[Path]) -> list[Path]:
        raise NotImplementedError

    def personalize(self, identities, out_dir, base_model: str, **config) -> Path:
        _, options = split_config(config, dict(COMMON_OPTIONS))  # training options are accepted and have no effect
        out_dir = start_artifact(out_dir, options["overwrite"])
        entries = {}
        for key, display, photos in named_identities(identities):
            for photo in photos:
                load_image(photo)  # a missing or unreadable photo fails here, naming the file
            chosen = self.chosen(display, photos)
            folder = out_dir / PHOTOS_DIR / key
            folder.mkdir(parents=True, exist_ok=True)
            names = []
            for n, photo in enumerate(chosen):
                name = f"{n}-{photo.name}"
                shutil.copyfile(photo, folder / name)
                names.append(name)
            entries[key] = IdentityEntry(subject=SUBJECT, tokens=[], photos=names, display=display,
                                         photo_sha256=[sha256_file(p) for p in chosen])
        Manifest(self.name, BaseModelInfo(model_id=base_model, family="photos", revision="none"), entries,
                 config={"options": {"returns": self.returns}}, sampling=dict(self.default_sampling)).save(out_dir)
        return out_dir

    def load(self, artifact, *, base_model=None, device=None, dtype=None, plan=None, quantize=None) -> PhotoRows:
        """The photos kept in the artifact (no model: device, precision and quantization do not apply)."""
        from likeness.methods.base import ArtifactError

        artifact = Path(artifact)
        manifest = Manifest.load(artifact)
        if manifest.method != self.name:
            raise ArtifactError(f"{artifact}: made by method {manifest.method!r}, not {self.name!r}")
        for key, entry in manifest.identities.items():
            for name in entry.photos:
                if not (artifact / PHOTOS_DIR / key / name).is_file():
                    raise ArtifactError(f"{artifact}: photo {PHOTOS_DIR}/{key}/{name} is missing; personalize again")
        return PhotoRows(manifest, artifact)


@METHODS.register("copy-reference")
class CopyReference(PhotoRow):
    name = "copy-reference"
    returns = "the reference photo itself, for every prompt"

    def chosen(self, display: str, photos: list[Path]) -> list[Path]:
        return photos[:1]


@METHODS.register("real-photos")
class RealPhotos(PhotoRow):
    name = "real-photos"
    returns = "another real photo of the person (not the reference), picked by the seed"

    def chosen(self, display: str, photos: list[Path]) -> list[Path]:
        others = photos[1:] or [p for p in sibling_photos(photos[0]) if p.resolve() != photos[0].resolve()]
        if not others:
            raise SinglePhotoError(f"single_photo: identity {display!r} has one photo ({photos[0].name}); real-photos "
                                   "returns another photo of the same person, so this identity has no real-photos row")
        return others
