"""Which registered methods the weights on this machine can run: in given weights folders or the local hub cache.

Every method declares the base families it runs on (``Method.families``) and the published files it loads
(``Method.published_files``: option, file name, hub id, subfolder, role, ``when``). :func:`discover` looks for
each file

- in the weights folders given (the whole tree), by its published file name; where several copies exist, the one
  under the published subfolder (``models/image_encoder/config.json``) wins. A generic name (``config.json``,
  ``diffusion_pytorch_model.safetensors``, ...) counts only under its subfolder, or, without one, in a folder
  named like the hub repository (``CLIP-ViT-H-14-laion2B-s32B-b79K/config.json``);
- else in the local Hugging Face hub cache (``HF_HUB_CACHE``, or ``HF_HOME/hub``), offline: only what a
  download left there (``huggingface_hub.try_to_load_from_cache``, no network call);

and returns, per method, the method options that point at what was found: the file itself, or, for a model folder
(found by its ``config.json``, a generic weights name, or another JSON file such as a trained encoder's
``photoverse.json``), that folder; an option several files share gets the deepest folder holding them all. ``when`` picks the
version or variant: ``(("version", "v1.1"),)`` is needed only with ``version=v1.1``, and the key ``family`` names
the base family (``sd1``, ``sdxl``, ``flux1`` ...) a file is published for. The method's default version / variant
is preferred; when only another one is present, that one is chosen and its option set (``version=v1.1``).

A method that needs an ArcFace model (its default ``face_backend`` is ``arcface``, or its version's files set
``face_backend=arcface`` in their ``when``, as PhotoMaker v2's) also needs an InsightFace-style ONNX pack (a folder
holding a detector and a recogniser, e.g. an unpacked ``antelopev2`` or ``buffalo_l``) in a weights folder: it fills
``face_model_dir``. Methods without published files (the trained ones, the editors) are always available;
PhotoVerse and StellarNet declare the encoder folder ``likeness train-encoder`` writes (no hub id). Nothing is
loaded here but the ONNX packs' signatures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from likeness.methods.base import METHODS, Method, PublishedFile

# Names many models share: counted only where the published layout puts them (see the module docstring).
GENERIC_NAMES = frozenset({"config.json", "model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors",
                           "diffusion_pytorch_model.bin", "model_index.json"})
FACE_MODEL_OPTION = "face_model_dir"
FACE_MODEL_NEED = ("an ArcFace model folder (InsightFace-style ONNX pack such as antelopev2 or buffalo_l: a detector and a "
                   "recogniser) in a weights folder")
MAX_DEPTH = 8  # how deep a weights folder is searched


@dataclass
class Discovered:
    """What the weights found let one method do."""

    method: str
    families: tuple[str, ...]  # the base families it runs on with what was found (in the method's order)
    options: dict[str, dict] = field(default_factory=dict)  # family -> method options pointing at the files found
    missing: list[str] = field(default_factory=list)  # what is missing for its default version, in words
    trains: bool = False  # trained per person (training time), or tuning-free (encode time)
    any_family: bool = False  # the method declares no family: it runs on every base (the reference rows)

    @property
    def available(self) -> bool:
        return bool(self.families) or (self.any_family and not self.missing)

    def options_for(self, family: str) -> dict | None:
        """The options to run it on a base of ``family``; None when it cannot run there."""
        if self.any_family and not self.missing:
            return dict(self.options.get("", {}))
        return dict(self.options[family]) if family in self.options else None

    def describe(self) -> str:
        kind = "trained" if self.trains else "tuning-free"
        if self.available:
            where = ", ".join(self.families) or "any base"
            files = sorted({str(v) for opts in self.options.values() for v in opts.values() if isinstance(v, str)
                            and os.sep in v})
            return f"{self.method} ({kind}; {where})" + (f": {', '.join(files)}" if files else "")
        return f"{self.method} ({kind}): missing {'; '.join(self.missing)}"


def hub_cache_dir() -> Path:
    """The local hub cache as huggingface_hub resolves it, read from the environment now (tests move it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


class _Finder:
    """The files of the weights folders by name (one walk each), the hub cache, and the ArcFace packs."""

    def __init__(self, folders, hub_cache: bool = True):
        self.by_name: dict[str, list[Path]] = {}
        self.onnx_folders: list[Path] = []
        for folder in folders or []:
            root = Path(folder).expanduser()
            if not root.is_dir():
                raise FileNotFoundError(f"weights folder {folder} does not exist; pass a folder holding published "
                                        f"weights files (any layout: they are found by name)")
            for here, dirs, files in os.walk(root):
                depth = len(Path(here).relative_to(root).parts)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < MAX_DEPTH)
                for name in sorted(files):
                    self.by_name.setdefault(name, []).append(Path(here) / name)
                if sum(name.endswith(".onnx") for name in files) >= 2:
                    self.onnx_folders.append(Path(here))
        self.cache = hub_cache_dir() if hub_cache else None
        self._packs: list[Path] | None = None

    def find(self, file: PublishedFile) -> Path | None:
        sub = Path(file.subfolder).parts if file.subfolder else ()
        repo = (file.hub.rsplit("/", 1)[-1],) if file.hub else ()
        paths = self.by_name.get(file.filename, [])

        def under(path: Path, parts: tuple) -> bool:
            return bool(parts) and tuple(path.parent.parts[-len(parts):]) == parts

        for path in paths:
            if under(path, sub) or (not sub and under(path, repo)):
                return path
        if paths and file.filename not in GENERIC_NAMES:
            return paths[0]
        return self._cached(file)

    def _cached(self, file: PublishedFile) -> Path | None:
        if self.cache is None or not file.hub or not self.cache.is_dir():
            return None
        from huggingface_hub import try_to_load_from_cache

        name = f"{file.subfolder.strip('/')}/{file.filename}" if file.subfolder else file.filename
        try:
            found = try_to_load_from_cache(file.hub, name, cache_dir=str(self.cache))
        except Exception:  # a malformed id or cache: simply not found
            return None
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None

    def face_packs(self) -> list[Path]:
        """Folders holding an InsightFace-style detector and recogniser (checked by signature, as the backend does)."""
        if self._packs is None:
            from likeness.faces.arcface import ArcFaceBackend

            self._packs = []
            for folder in self.onnx_folders:
                try:
                    ArcFaceBackend(folder)
                except Exception:  # not a pack (other ONNX models, unreadable files): not offered
                    continue
                self._packs.append(folder)
        return self._packs


