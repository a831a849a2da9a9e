"""People to personalise and evaluate: one :class:`Identity` per person, from any supported layout.

Two on-disk layouts are read, auto-detected by :func:`load_identities`:

* the official Stellar release (``STELLAR/000`` ... ``STELLAR/399``: photos, ``*_attributes.json``
  with CelebA labels, ``prompts_t.json`` / ``prompts_h.json``), see :mod:`likeness.data.stellar`;
* a plain folder of people (``<name>/*.jpg``), see :mod:`likeness.data.folders`.

Everything downstream (metrics, methods, the benchmark runner) only sees ``Identity``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset folder or one of its files cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Identity:
    """One person: a name, their photos, and (Stellar only) CelebA attribute labels per photo."""

    name: str
    photos: list[Path]
    # photo path -> {CelebA attribute name: +1 / -1}; None when the layout has no labels.
    attributes: dict[Path, dict[str, int]] | None = None
    # "t" / "h" -> prompt file for this identity (Stellar layout), read with likeness.data.prompts.
    prompt_files: dict[str, Path] = field(default_factory=dict)
    layout: str = "folders"
    # Problems found while loading (e.g. a malformed attributes file); loading never stops for them.
    problems: list[str] = field(default_factory=list)

    def photo(self, name_or_path: str | Path) -> Path | None:
        """The photo matching a path or a bare file name / stem (as written in generated-image metadata)."""
        wanted = Path(name_or_path)
        for photo in self.photos:
            if photo == wanted or photo.name == wanted.name or photo.stem == str(name_or_path):
                return photo
        return None

    def labels(self, photo: Path) -> dict[str, int] | None:
        if self.attributes is None:
            return None
        return self.attributes.get(Path(photo))


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def load_identities(path: str | Path, *, split: str = "all") -> list[Identity]:
    """Identities under ``path``, whichever layout it is in, sorted by name.

    ``split`` only applies to the Stellar layout ("test" = 000-199, "val" = 200-399, "all").
    """
    from likeness.data import folders, stellar  # both import this module; import here to keep one direction

    root = Path(path)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist" if not root.exists() else "is not a folder")
    if stellar.looks_like_stellar(root):
        return stellar.load_stellar(root, split=split)
    return folders.load_folders(root)
