"""People to personalise and evaluate: one :class:`Identity` per person, from any supported layout.

Two on-disk layouts are read, auto-detected by :func:`load_identities`:

* the official Stellar release (``STELLAR/000`` ... ``STELLAR/399``: photos, ``*_attributes.json``
  with CelebA labels, ``prompts_t.json`` / ``prompts_h.json``), see :mod:`likeness.data.stellar`;
* a plain folder of people (``<name>/*.jpg``), see :mod:`likeness.data.folders`.

Everything downstream (metrics, methods, the benchmark runner) only sees ``Identity``.
"""

from __future__ import annotations

from pathlib import Path

from likeness.data import folders, stellar
from likeness.data.base import IMAGE_SUFFIXES, DatasetError, Identity, is_image_file

__all__ = ["IMAGE_SUFFIXES", "DatasetError", "Identity", "is_image_file", "load_identities", "sibling_photos"]


def load_identities(path: str | Path, *, split: str = "all") -> list[Identity]:
    """Identities under ``path``, whichever layout it is in, sorted by name.

    ``split`` only applies to the Stellar layout ("test" = 000-199, "val" = 200-399, "all").
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist" if not root.exists() else "is not a folder")
    if stellar.looks_like_stellar(root):
        return stellar.load_stellar(root, split=split)
    return folders.load_folders(root)


def sibling_photos(photo: str | Path) -> list[Path]:
    """The photos of ``photo``'s identity folder (``photo`` included), as :func:`load_identities` lists them:
    in a Stellar folder only the numbered photos (``0.jpg``, ``1.jpg``; not the ``*_bg.png`` masks)."""
    folder = Path(photo).parent
    if not folder.is_dir():
        return []
    one = [p for p in folder.iterdir() if not p.is_dir()]
    if any(p.name.endswith("_attributes.json") or p.name in ("prompts_t.json", "prompts_h.json") for p in one):
        return sorted((p for p in one if is_image_file(p) and p.stem.isdigit()), key=lambda p: int(p.stem))
    return sorted((p for p in one if is_image_file(p)), key=folders._natural_key)