def option_value(file: PublishedFile, path: Path) -> str:
    """What the file's option gets: the file, or the folder it marks: a JSON file (``config.json``, a trained encoder's
    ``stellarnet.json``) or a generic weights name is part of a model folder, never the weights themselves."""
    return str(path.parent if file.filename in GENERIC_NAMES or file.filename.endswith(".json") else path)


def common_folder(paths: list[Path]) -> str:
    """The folder an option gets for several files (InfiniteYou's variant folder: its projection file and its
    ``InfuseNetModel/``): the deepest folder holding all of them."""
    return os.path.commonpath([str(p.parent) for p in paths])


def needs_face_model(method: type[Method], config: dict | None = None) -> bool:
    """Whether the method, in the version ``config`` picks (a file's ``when`` may set ``face_backend``), needs an
    ArcFace model folder."""
    backend = (config or {}).get("face_backend", method.defaults.get("face_backend"))
    return backend == "arcface" and FACE_MODEL_OPTION in method.defaults


def trains(method: type[Method]) -> bool:
    """Whether the method trains per person (it implements the shared training loop's ``setup``)."""
    return method.setup is not Method.setup


def _configurations(method: type[Method]) -> list[dict]:
    """The versions / variants a method is published in: the most specific ``when``s of its files (one not contained
    in another), each giving every option that has a file for it one (the method's defaults first)."""
    files = method.published_files
    whens = []
    for file in files:
        if dict(file.when) not in whens:
            whens.append(dict(file.when))
    configs = [w for w in whens if not any(w.items() < other.items() for other in whens)]

    def complete(config: dict) -> bool:
        for option in {f.option for f in files}:
            mine = [f for f in files if f.option == option]
            compatible = [f for f in mine if all(config.get(k, v) == v for k, v in f.when)]
            if compatible and not any(_applies(f, config) for f in mine):
                return False
        return True

    defaults = method.defaults
    return sorted((c for c in configs if complete(c)),
                  key=lambda c: -sum(defaults.get(k) == v for k, v in c.items() if k != "family"))


