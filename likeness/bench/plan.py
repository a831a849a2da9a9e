"""The plan of a benchmark run: its configuration and its work items.

A work item is one image to make: identity x reference photo x prompt x seed index. Its id is the
canonical item id (``obama-0-t0007-s1234``) and its seed is derived from the item's coordinates by
hashing, so an item's image never depends on which process made it, in what order, or how the work
was split. The configuration is hashed too: a run folder remembers the configuration that made it
and refuses to be continued with another one (mixing two would silently corrupt the results).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from likeness import __version__
from likeness.data.identities import Identity
from likeness.data.layout import canonical_item_id
from likeness.data.names import IdentityNameError, check_unique, name_key
from likeness.data.prompts import Prompt, load_prompts, prompts_digest, select_prompts

CONFIG_FILE = "run.json"
# Seeds live in [0, 2**31): accepted by every torch generator and by numpy.
SEED_RANGE = 2**31


class RunConfigError(ValueError):
    """A run folder cannot be used with the configuration given; the message says why."""


def derive_seed(identity: str, reference: str, prompt_id: str, seed_index: int, base_seed: int = 0) -> int:
    """A seed that depends only on what the item is, never on where or when it runs."""
    key = f"likeness-seed/v1/{base_seed}/{identity}/{reference}/{prompt_id}/{seed_index}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % SEED_RANGE


def file_digest(path: str | Path) -> str:
    """sha256 of a file (first 16 hex digits): a reference photo that changed is a different run."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class WorkItem:
    item_id: str
    identity: str
    reference: Path
    prompt: Prompt
    seed_index: int
    seed: int
    position: int  # index in the plan: decides which rank owns the item

    def sidecar(self, config: "RunConfig") -> dict:
        """The canonical sidecar metadata of this item's image (written next to the PNG)."""
        return {
            "item_id": self.item_id,
            "identity": self.identity,
            "identity_key": name_key(self.identity),
            "reference": str(self.reference),
            "prompt": self.prompt.fill(config.subject),
            **self.prompt.sidecar_fields(),
            "seed": self.seed,
            "method": config.method,
            "base_model": config.base_model,
            "likeness_version": __version__,
        }


# The face detector of run folders recorded before RunConfig.face_detector existed (dlib's default then).
LEGACY_DETECTOR = "hog"


@dataclass
class RunConfig:
    """Everything that decides a run's images and scores. ``digest()`` identifies it."""

    method: str
    base_model: str
    identities: str  # dataset folder, or "builtin" (the bundled astronaut)
    prompts: str = "open"  # "open", "stellar-t", "stellar-h", or a JSON file
    prompt_limit: int | None = 8
    prompt_ids: list[str] | None = None
    categories: list[str] | None = None
    references: int | None = 1  # photos per identity used as reference (None: all)
    seeds: int = 1  # images per (reference, prompt)
    base_seed: int = 0
    steps: int = 2
    guidance: float = 5.0
    resolution: int = 64
    metrics: list[str] = field(default_factory=lambda: ["ips", "sis", "aps"])
    face_backend: str = "dlib"
    face_detector: str = "mtcnn"  # dlib / dlib-torch backends: mtcnn, hog or cnn (runs before it existed used hog)
    method_options: dict = field(default_factory=dict)
    # How the method names the person in prompts; the method may refine it (e.g. its placeholder token).
    subject: str = "a person"
    # Fingerprint of the inputs, filled by the plan: photo and prompt digests.
    inputs: dict = field(default_factory=dict)
    # Weight quantization of the denoiser at generation (likeness.models.quantization): none, int8, nf4, fp8.
    quantize: str = "none"
    # The runtime choices (--device, --dtype, --mixed-precision, ...) other than the defaults, as keyword
    # arguments of likeness.models.runtime.resolve_plan; each rank resolves them on its machine and run.json
    # records the resolved plan ("runtime").
    runtime: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        record = asdict(self)
        # Options at their defaults are left out, so runs recorded before the options existed keep their digest.
        if record["quantize"] == "none":
            del record["quantize"]
        if not record["runtime"]:
            del record["runtime"]
        return record

    def digest(self) -> str:
        data = self.to_dict()
        if data["face_detector"] == LEGACY_DETECTOR:  # what run folders made before the field existed used
            del data["face_detector"]
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def face_options(self) -> dict:
        """Options of the metrics' face backend: the detector, for the dlib backends."""
        return {"detector": self.face_detector} if self.face_backend in ("dlib", "dlib-torch") else {}

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = set(cls.__dataclass_fields__)
        data = {"face_detector": LEGACY_DETECTOR, **data}  # an older run folder keeps the detector it was scored with
        return cls(**{k: v for k, v in data.items() if k in known})


