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
from likeness.data.base import Identity
from likeness.data.names import index_by_name, name_key

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
    warnings: list[str] = field(default_factory=list)  # scored anyway, but the user should know


def canonical_item_id(identity: str, reference: str | Path, prompt_id: str, seed: int) -> str:
    """``<identity key>-<photo key>-<prompt id>-s<seed>``: names go through
    :func:`likeness.data.names.name_key`, so an id is a safe file name and splits on ``-``."""
    return f"{name_key(identity)}-{name_key(Path(reference).stem)}-{prompt_id}-s{int(seed)}"


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


# Statuses an input gets before any image is decoded (decoding adds unreadable, too_large, ...).
IMAGE_MISSING, SIDECAR_MISSING, BAD_SIDECAR = "image_missing", "sidecar_missing", "bad_sidecar"
DUPLICATE_ID, UNSUPPORTED_FORMAT, UNKNOWN_IDENTITY, REF_MISSING = "duplicate_id", "unsupported_format", "unknown_identity", "ref_missing"
# Image formats read as generated images, in the order one is preferred when two share a stem.
GENERATED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_SIDECAR_BYTES = 1 << 20  # a sidecar is a few hundred bytes; a huge one is refused, not parsed


def _read_json(path: Path) -> tuple[dict | None, str, str]:
    """(record, status, problem)."""
    if not path.exists():
        return None, SIDECAR_MISSING, f"{path}: metadata file missing"
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            return None, BAD_SIDECAR, f"{path}: metadata file is larger than {MAX_SIDECAR_BYTES} bytes"
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        return None, BAD_SIDECAR, f"{path}: cannot read metadata ({type(exc).__name__}: {exc})"[:500]
    except json.JSONDecodeError as exc:
        return None, BAD_SIDECAR, f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})"
    if not isinstance(record, dict):
        return None, BAD_SIDECAR, f"{path}: expected a JSON object, got {type(record).__name__}"
    return record, "ok", ""


def _resolve_reference(item: GeneratedItem, ref, identities: dict[str, Identity]) -> None:
    """Point ``item.reference`` at the dataset photo named by ``ref``; set a status when that fails.

    ``ref`` comes from a file likeness did not necessarily write: it is only ever matched against
    the identity's own photos (by path, name or stem), never opened as a path of its own, so a
    sidecar cannot make likeness read a file outside the dataset.
    """
    if item.status != "ok":
        return
    if not ref or not isinstance(ref, str):
        item.status, item.problem = BAD_SIDECAR, f"{item.image.with_suffix('.json')}: no reference photo recorded"
        return
    identity = identities.get(item.identity) if item.identity else None
    if identities and identity is None:
        item.status, item.problem = UNKNOWN_IDENTITY, f"{item.image}: identity {item.identity!r} is not in the dataset"
        return
    photo = identity.photo(ref) if identity else None
    if photo is None and not identities and Path(ref).is_file():
        photo = Path(ref)  # no dataset given at all: the caller vouches for the sidecars
    if photo is None or not photo.exists():
        name = Path(ref).name
        expected = photo or (identity.photos[0].parent / name if identity and identity.photos else Path(name))
        has = ", ".join(p.name for p in identity.photos) if identity else "no dataset given"
        item.reference = expected
        item.status = REF_MISSING
        item.problem = f"{expected}: reference photo missing (recorded as {ref!r}; the identity has: {has or 'no photos'})"
        return
    item.reference = photo


def _identity_of(record: dict, fallback: str | None) -> str | None:
    value = record.get("identity")
    return str(value) if isinstance(value, (str, int)) and str(value) else fallback


def _check_recorded_id(item: GeneratedItem, key: str) -> None:
    """The id a sidecar records (``item_id`` / ``save_name``) is kept and compared, never used to pair files."""
    recorded = item.meta.get(key)
    if recorded is not None and str(recorded) != item.item_id:
        item.warnings.append(f"{item.image.with_suffix('.json')}: records {key} {recorded!r} but the file is "
                             f"{item.item_id!r}; the file name is used")


def read_canonical_item(image: str | Path, identities: dict[str, Identity]) -> GeneratedItem:
    """One image of the canonical layout with its sidecar (status says what is wrong, if anything)."""
    image = Path(image)
    record, status, problem = _read_json(image.with_suffix(".json"))
    if not image.exists():
        status, problem = IMAGE_MISSING, f"{image}: generated image missing (its sidecar is there)"
        if record is None:
            problem = f"{image}: generated image and its sidecar are missing"
    record = record or {}
    item = GeneratedItem(item_id=image.stem, image=image, identity=_identity_of(record, image.parent.name),
                         reference=None, meta=record, status=status, problem=problem)
    _check_recorded_id(item, "item_id")
    _resolve_reference(item, record.get("reference"), identities)
    return item


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") or ".tmp" in path.suffixes


def _scan(folder: Path, rel: str) -> tuple[dict[str, list[Path]], list[GeneratedItem]]:
    """``{stem: [files]}`` of one folder, plus rows for files no evaluation can read."""
    groups: dict[str, list[Path]] = {}
    odd = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or _is_temporary(path):
            continue
        suffix = path.suffix.lower()
        if suffix in GENERATED_SUFFIXES or suffix == ".json":
            groups.setdefault(path.stem, []).append(path)
        else:
            odd.append(GeneratedItem(f"{rel}{path.name}", path, None, None, status=UNSUPPORTED_FORMAT,
                                     problem=f"{path}: not an image format likeness reads "
                                             f"({', '.join(GENERATED_SUFFIXES)})"))
    return groups, odd


