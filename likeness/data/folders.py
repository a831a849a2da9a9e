"""A plain folder of people: ``<root>/<name>/*.jpg``, one sub-folder per identity.

Folders whose name starts with ``_`` or ``.`` (e.g. ``_edge``) are not identities and are skipped.
"""

from __future__ import annotations

from pathlib import Path

from likeness.data.base import DatasetError, Identity, is_image_file


def _natural_key(path: Path):
    # "2.jpg" before "10.jpg": digits compare as numbers.
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def load_folders(root: str | Path) -> list[Identity]:
    root = Path(root)
    identities = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        photos = sorted((p for p in folder.iterdir() if is_image_file(p)), key=_natural_key)
        if photos:
            identities.append(Identity(name=folder.name, photos=photos, layout="folders"))
    if not identities:
        raise DatasetError(root, "no identity folders with images found (expected <root>/<name>/*.jpg)")
    return identities