def prompts_for(config: RunConfig, identity: Identity) -> list[Prompt]:
    """The prompts for one identity: the shared set, or the identity's own Stellar prompt file."""
    if config.prompts in ("stellar-t", "stellar-h"):
        kind = config.prompts[-1]
        path = identity.prompt_files.get(kind)
        if path is None:
            raise RunConfigError(f"identity {identity.name!r} has no prompts_{kind}.json (needed by --prompts {config.prompts})")
        pool = load_prompts(path)
    else:
        pool = load_prompts(config.prompts)
    return select_prompts(pool, limit=config.prompt_limit, categories=config.categories, ids=config.prompt_ids)


def reference_photos(config: RunConfig, identity: Identity) -> list[Path]:
    if not identity.photos:
        raise RunConfigError(f"identity {identity.name!r} has no photos")
    return list(identity.photos if config.references is None else identity.photos[: config.references])


def make_plan(config: RunConfig, identities: list[Identity]) -> list[WorkItem]:
    """All work items, in a fixed order (identity, reference, prompt, seed index).

    Also fills ``config.inputs`` with digests of the photos and prompts, so the configuration hash
    changes whenever an input file does.
    """
    items: list[WorkItem] = []
    inputs = {}
    try:
        check_unique(i.name for i in identities)
    except IdentityNameError as exc:
        raise RunConfigError(str(exc)) from None
    for identity in sorted(identities, key=lambda i: i.name):
        prompts = prompts_for(config, identity)
        refs = reference_photos(config, identity)
        inputs[identity.name] = {
            "photos": {p.name: (file_digest(p) if p.is_file() else "missing") for p in identity.photos},
            "prompts": prompts_digest(prompts),
        }
        for ref in refs:
            for prompt in prompts:
                for k in range(config.seeds):
                    seed = derive_seed(identity.name, ref.stem, prompt.prompt_id, k, config.base_seed)
                    item_id = canonical_item_id(identity.name, ref, prompt.prompt_id, seed)
                    items.append(WorkItem(item_id, identity.name, ref, prompt, k, seed, len(items)))
    ids = [i.item_id for i in items]
    if len(set(ids)) != len(ids):
        raise RunConfigError("two work items share an id (duplicate identity names or prompt ids?)")
    config.inputs = inputs
    return items


def shard(items: list[WorkItem], rank: int, world_size: int) -> list[WorkItem]:
    """The items rank ``rank`` of ``world_size`` owns: every world_size-th, by plan position."""
    return [item for item in items if item.position % world_size == rank]


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: run folder has {a!r}, now {b!r}")
    return out


def bind_run_folder(run_dir: str | Path, config: RunConfig, *, write: bool = True) -> Path:
    """Record ``config`` in a new run folder, or check it matches the one already recorded there."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    record = {"digest": config.digest(), "likeness_version": __version__, "config": config.to_dict()}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunConfigError(f"{path}: run configuration is malformed ({exc.msg}); use a new run folder") from None
        if old.get("digest") != record["digest"]:
            diffs = _differences(old.get("config", {}), json.loads(json.dumps(record["config"], default=str)))
            raise RunConfigError(
                f"{run_dir} was made with another configuration; refusing to mix results. Differences: "
                + ("; ".join(diffs[:8]) or "(digest only)")
                + ". Use a new run folder, or repeat the original options (or --resume) to continue it."
            )
        return path
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
        tmp.replace(path)
    return path


def record_runtime(run_dir: str | Path, runtime: dict) -> None:
    """Add the resolved runtime plan (``RuntimePlan.to_dict()`` of the main rank, with the number of ranks) to
    the run's ``run.json``; not part of the digest (a GPU index or rank count does not change the numbers)."""
    path = Path(run_dir) / CONFIG_FILE
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("runtime") == runtime:
        return
    record["runtime"] = runtime
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise RunConfigError(f"{run_dir}: not a likeness run folder ({CONFIG_FILE} missing)")
    try:
        return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RunConfigError(f"{path}: run configuration is malformed ({exc})") from None