def _pair(stem: str, files: list[Path], rel: str, seen: set[str], read) -> list[GeneratedItem]:
    """The rows of the files sharing ``stem``: one item, plus one ``duplicate_id`` row per extra image."""
    images = sorted((f for f in files if f.suffix.lower() != ".json"),
                    key=lambda f: (GENERATED_SUFFIXES.index(f.suffix.lower()), f.name))
    sidecar = next((f for f in files if f.suffix.lower() == ".json"), None)
    main = images[0] if images else (sidecar.with_suffix(".png") if sidecar else None)
    item = read(main)
    rows = [item]
    if item.item_id in seen:  # the same id in another folder
        item.problem = f"{main}: item id {item.item_id!r} already used by another file; this one is not scored"
        item.item_id, item.status = f"{rel}{main.name}", DUPLICATE_ID
    seen.add(item.item_id)
    for extra in images[1:]:
        rows.append(GeneratedItem(f"{rel}{extra.name}", extra, item.identity, None, meta=item.meta, status=DUPLICATE_ID,
                                  problem=f"{extra}: same item id {stem!r} as {main.name}; only {main.name} is scored"))
    return rows


def _read_canonical(root: Path, identities: dict[str, Identity]) -> list[GeneratedItem]:
    items: list[GeneratedItem] = []
    seen: set[str] = set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        rel = f"{folder.name}/"
        groups, odd = _scan(folder, rel)
        for stem, files in sorted(groups.items()):
            items += _pair(stem, files, rel, seen, lambda image: read_canonical_item(image, identities))
        items += odd
    return items


def _read_flat_item(image: Path, identities: dict[str, Identity]) -> GeneratedItem:
    record, status, problem = _read_json(image.with_suffix(".json"))
    if not image.exists():
        status, problem = IMAGE_MISSING, f"{image}: generated image missing (its sidecar is there)"
    record = record or {}
    image_path = record.get("image_path")
    image_path = image_path if isinstance(image_path, str) else ""
    match = _STELLAR_SAVE_NAME.match(image.stem)
    identity = Path(image_path).parent.name if image_path else (match["identity"] if match else None)
    item = GeneratedItem(item_id=image.stem, image=image, identity=identity or None, reference=None, meta=record,
                         status=status, problem=problem)
    _check_recorded_id(item, "save_name")
    _resolve_reference(item, image_path or (match["photo"] if match else None), identities)
    return item


def _read_stellar_flat(root: Path, identities: dict[str, Identity]) -> list[GeneratedItem]:
    groups, odd = _scan(root, "")
    items: list[GeneratedItem] = []
    seen: set[str] = set()
    for stem, files in sorted(groups.items()):
        items += _pair(stem, files, "", seen, lambda image: _read_flat_item(image, identities))
    return items + odd


def detect_layout(root: str | Path) -> str:
    """Stellar flat when images or sidecars lie directly in ``root``, else canonical (one folder per identity)."""
    root = Path(root)
    flat = any(p.is_file() and not _is_temporary(p) and p.suffix.lower() in (*GENERATED_SUFFIXES, ".json")
               for p in root.iterdir())
    return "stellar_flat" if flat else "canonical"


def read_generated(root: str | Path, identities: list[Identity] | None = None) -> list[GeneratedItem]:
    """Every file under ``root`` (canonical or Stellar flat layout) as one item each, sorted, with a
    status: an image with its sidecar is "ok" (until decoding says otherwise); otherwise
    image_missing, sidecar_missing, bad_sidecar, duplicate_id, unsupported_format, unknown_identity
    or ref_missing, with ``problem`` naming the file. Item ids are file stems."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: generated-images folder does not exist")
    by_name = index_by_name(identities or [])
    if detect_layout(root) == "stellar_flat":
        return _read_stellar_flat(root, by_name)
    return _read_canonical(root, by_name)


def status_counts(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.status] = counts.get(item.status, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] != "ok", kv[0])))


def to_stellar_flat(canonical_root: str | Path, out_root: str | Path, identities: list[Identity] | None = None) -> list[Path]:
    """Copy a canonical folder into the Stellar flat layout the official evaluation tools read.

    ``save_name`` is ``<identity>-<photo stem>-<prompt number, 2 digits>``; when several seeds share a
    prompt, ``-s<seed>`` is appended so nothing is overwritten.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    by_name = index_by_name(identities or [])
    written = []
    for item in read_generated(canonical_root, identities):
        if item.status != "ok":
            continue
        meta = item.meta
        digits = re.sub(r"\D", "", str(meta.get("prompt_id", ""))) or "0"
        save_name = f"{name_key(item.identity)}-{name_key(item.reference.stem)}-{int(digits):02d}"
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
        if item.image.suffix.lower() == ".png":
            shutil.copy2(item.image, out_root / f"{save_name}.png")
        else:  # the official tools read <save_name>.png
            from likeness.data.images import load_image

            load_image(item.image).save(out_root / f"{save_name}.png")
        (out_root / f"{save_name}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        written.append(out_root / f"{save_name}.png")
    return written
