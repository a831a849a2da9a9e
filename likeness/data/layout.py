"""Where generated images live and what each one was made from.

Canonical layout (what likeness writes)::

    <root>/<identity>/<item_id>.png
    <root>/<identity>/<item_id>.json   # sidecar, keys in SIDECAR_KEYS

with ``item_id = <identity>-<reference photo stem>-<prompt_id>-s<seed>`` (e.g. ``obama-0-t0007-s1234``).

The Stellar flat layout (``<root>/<save_name>.png`` + ``<save_name>.json`` with ``prompt``,
``attributes``, ``detectables``, ``image_path`` = ``<id>/<k>.jpg``, ``save_name`` like ``000-0-00``)
is read too, and :func:`to_stellar_flat` converts canonical output for the official tools.

Reading never stops at a bad file: an item whose sidecar is missing or malformed comes back with a
``status`` and a ``problem`` naming the file, so the evaluator can record it and go on.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from likeness import __version__
from likeness.data.identities import Identity

SIDECAR_KEYS = (
    "item_id", "identity", "reference", "prompt", "prompt_template", "prompt_id", "detectables", "categories",
    "relations", "seed", "method", "base_model", "likeness_version",
)
_STELLAR_SAVE_NAME = re.compile(r"^(?P<identity>[^-/]+)-(?P<photo>[^-/]+)-(?P<prompt>\d+)$")


@dataclass
class GeneratedItem:
    """One generated image and its metadata. ``status`` is "ok" or why it cannot be evaluated."""

    item_id: str
    image: Path
    identity: str | None
    reference: Path | None  # the reference photo used to generate it, resolved against the dataset
    meta: dict = field(default_factory=dict)
    status: str = "ok"
    problem: str = ""


def canonical_item_id(identity: str, reference: str | Path, prompt_id: str, seed: int) -> str:
    return f"{identity}-{Path(reference).stem}-{prompt_id}-s{int(seed)}"


def write_sidecar(image_path: str | Path, meta: dict) -> Path:
    """Write ``<image>.json`` next to a generated image. Missing keys are an error, not a silent gap."""
    missing = [k for k in SIDECAR_KEYS if k not in meta and k != "likeness_version"]
    if missing:
        raise ValueError(f"sidecar for {image_path} lacks keys: {', '.join(missing)}")
    record = {k: meta[k] for k in SIDECAR_KEYS if k in meta}
    record.setdefault("likeness_version", __version__)
    record["reference"] = str(record["reference"])
    record.update({k: v for k, v in meta.items() if k not in record})
    path = Path(image_path).with_suffix(".json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=False), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a sidecar
    return path


def _read_json(path: Path) -> tuple[dict | None, str, str]:
    """(record, status, problem)."""
    if not path.exists():
        return None, "missing_sidecar", f"{path}: metadata file missing"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, "bad_sidecar", f"{path}: cannot read metadata ({exc})"
    except json.JSONDecodeError as exc:
        return None, "bad_sidecar", f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})"
    if not isinstance(record, dict):
        return None, "bad_sidecar", f"{path}: expected a JSON object, got {type(record).__name__}"
    return record, "ok", ""


def _resolve_reference(item: GeneratedItem, ref: str | None, identities: dict[str, Identity]) -> None:
    """Point ``item.reference`` at the dataset photo named by ``ref``; set a status when that fails."""
    if item.status != "ok":
        return
    if not ref:
        item.status, item.problem = "bad_sidecar", f"{item.image.with_suffix('.json')}: no reference photo recorded"
        return
    identity = identities.get(item.identity) if item.identity else None
    if identities and identity is None:
        item.status, item.problem = "unknown_identity", f"{item.image}: identity {item.identity!r} is not in the dataset"
        return
    photo = identity.photo(ref) if identity else None
    if photo is None and Path(ref).is_file():
        photo = Path(ref)
    if photo is None or not photo.exists():
        expected = photo or (identity.photos[0].parent / Path(ref).name if identity and identity.photos else Path(ref))
        has = ", ".join(p.name for p in identity.photos) if identity else "no dataset given"
        item.reference = expected
        item.status = "ref_missing"
        item.problem = f"{expected}: reference photo missing (recorded as {ref!r}; the identity has: {has or 'no photos'})"
        return
    item.reference = photo


def read_canonical_item(image: str | Path, identities: dict[str, Identity]) -> GeneratedItem:
    """One image of the canonical layout with its sidecar (status says what is wrong, if anything)."""
    image = Path(image)
    record, status, problem = _read_json(image.with_suffix(".json"))
    if not image.exists():
        status, problem = "missing", f"{image}: generated image missing"
    record = record or {}
    item = GeneratedItem(
        item_id=str(record.get("item_id") or image.stem),
        image=image,
        identity=str(record.get("identity") or image.parent.name),
        reference=None,
        meta=record,
        status=status,
        problem=problem,
    )
    _resolve_reference(item, record.get("reference"), identities)
    return item


def _read_canonical(root: Path, identities: dict[str, Identity]) -> list[GeneratedItem]:
    return [read_canonical_item(image, identities) for image in sorted(root.glob("*/*.png"))
            if not image.parent.name.startswith(("_", "."))]


def _read_stellar_flat(root: Path, identities: dict[str, Identity]) -> list[GeneratedItem]:
    items = []
    for image in sorted(root.glob("*.png")):
        record, status, problem = _read_json(image.with_suffix(".json"))
        record = record or {}
        image_path = str(record.get("image_path") or "")
        match = _STELLAR_SAVE_NAME.match(image.stem)
        identity = Path(image_path).parent.name if image_path else (match["identity"] if match else None)
        item = GeneratedItem(
            item_id=str(record.get("save_name") or image.stem),
            image=image,
            identity=identity or None,
            reference=None,
            meta=record,
            status=status,
            problem=problem,
        )
        ref = image_path or (match["photo"] if match else None)
        _resolve_reference(item, ref, identities)
        items.append(item)
    return items


def detect_layout(root: str | Path) -> str:
    root = Path(root)
    return "stellar_flat" if any(root.glob("*.png")) else "canonical"


def read_generated(root: str | Path, identities: list[Identity] | None = None) -> list[GeneratedItem]:
    """Every generated image under ``root`` (canonical or Stellar flat layout), sorted, with status."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: generated-images folder does not exist")
    by_name = {i.name: i for i in identities or []}
    if detect_layout(root) == "stellar_flat":
        return _read_stellar_flat(root, by_name)
    return _read_canonical(root, by_name)


