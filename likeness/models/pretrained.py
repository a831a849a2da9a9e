"""One loading path for transformers models and published weight files (besides the base pipelines).

Every model likeness loads outside :func:`likeness.models.loading.load_pipeline` (image encoders,
segmentation and captioning models, a method's published weight files) goes through here, so the same
three things hold everywhere:

- **ids**: a built-in tiny id (``likeness/tiny-clip-vision`` ...), a local folder or file, or a hub id
  ``owner/name``; anything else is refused before any network call;
- **offline**: hub lookups use the local cache only when :func:`~likeness.models.loading.offline` says
  so (``HF_HUB_OFFLINE`` or no route to the hub): no minute of retries before an error;
- **one error**: :class:`ModelUnavailableError` (a ``FileNotFoundError``) names the model, what it is for,
  why it is missing and how to provide it; callers with their own error type pass ``error=``.

Loaded models are put on the ``device`` and in the ``dtype`` the caller passes (from the run's plan):
nothing here picks a device or precision on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch

from likeness.models.loading import offline, offline_reason, pick_dtype
from likeness.models.tiny import is_tiny

# The image encoder every encoder-based method uses on the built-in tiny bases (built offline from a config).
TINY_IMAGE_ENCODER = "likeness/tiny-clip-vision"


class ModelUnavailableError(FileNotFoundError):
    """A model or weight file could not be found locally or (offline) on the hub. The message says how to provide it."""

    def __init__(self, model_id: str, reason: str, what: str = "model"):
        self.model_id, self.reason, self.what = str(model_id), reason, what
        hub = str(model_id).partition(":")[0]
        download = (f", or download it once on a connected machine (`hf download {hub}`) and keep HF_HOME pointing "
                    f"at that cache" if _hub_shaped(hub) else "")
        super().__init__(f"{what} {str(model_id)!r} could not be loaded: {reason}. Provide a local folder or file "
                         f"(written by save_pretrained, or the published file){download}.")


def _hub_shaped(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).expanduser().exists()


def image_encoder_for(base_model: str | Path, default: str | None) -> str | None:
    """The default image encoder of an encoder-based method: the tiny one on a tiny base (so the built-in
    default runs offline), else the method's ``default`` (None: the method has none and asks for one)."""
    return TINY_IMAGE_ENCODER if is_tiny(str(base_model)) else default


def tiny_path(model_id: str) -> Path | None:
    """The built folder of a tiny vision id, else None."""
    from likeness.models.tiny_vision import TINY_VISION_MODELS, tiny_vision_path

    return tiny_vision_path(model_id) if str(model_id) in TINY_VISION_MODELS else None


def pretrained_source(model_id: str | Path, *, what: str = "model", need: str | None = "config.json",
                      error: Callable[[str], Exception] | None = None) -> str | Path:
    """Where ``from_pretrained`` should read ``model_id``: a tiny model's folder, a local folder (holding
    ``need``), or the hub id itself after checking its shape."""
    error = error or (lambda reason: ModelUnavailableError(str(model_id), reason, what))
    tiny = tiny_path(str(model_id))
    if tiny is not None:
        return tiny
    local = Path(str(model_id)).expanduser()
    if local.exists():
        if need and local.is_dir() and not (local / need).exists():
            raise error(f"{local} exists but has no {need}")
        return local
    if not _hub_shaped(str(model_id)):
        raise error("no such local folder, and it is not a hub id of the form owner/name")
    return str(model_id)


def hub_failure(exc: Exception) -> str:
    """Why a hub/file load failed, in one line: the offline reason when there is one, and the exception."""
    first_line = (str(exc).splitlines() or [""])[0][:300]
    where = f"{offline_reason()} and it is not in the local hub cache" if offline() else "it could not be loaded"
    return f"{where} ({type(exc).__name__}: {first_line})"


def load_pretrained(cls, model_id: str | Path, *, what: str = "model", device=None, dtype=None,
                    error: Callable[[str], Exception] | None = None, need: str | None = "config.json", **kwargs):
    """``cls.from_pretrained`` (a transformers model, processor or tokenizer class) through the one offline
    check and error; a model is moved to ``device`` in ``dtype`` when they are given (processors ignore both).

    Extra ``kwargs`` (``subfolder``, ``revision`` ...) go to ``from_pretrained``. ``error`` builds the exception
    from a reason (default :class:`ModelUnavailableError`)."""
    error = error or (lambda reason: ModelUnavailableError(str(model_id), reason, what))
    source = pretrained_source(model_id, what=what, need=need if not kwargs.get("subfolder") else None, error=error)
    is_model = isinstance(cls, type) and issubclass(cls, torch.nn.Module) or hasattr(cls, "_from_config")
    torch_dtype = pick_dtype(torch.device(device or "cpu"), dtype) if dtype is not None else None
    if is_model and torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        loaded = cls.from_pretrained(source, local_files_only=offline(), **kwargs)
    except Exception as exc:  # hub / file / config errors come as several unrelated types
        raise error(hub_failure(exc)) from None
    if isinstance(loaded, torch.nn.Module) and (device is not None or torch_dtype is not None):
        loaded.to(**{k: v for k, v in (("device", device), ("dtype", torch_dtype)) if v is not None})
    return loaded


def hub_file(repo: str, filename: str, *, subfolder: str | None = None, what: str = "weights",
             error: Callable[[str], Exception] | None = None) -> Path:
    """One file of a hub repository (``hf_hub_download``), from the local cache only when offline."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, subfolder=subfolder or None, local_files_only=offline()))
    except Exception as exc:  # hub errors come as several unrelated types
        where = f"{subfolder}/{filename}" if subfolder else filename
        error = error or (lambda reason: ModelUnavailableError(f"{repo}:{where}", reason, what))
        raise error(hub_failure(exc)) from None


def resolve_file(spec: str | Path, default_name: str, subfolders: Iterable[str] = ("",), what: str = "weights") -> Path:
    """A published file given as a file path, a folder holding ``default_name`` (also in ``subfolders``),
    or a hub id (``owner/name``, fetched by ``huggingface_hub``; from the local cache when offline)."""
    subfolders = list(subfolders)
    path = Path(str(spec)).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for sub in subfolders:
            candidate = path / sub / default_name
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(Path(sub) / default_name) for sub in subfolders)
        raise FileNotFoundError(f"{path}: folder has no {what} file (looked for {looked}); pass the file itself")
    text = str(spec)
    if not _hub_shaped(text):
        raise FileNotFoundError(f"{what} {text!r}: no such file or folder, and not a hub id of the form owner/name")
    problems = []
    for sub in subfolders:
        try:
            return hub_file(text, default_name, subfolder=sub, what=what)
        except ModelUnavailableError as exc:
            problems.append(f"{sub + '/' if sub else ''}{default_name}: {exc.reason}")
    raise ModelUnavailableError(text, "the hub repository did not provide " + "; ".join(problems), what)
