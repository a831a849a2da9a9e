"""Loading base text-to-image pipelines (SD 1.x / 2.x / SDXL; FLUX.1, FLUX.2 [klein], SD3.5, Qwen-Image) from a hub
id, a local folder or a tiny id.

One entry point, :func:`load_pipeline`, so every method and command resolves models the same
way: same device and dtype choice, same offline behaviour, same error when the model is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from likeness.models.families import FAMILY_NAMES, FLOW_FAMILIES, FLOW_PIPELINES, GATED_HINTS, UNET_FAMILIES, UnknownFamilyError
from likeness.models.tiny import TINY_MODELS, TINY_VERSION, is_tiny, tiny_model_path

FAMILIES = UNET_FAMILIES + FLOW_FAMILIES


class ModelNotFoundError(FileNotFoundError):
    """A base model could not be found locally or (offline) on the hub. The message says how to provide it."""

    def __init__(self, model_id: str, reason: str):
        self.model_id = model_id
        super().__init__(
            f"base model {model_id!r} is not available: {reason}. Provide it as a local folder written by "
            f"`save_pretrained` (a folder with model_index.json), or download it once on a connected machine "
            f"(`huggingface-cli download {model_id}`) and keep HF_HOME pointing at that cache; "
            f"for offline smoke runs use one of the built-in tiny models: {', '.join(TINY_MODELS)}."
        )


class GatedModelError(ModelNotFoundError):
    """A hub model whose licence must be accepted (and a token given) before it can be downloaded."""

    def __init__(self, model_id: str, licence: str | None = None):
        self.model_id = model_id
        FileNotFoundError.__init__(
            self,
            f"base model {model_id!r} is gated on the hub{f' ({licence})' if licence else ''}: open "
            f"https://huggingface.co/{model_id}, accept its licence with your account, then log in on this machine "
            f"(`hf auth login`, or set HF_TOKEN to a read token) and run the command again; or pass a local folder "
            f"holding the downloaded model",
        )


class FamilyMismatchError(ValueError):
    """An artifact made for one model family was used with another (e.g. an SD-1.x artifact on SDXL)."""


@dataclass(frozen=True)
class BaseModelInfo:
    """What a personalization artifact must remember about the model it was trained on."""

    model_id: str
    family: str  # sd1 | sd2 | sdxl | flux1 | flux2 | sd3 | qwen-image
    revision: str  # hub commit, or a hash of the local configs, or the tiny-model version

    def to_dict(self) -> dict:
        return {"model_id": self.model_id, "family": self.family, "revision": self.revision}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The runtime plan's device for ``device`` (``None``: CUDA (this rank's GPU), then Apple MPS, then CPU).
    A thin wrapper over :func:`likeness.models.runtime.current_plan`; code that has a plan uses ``plan.device``."""
    from likeness.models.runtime import current_plan

    return current_plan(None if device is None else str(device), "auto", "no").torch_device


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The runtime plan's weights dtype on ``device``: float32 on CPU, bf16 on GPUs with native bf16, else
    float16; an explicit ``dtype`` is checked against the device. A wrapper over the runtime plan."""
    from likeness.models.runtime import current_plan

    return current_plan(str(device), "auto" if dtype is None else dtype, "no").torch_dtype


def offline() -> bool:
    """Load from the local hub cache only: HF_HUB_OFFLINE is set, or the hub cannot be reached at all.

    Without this, each hub file a machine without network asks for costs about 23 s of huggingface_hub's
    retries before the clear "not available" error; one short connection attempt per process avoids that."""
    return _offline_by_env() or not hub_reachable()


def offline_reason() -> str:
    """Why :func:`offline` is true, for error messages."""
    if _offline_by_env():
        return "HF_HUB_OFFLINE is set"
    return f"the hub ({_hub_address()[0]}) cannot be reached from this machine"


def _offline_by_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hub_address() -> tuple[str, int]:
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


_REACHABLE: dict[tuple[str, int], bool] = {}


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connection attempt to the hub endpoint per process (remembered). Behind a proxy the direct
    attempt says nothing, so the hub counts as reachable and huggingface_hub goes through the proxy."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return True
    address = _hub_address()
    if address not in _REACHABLE:
        import socket

        try:
            socket.create_connection(address, timeout=timeout_s).close()
            _REACHABLE[address] = True
        except OSError:
            _REACHABLE[address] = False
    return _REACHABLE[address]


def resolve_model_path(model_id: str | Path, revision: str | None = None) -> Path:
    """A local folder holding the pipeline: tiny ids are built into the cache, hub ids are fetched
    (or looked up in the local hub cache when offline), local folders are checked."""
    model_id = str(model_id)
    if is_tiny(model_id):
        return tiny_model_path(model_id)
    local = Path(model_id).expanduser()
    if local.exists():
        if not (local / "model_index.json").exists():
            raise ModelNotFoundError(model_id, f"{local} exists but has no model_index.json")
        return local
    if model_id.count("/") != 1 or model_id.startswith((".", "/", "~")):
        raise ModelNotFoundError(model_id, "no such local folder, and it is not a hub id of the form owner/name")
    from diffusers import DiffusionPipeline

    try:
        # diffusers' own download picks only the files the pipeline needs (one weight format, no variants).
        return Path(DiffusionPipeline.download(model_id, revision=revision, local_files_only=offline()))
    except Exception as exc:  # hub errors come as several unrelated types (HTTP, OSError, ValueError)
        if _is_gated(exc):
            raise GatedModelError(model_id, GATED_HINTS.get(model_id)) from None
        first_line = (str(exc).splitlines() or [""])[0]
        where = f"{offline_reason()} and it is not in the local hub cache" if offline() else "the hub could not provide it"
        raise ModelNotFoundError(model_id, f"{where} ({type(exc).__name__}: {first_line})") from None


def _is_gated(exc: BaseException) -> bool:
    """A gated-repository refusal (no token, or licence not accepted), possibly wrapped by diffusers."""
    try:
        from huggingface_hub.errors import GatedRepoError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import GatedRepoError
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, GatedRepoError) or "gated repo" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def detect_family(model_path: Path) -> str:
    """sd1 / sd2 / sdxl (from the UNet config) or flux1 / flux2 / sd3 / qwen-image (from the pipeline class),
    without loading weights. A folder of another kind of pipeline is an :class:`UnknownFamilyError`."""
    index = json.loads((Path(model_path) / "model_index.json").read_text())
    class_name = index.get("_class_name", "")
    if class_name in FLOW_PIPELINES:
        return FLOW_PIPELINES[class_name]
    unet_config_path = Path(model_path) / "unet" / "config.json"
    if "unet" not in index and not unet_config_path.exists():
        known = ", ".join(f"{FAMILY_NAMES[f]} ({f})" for f in FAMILIES)
        raise UnknownFamilyError(
            f"{model_path}: a {class_name or 'pipeline of unknown class'} folder is not a base model family likeness "
            f"supports (it supports {known}); pass a folder or hub id of one of those, e.g. "
            f"stable-diffusion-v1-5/stable-diffusion-v1-5 or black-forest-labs/FLUX.1-dev"
        )
    unet = json.loads(unet_config_path.read_text()) if unet_config_path.exists() else {}
    if "XL" in index.get("_class_name", "") or unet.get("addition_embed_type") == "text_time" or "text_encoder_2" in index:
        return "sdxl"
    if unet.get("cross_attention_dim") == 1024:  # OpenCLIP ViT-H text encoder
        return "sd2"
    return "sd1"


def model_revision(model_id: str, model_path: Path) -> str:
    """An identifier of the exact weights: hub commit when known, else a hash of every config file."""
    if is_tiny(model_id):
        return f"tiny-{TINY_VERSION}"
    if model_path.parent.name == "snapshots":
        return model_path.name
    digest = hashlib.sha256()
    for config in sorted(model_path.rglob("*.json")):
        digest.update(str(config.relative_to(model_path)).encode())
        digest.update(config.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def base_model_info(model_id: str | Path, revision: str | None = None) -> BaseModelInfo:
    path = resolve_model_path(model_id, revision)
    return BaseModelInfo(str(model_id), detect_family(path), model_revision(str(model_id), path))


def load_pipeline(
    model_id: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    expect_family: str | None = None,
    pipeline_class=None,
    quantize: str | None = None,
    plan=None,
):
    """Load a text-to-image pipeline and put it on ``plan``'s device in its dtype.

    ``plan`` is a :class:`likeness.models.runtime.RuntimePlan` (its offload and VAE slicing/tiling apply too);
    without one, ``device`` / ``dtype`` (``None``: automatic) are resolved into a plan on this machine.

    ``model_id`` is a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``), a local folder, or a
    tiny id (``likeness/tiny-sd``). ``expect_family`` makes the call fail before loading weights when
    the model is of another family. The returned pipeline carries ``likeness_info`` (a
    :class:`BaseModelInfo`). ``pipeline_class`` loads the folder's components into another pipeline of the same
    family (e.g. ``FluxKontextPipeline`` from a FLUX.1 folder); ``quantize`` (none, int8, nf4, fp8) quantizes the
    denoiser's weights (see :mod:`likeness.models.quantization`; recorded as ``pipe.likeness_quantization``).
    """
    from diffusers import DiffusionPipeline

    from likeness.models.families import qwen_vl_processor
    from likeness.models.quantization import quantization_config

    path = resolve_model_path(model_id, revision)
    info = BaseModelInfo(str(model_id), detect_family(path), model_revision(str(model_id), path))
    if expect_family is not None and info.family != expect_family:
        raise FamilyMismatchError(
            f"base model {model_id!r} is {info.family}, but this artifact was made for {expect_family} (a "
            f"{FAMILY_NAMES.get(expect_family, expect_family)} artifact cannot run on "
            f"{FAMILY_NAMES.get(info.family, info.family)}); use a {expect_family} base model (or re-run "
            f"personalization on {model_id!r})"
        )
    from likeness.models.runtime import as_plan

    plan = as_plan(plan, device=device, dtype=dtype)
    plan.apply()
    # No safety checker: it would blank images silently, which corrupts any evaluation of them.
    extra = {"safety_checker": None, "requires_safety_checker": False} if info.family in ("sd1", "sd2") else {}
    if info.family == "qwen-image" and (path / "processor").is_dir():
        processor = qwen_vl_processor(path / "processor")
        if processor is not None:
            extra["processor"] = processor
    quant, quant_record = quantization_config(quantize, plan.torch_device, info.family, model_id=str(model_id),
                                              dtype=plan.torch_dtype)
    if quant is not None:
        extra["quantization_config"] = quant
    pipe = (pipeline_class or DiffusionPipeline).from_pretrained(path, dtype=plan.torch_dtype, **extra)
    place_pipeline(pipe, plan)
    pipe.set_progress_bar_config(disable=True)
    pipe.likeness_info = info
    pipe.likeness_plan = plan
    pipe.likeness_quantization = quant_record
    return pipe


def place_pipeline(pipe, plan) -> None:
    """Put ``pipe`` where ``plan`` says: on its device, or CPU-offloaded to it (``model``: whole models move
    in turn; ``sequential``: layer by layer, least memory, slowest), with VAE slicing / tiling if asked."""
    if plan.offload == "model":
        pipe.enable_model_cpu_offload(device=plan.device)
    elif plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=plan.device)
    else:
        pipe.to(plan.torch_device)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if plan.vae_slicing and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()
        if plan.vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