def to_stellar_flat(canonical_root: str | Path, out_root: str | Path, identities: list[Identity] | None = None) -> list[Path]:
    """Copy a canonical folder into the Stellar flat layout the official evaluation tools read.

    ``save_name`` is ``<identity>-<photo stem>-<prompt number, 2 digits>``; when several seeds share a
    prompt, ``-s<seed>`` is appended so nothing is overwritten.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    by_name = {i.name: i for i in identities or []}
    written = []
    for item in read_generated(canonical_root, identities):
        if item.status != "ok":
            continue
        meta = item.meta
        digits = re.sub(r"\D", "", str(meta.get("prompt_id", ""))) or "0"
        save_name = f"{item.identity}-{item.reference.stem}-{int(digits):02d}"
        if (out_root / f"{save_name}.png").exists():
            save_name += f"-s{meta.get('seed', 0)}"
        identity = by_name.get(item.identity)
        labels = identity.labels(item.reference) if identity else None
        record = {
            "prompt": meta.get("prompt", ""),
            "attributes": labels or {},
            "detectables": meta.get("detectables", []),
            "image_path": f"{item.identity}/{item.reference.name}",
            "save_name": save_name,
        }
        shutil.copy2(item.image, out_root / f"{save_name}.png")
        (out_root / f"{save_name}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        written.append(out_root / f"{save_name}.png")
    return written