def _applies(file: PublishedFile, config: dict) -> bool:
    return all(config.get(key) == value for key, value in file.when)


def discover_method(method: type[Method], finder: _Finder) -> Discovered:
    found = Discovered(method.name, (), trains=trains(method), any_family=not method.families)
    families = tuple(method.families)
    packs = finder.face_packs() if any(needs_face_model(method, dict(f.when)) for f in method.published_files) \
        or needs_face_model(method) else []
    face = {FACE_MODEL_OPTION: str(packs[0])} if packs else {}
    if needs_face_model(method) and not face:
        found.missing.append(FACE_MODEL_NEED)
    if not method.published_files:
        found.options = {family: dict(face) for family in families} if families else {"": dict(face)}
        found.families = families if not found.missing else ()
        return found
    configs = _configurations(method)
    for k, config in enumerate(configs):
        paths: dict[str, list[tuple[PublishedFile, Path]]] = {}
        missing = []
        for file in method.published_files:
            if not _applies(file, config):
                continue
            path = finder.find(file)
            if path is None:
                where = f"{file.hub}/{file.subfolder}" if file.subfolder else file.hub
                missing.append(f"{file.filename} ({file.role}; {where})" if where else f"{file.filename} ({file.role})")
            else:
                paths.setdefault(file.option, []).append((file, path))
        options = {option: option_value(*found[0]) if len(found) == 1 else common_folder([p for _, p in found])
                   for option, found in paths.items()}
        needs_face = needs_face_model(method, config)
        if needs_face and not face and FACE_MODEL_NEED not in missing + found.missing:
            missing.append(FACE_MODEL_NEED)
        if k == 0:
            found.missing = missing + found.missing
        if missing or (needs_face and not face):
            continue
        options.update({key: value for key, value in config.items() if key != "family"}, **(face if needs_face else {}))
        for family in ((config["family"],) if "family" in config else families):
            found.options.setdefault(family, options)
    if found.options:
        found.missing = []
    found.families = tuple(f for f in families if f in found.options)
    return found


def check_base(method: str, base_model: str) -> str:
    """The family of ``base_model``, after checking ``method`` runs on that family (else an error naming both)."""
    from likeness.methods.base import get_method
    from likeness.models.families import FAMILY_NAMES
    from likeness.models.loading import FamilyMismatchError, base_model_info

    families = type(get_method(method)).families
    family = base_model_info(base_model).family
    if families and family not in families:
        names = ", ".join(f"{FAMILY_NAMES.get(f, f)} ({f})" for f in families)
        raise FamilyMismatchError(f"{method} runs on {names}, but its base {base_model!r} is "
                                  f"{FAMILY_NAMES.get(family, family)} ({family}); give it a base of its families "
                                  f"({method}@BASE)")
    return family


def discover(weights_folders=(), *, hub_cache: bool = True, methods=None) -> dict[str, Discovered]:
    """For each registered method (or those named in ``methods``): what the weights folders and (``hub_cache``) the
    local hub cache let it run. A weights folder that does not exist is an error naming it."""
    import likeness.methods  # noqa: F401  (registers the built-in methods)

    finder = _Finder(weights_folders, hub_cache)
    names = list(methods) if methods is not None else METHODS.names()
    return {name: discover_method(METHODS.get(name), finder) for name in names}


__all__ = ["Discovered", "check_base", "discover", "discover_method", "hub_cache_dir", "needs_face_model", "trains",
           "GENERIC_NAMES", "FACE_MODEL_NEED"]
