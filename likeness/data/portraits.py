"""Portrait training sets for encoders trained once (StellarNet): CelebAMask-HQ, Stellar, or any folder.

Three layouts, auto-detected by :func:`load_portraits`:

- **CelebAMask-HQ**: ``<root>/CelebA-HQ-img/<idx>.jpg`` with ``CelebAMask-HQ-mask-anno/<k>/<idx:05d>_<part>.png``,
  ``CelebAMask-HQ-attribute-anno.txt`` (count line, 40 attribute names, then ``<idx>.jpg`` and +1/-1 values)
  and, when present, ``CelebA-HQ-to-CelebA-mapping.txt`` (``idx orig_idx orig_file``) plus CelebA's
  ``identity_CelebA.txt`` (``orig_file identity``), which give each photo its person;
- **Stellar**: ``<id>/<k>.jpg`` + ``<k>_bg.png`` + ``<k>_attributes.json`` (``identity``, ``original_filename``);
- **folder**: every image under the root (masks ``*_bg.png`` / ``*_mask.png`` are not photos); the
  person is the photo's folder name.

``exclude`` removes people (the Stellar test identities must not be trained on): CelebA identity
ids, original CelebA file names, photo names, or a Stellar root / text file listing them. Photos
that cannot be used are not silently dropped: :attr:`PortraitSet.skipped` counts them by reason.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from likeness.data.identities import DatasetError, is_image_file

log = logging.getLogger(__name__)

HQ_IMAGES = "CelebA-HQ-img"
HQ_ATTRIBUTES = "CelebAMask-HQ-attribute-anno.txt"
HQ_MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
CELEBA_IDENTITIES = "identity_CelebA.txt"
MASK_SUFFIXES = ("_bg", "_mask")


@dataclass
class PortraitItem:
    photo: Path
    identity: str | None = None
    keys: frozenset = frozenset()  # every string an exclusion list may use for this photo
    attributes: dict[str, int] | None = None


@dataclass
class PortraitSet:
    root: Path
    layout: str
    items: list[PortraitItem]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first affected file
    excluded: int = 0

    def skip(self, reason: str, path: Path) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, str(path))

    def summary(self) -> dict:
        return {"root": str(self.root), "layout": self.layout, "photos": len(self.items),
                "people": len({i.identity for i in self.items if i.identity is not None}),
                "excluded": self.excluded, "skipped": dict(self.skipped), "skipped_examples": dict(self.examples)}


def detect_layout(root: Path) -> str:
    if (root / HQ_IMAGES).is_dir():
        return "celebamask-hq"
    from likeness.data.stellar import looks_like_stellar, stellar_root

    if looks_like_stellar(root):
        return "stellar"
    return "folder"


def _is_photo(path: Path) -> bool:
    return is_image_file(path) and not path.stem.endswith(MASK_SUFFIXES)


def read_exclusions(exclude) -> set[str]:
    """Strings naming people or photos to leave out, from a list, a text file, or a Stellar root."""
    if exclude is None:
        return set()
    if isinstance(exclude, (str, Path)):
        path = Path(exclude)
        if path.is_dir():
            names = set()
            for labels in sorted(path.rglob("*_attributes.json")):
                try:
                    raw = json.loads(labels.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise DatasetError(labels, f"cannot read identity from attributes file ({exc})") from None
                for key in ("identity", "original_filename"):
                    if raw.get(key) not in (None, ""):
                        names.add(str(raw[key]))
            if not names:
                raise DatasetError(path, "no *_attributes.json with identity / original_filename to exclude")
            return names
        if path.is_file():
            return {line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()} - {""}
        if "," in str(exclude) or str(exclude).strip().isdigit():
            return {s.strip() for s in str(exclude).split(",")} - {""}
        raise DatasetError(path, "exclusion list: not a file, a folder, or comma-separated identities")
    names: set[str] = set()
    for item in exclude:  # each entry: a name, or (like a single value) a file, a Stellar root or a comma list
        text = str(item).strip()
        if text and (Path(text).exists() or "," in text):
            names |= read_exclusions(text)
        elif text:
            names.add(text)
    return names


def _read_table(path: Path, columns: int, skip_header) -> list[list[str]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or skip_header(number, parts):
            continue
        if len(parts) < columns:
            raise DatasetError(path, f"line {number} has {len(parts)} fields, expected {columns}")
        rows.append(parts)
    return rows


def _celebamask_hq(root: Path, portraits: PortraitSet) -> list[PortraitItem]:
    images = root / HQ_IMAGES
    attributes: dict[str, dict[str, int]] = {}
    attr_file = root / HQ_ATTRIBUTES
    if attr_file.is_file():
        lines = attr_file.read_text(encoding="utf-8").splitlines()
        if len(lines) < 2:
            raise DatasetError(attr_file, "expected a count line and a line of attribute names")
        names = lines[1].split()
        for number, line in enumerate(lines[2:], 3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names) + 1:
                raise DatasetError(attr_file, f"line {number} has {len(parts) - 1} values for {len(names)} attributes")
            attributes[parts[0]] = {n: 1 if v == "1" else -1 for n, v in zip(names, parts[1:])}
    original: dict[str, str] = {}
    if (root / HQ_MAPPING).is_file():
        for parts in _read_table(root / HQ_MAPPING, 3, lambda n, p: not p[0].isdigit()):
            original[f"{int(parts[0])}"] = parts[2]
    identity_of: dict[str, str] = {}
    if (root / CELEBA_IDENTITIES).is_file():
        for parts in _read_table(root / CELEBA_IDENTITIES, 2, lambda n, p: False):
            identity_of[parts[0]] = parts[1]
    items = []
    for photo in sorted((p for p in images.iterdir() if _is_photo(p)), key=lambda p: (not p.stem.isdigit(), p.stem.zfill(8))):
        orig = original.get(str(int(photo.stem))) if photo.stem.isdigit() else None
        identity = identity_of.get(orig) if orig else None
        keys = frozenset(k for k in (photo.name, photo.stem, orig, identity) if k)
        items.append(PortraitItem(photo, identity, keys, attributes.get(photo.name)))
    return items


def _stellar(root: Path, portraits: PortraitSet) -> list[PortraitItem]:
    from likeness.data.stellar import parse_attributes, stellar_root

    items = []
    for folder in sorted(p for p in stellar_root(root).iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for photo in sorted(p for p in folder.iterdir() if _is_photo(p)):
            labels_file = folder / f"{photo.stem}_attributes.json"
            identity, orig, labels = None, None, None
            if labels_file.is_file():
                try:
                    raw = json.loads(labels_file.read_text(encoding="utf-8"))
                    identity = str(raw["identity"]) if raw.get("identity") not in (None, "") else None
                    orig = raw.get("original_filename") or None
                    labels = parse_attributes(labels_file)
                except (json.JSONDecodeError, DatasetError, AttributeError, OSError):
                    portraits.skip("bad_attributes_file", labels_file)
            keys = frozenset(k for k in (photo.name, f"{folder.name}/{photo.name}", folder.name, identity, orig) if k)
            items.append(PortraitItem(photo, identity or folder.name, keys, labels))
    return items


def _folder(root: Path, portraits: PortraitSet) -> list[PortraitItem]:
    items = []
    for photo in sorted(p for p in root.rglob("*") if _is_photo(p)):
        person = photo.parent.name if photo.parent != root else photo.stem
        items.append(PortraitItem(photo, person, frozenset({photo.name, str(photo.relative_to(root)), person})))
    return items


def load_portraits(root: str | Path, *, layout: str = "auto", exclude=None, require_masks: bool = False,
                   limit: int | None = None, check_images: bool = True) -> PortraitSet:
    """The usable photos under ``root``; unusable ones are counted in ``skipped`` (reason -> count).

    ``require_masks``: photos without dataset masks (``*_bg.png`` or CelebAMask-HQ part files) are
    skipped as ``missing_mask``. ``check_images``: each file's header is read, so an unreadable file
    is skipped (``unreadable``) before training rather than during it.
    """
    from PIL import Image, UnidentifiedImageError

    from likeness.data.mask_files import has_masks

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "portrait dataset folder does not exist")
    layout = detect_layout(root) if layout == "auto" else layout
    readers = {"celebamask-hq": _celebamask_hq, "stellar": _stellar, "folder": _folder}
    if layout not in readers:
        raise ValueError(f"unknown portrait layout {layout!r}; expected auto, {', '.join(readers)}")
    portraits = PortraitSet(root, layout, [])
    excluded = read_exclusions(exclude)
    candidates = readers[layout](root, portraits)
    if excluded and layout == "celebamask-hq" and not any(i.identity for i in candidates):
        log.warning("%s: no %s / %s, so exclusions match photo and file names only", root, HQ_MAPPING, CELEBA_IDENTITIES)
    for item in candidates:
        if excluded and item.keys & excluded:
            portraits.excluded += 1
            continue
        if require_masks and not has_masks(item.photo):
            portraits.skip("missing_mask", item.photo)
            continue
        if check_images:
            try:
                with Image.open(item.photo) as img:
                    img.verify()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                portraits.skip("unreadable", item.photo)
                continue
        portraits.items.append(item)
        if limit and len(portraits.items) >= limit:
            break
    for reason, count in portraits.skipped.items():
        log.warning("%s: skipped %d photo(s): %s (e.g. %s)", root, count, reason, portraits.examples[reason])
    if not portraits.items:
        raise DatasetError(root, f"no usable portraits ({layout} layout; excluded {portraits.excluded}, "
                                 f"skipped {dict(portraits.skipped) or 0})")
    return portraits
