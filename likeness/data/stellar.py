"""The official Stellar dataset layout (arXiv 2312.06116).

``<root>/STELLAR/<id>/`` (or ``<root>/<id>/``) with ``0.jpg``, ``1.jpg`` (photos of one person),
``0_bg.png`` ... (parsing masks, not photos), ``0_attributes.json`` ... (``attributes``: the 40 CelebA
labels as +1/-1, by name or as a 40-long list in CelebA order), ``prompts_t.json`` and, in the test
split, ``prompts_h.json``. Identities 000-199 are the test split, 200-399 validation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from likeness.data.base import DatasetError, Identity, is_image_file

# The 40 CelebA attributes in the order of list_attr_celeba.txt.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
# The attributes APS probes (Stellar paper).
APS_ATTRIBUTES = (
    "Young", "Male", "High_Cheekbones", "Pointy_Nose", "Narrow_Eyes", "Double_Chin", "Big_Lips", "Big_Nose",
)
SPLITS = {"test": range(0, 200), "val": range(200, 400)}
_PHOTO_NAME = re.compile(r"^\d+$")


def stellar_root(root: Path) -> Path:
    return root / "STELLAR" if (root / "STELLAR").is_dir() else root


def looks_like_stellar(root: str | Path) -> bool:
    """True when identity folders carry Stellar files (attributes or prompt files)."""
    base = stellar_root(Path(root))
    for folder in base.iterdir():
        if folder.is_dir() and (any(folder.glob("*_attributes.json")) or (folder / "prompts_t.json").exists()):
            return True
    return False


def parse_attributes(path: Path) -> dict[str, int]:
    """``{attribute: +1/-1}`` from a Stellar ``*_attributes.json``, or :class:`DatasetError`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"cannot read attributes file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"malformed JSON ({exc.msg} at line {exc.lineno})") from None
    labels = raw.get("attributes") if isinstance(raw, dict) else None
    if isinstance(labels, list) and len(labels) == len(CELEBA_ATTRIBUTES):
        labels = dict(zip(CELEBA_ATTRIBUTES, labels))
    if not isinstance(labels, dict):
        raise DatasetError(path, "expected an 'attributes' object (name -> +1/-1) or a 40-long list")
    parsed = {}
    for name, value in labels.items():
        if value not in (1, -1, 0, "1", "-1", "0", True, False):
            raise DatasetError(path, f"attribute {name!r} has value {value!r}, expected +1 or -1")
        parsed[str(name)] = 1 if int(value) == 1 else -1
    return parsed


def load_stellar(root: str | Path, *, split: str = "all") -> list[Identity]:
    base = stellar_root(Path(root))
    if split not in ("all", *SPLITS):
        raise ValueError(f"unknown Stellar split {split!r}; expected one of all, test, val")
    identities = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        if split != "all" and not (folder.name.isdigit() and int(folder.name) in SPLITS[split]):
            continue
        photos = sorted(
            (p for p in folder.iterdir() if is_image_file(p) and _PHOTO_NAME.match(p.stem)), key=lambda p: int(p.stem)
        )
        attributes, problems = {}, []
        for photo in photos:
            labels_file = folder / f"{photo.stem}_attributes.json"
            try:
                attributes[photo] = parse_attributes(labels_file) if labels_file.exists() else None
            except DatasetError as exc:
                problems.append(str(exc))
                attributes[photo] = None
            if attributes[photo] is None and not labels_file.exists():
                problems.append(f"{labels_file}: attributes file missing")
        stems = {p.stem for p in photos}
        for labels_file in sorted(folder.glob("*_attributes.json")):
            stem = labels_file.name[: -len("_attributes.json")]
            if stem not in stems:
                problems.append(f"{folder / (stem + '.jpg')}: photo missing ({labels_file.name} is there)")
        prompt_files = {kind: folder / f"prompts_{kind}.json" for kind in ("t", "h") if (folder / f"prompts_{kind}.json").exists()}
        if not photos:
            problems.append(f"{folder}: no photos (expected 0.jpg, 1.jpg)")
        labelled = {p: a for p, a in attributes.items() if a}  # an empty "attributes" object is no labels
        identities.append(
            Identity(
                name=folder.name,
                photos=photos,
                attributes=labelled or None,
                prompt_files=prompt_files,
                layout="stellar",
                problems=problems,
            )
        )
    if not identities:
        raise DatasetError(base, f"no Stellar identity folders found for split {split!r}")
    return identities
