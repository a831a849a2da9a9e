"""What every dataset loader shares: the :class:`Identity` it returns and the error it raises.

It lives below :mod:`likeness.data.identities` (which picks a loader) and the loaders themselves
(:mod:`likeness.data.folders`, :mod:`likeness.data.stellar`), so imports point one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from likeness.data.names import name_key

# Every format load_image reads (GIF: its first frame).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class DatasetError(ValueError):
    """A dataset folder or one of its files cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Identity:
    """One person: a name, their photos, and (Stellar only) CelebA attribute labels per photo."""

    name: str  # the display name (any Unicode); ``key`` is what goes into file names and tokens
    photos: list[Path]
    # photo path -> {CelebA attribute name: +1 / -1}; None when the layout has no labels.
    attributes: dict[Path, dict[str, int]] | None = None
    # "t" / "h" -> prompt file for this identity (Stellar layout), read with likeness.data.prompts.
    prompt_files: dict[str, Path] = field(default_factory=dict)
    layout: str = "folders"
    # Problems found while loading (e.g. a malformed attributes file); loading never stops for them.
    problems: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The file/token-safe key of the name (see :mod:`likeness.data.names`)."""
        return name_key(self.name)

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
