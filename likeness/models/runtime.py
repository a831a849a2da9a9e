"""One runtime plan per process: where models run and in which precision.

Everything that loads or trains a model takes a :class:`RuntimePlan`; nothing else guesses a device or a
dtype. The plan is resolved once by :func:`resolve_plan`, a pure function of

- the user's choices (``--device``, ``--dtype``, ``--mixed-precision``, ``--offload``, TF32),
- the launcher's environment (``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, set by ``accelerate launch``,
  ``torchrun`` and ``likeness bench --processes``), and
- a described :class:`Hardware` profile (CUDA devices with their compute capability, Apple MPS, the CPU),

so tests check it on any described machine without touching CUDA. :func:`detect_hardware` reads the real
machine into that profile; :func:`current_plan` combines the two with ``os.environ``.

Defaults: float32 on the CPU; on CUDA bfloat16 where the card has it natively (compute capability >= 8.0,
Ampere and later), else float16 (a V100 or T4 would otherwise get slow emulated bf16:
``torch.cuda.is_bf16_supported()`` counts emulation, so it is not used). Training's mixed precision follows the
weights' dtype unless chosen. TF32 is off unless asked for: it changes float32 matmul results from one GPU
generation to the next, so numbers would drift between cards. A choice the machine cannot honour (``cuda:3``
on one GPU, bf16 on a V100) raises :class:`PlanError` naming the option and what the machine has; nothing
is switched silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

DTYPES = ("auto", "float32", "float16", "bfloat16")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
OFFLOADS = ("none", "model", "sequential")

# Spellings accepted for a dtype; the plan always holds the long name.
_DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "float": "float32",
                "fp16": "float16", "float16": "float16", "half": "float16",
                "bf16": "bfloat16", "bfloat16": "bfloat16"}
_MIXED_OF_DTYPE = {"float32": "no", "float16": "fp16", "bfloat16": "bf16"}
_NATIVE_BF16 = (8, 0)  # compute capability from which bfloat16 runs in hardware (Ampere)


class PlanError(ValueError):
    """A runtime choice this machine cannot honour. The CLI prints it and exits with code 2."""


@dataclass(frozen=True)
class CudaDevice:
    name: str
    capability: tuple[int, int]  # (major, minor), e.g. (8, 0) for an A100

    @property
    def native_bf16(self) -> bool:
        return tuple(self.capability) >= _NATIVE_BF16

    def describe(self) -> str:
        return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]})"


@dataclass(frozen=True)
class Hardware:
    """What a machine offers, as far as the plan cares. ``cuda`` lists the devices this process sees
    (after ``CUDA_VISIBLE_DEVICES``), in index order."""

    cuda: tuple[CudaDevice, ...] = ()
    mps: bool = False

    def describe(self) -> str:
        parts = [f"cuda:{i} {d.describe()}" for i, d in enumerate(self.cuda)] or ["no CUDA GPU"]
        if self.mps:
            parts.append("Apple MPS")
        return ", ".join(parts) + ", cpu"


@dataclass(frozen=True)
class RuntimePlan:
    device: str = "cpu"  # "cpu", "cuda:<i>" or "mps"
    dtype: str = "float32"  # weights at inference: float32 | float16 | bfloat16
    mixed_precision: str = "no"  # training: no | fp16 | bf16 (trainable tensors stay float32)
    tf32: bool = False
    offload: str = "none"  # none | model | sequential (diffusers' CPU offload, generation only)
    vae_slicing: bool = False
    vae_tiling: bool = False
    local_rank: int = 0
    world_size: int = 1
    hardware: str = field(default="cpu", compare=False)  # what the chosen device is, for the record

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def training_dtype(self):
        """The dtype of frozen weights while training (float32 when mixed precision is off)."""
        import torch

        return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.mixed_precision]

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def to_dict(self) -> dict:
        return asdict(self)

    def scoring_dict(self) -> dict:
        """The part of the plan that can change a score's numbers (for a metric's protocol)."""
        return {"device": self.device_type, "dtype": self.dtype, "tf32": self.tf32}

    def with_(self, **changes) -> "RuntimePlan":
        from dataclasses import replace

        return replace(self, **changes)

    def apply(self) -> None:
        """Set the process-wide switches the plan decides (TF32), explicitly rather than leaving defaults."""
        import torch

        precision = "tf32" if self.tf32 else "ieee"
        matmul = torch.backends.cuda.matmul
        if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
            matmul.fp32_precision = precision
            torch.backends.cudnn.conv.fp32_precision = precision
        else:  # pragma: no cover - older torch
            matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "")
    try:
        return int(value) if str(value).strip() else default
    except ValueError:
        raise PlanError(f"environment variable {name}={value!r} is not an integer (set by the launcher)") from None


def _dtype_name(dtype) -> str:
    text = str(dtype).replace("torch.", "") if dtype is not None else "auto"
    if text == "auto":
        return text
    if text not in _DTYPE_NAMES:
        raise PlanError(f"--dtype {dtype!r}: unknown dtype; use one of {', '.join(DTYPES)}")
    return _DTYPE_NAMES[text]


def resolve_plan(
    device: str | None = None,
    dtype: str | None = "auto",
    mixed_precision: str | None = "auto",
    *,
    offload: str | None = "none",
    tf32: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    env: Mapping[str, str] | None = None,
    hardware: Hardware | None = None,
) -> RuntimePlan:
    """The plan for these choices on this (described) machine. Pure: ``env`` and ``hardware`` default to an
    empty environment and a CPU-only machine, never to the real ones (see :func:`current_plan`)."""
    env = {} if env is None else env
    hardware = Hardware() if hardware is None else hardware
    local_rank = _int_env(env, "LOCAL_RANK", 0)
    world_size = _int_env(env, "WORLD_SIZE", 1)
    n_gpus = len(hardware.cuda)

    # Device
    choice = str(device).strip().lower() if device not in (None, "") else "auto"
    if choice == "auto":
        choice = "cuda" if n_gpus else ("mps" if hardware.mps else "cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not n_gpus:
            raise PlanError(f"--device {device} asks for a CUDA GPU, but this machine has {hardware.describe()}; "
                            f"use --device cpu" + (" or --device mps" if hardware.mps else ""))
        if choice == "cuda":
            index = local_rank % n_gpus  # several ranks, fewer GPUs: ranks share them round-robin
        else:
            try:
                index = int(choice.split(":", 1)[1])
            except ValueError:
                raise PlanError(f"--device {device!r} is not a device; use cpu, cuda, cuda:<index> or mps") from None
            if not 0 <= index < n_gpus:
                raise PlanError(f"--device {device} does not exist: this machine has {hardware.describe()} "
                                f"(valid: {', '.join(f'cuda:{i}' for i in range(n_gpus))})")
        resolved_device, gpu = f"cuda:{index}", hardware.cuda[index]
        described = gpu.describe()
    elif choice == "mps":
        if not hardware.mps:
            raise PlanError(f"--device mps asks for Apple's GPU, but this machine has {hardware.describe()}")
        resolved_device, gpu, described = "mps", None, "Apple MPS"
    elif choice == "cpu":
        resolved_device, gpu, described = "cpu", None, "cpu"
    else:
        raise PlanError(f"--device {device!r} is not a device; use cpu, cuda, cuda:<index> or mps")

    # Weights dtype
    name = _dtype_name(dtype)
    if name == "auto":
        if gpu is not None:
            name = "bfloat16" if gpu.native_bf16 else "float16"
        else:
            name = "float16" if resolved_device == "mps" else "float32"
    if name == "bfloat16" and gpu is not None and not gpu.native_bf16:
        raise PlanError(f"--dtype bfloat16: {resolved_device} is a {described}, without native bfloat16 "
                        f"(needs compute capability 8.0 or later); use --dtype float16 or float32")

    # Training precision: follows the weights unless chosen; accelerate's launcher variable counts as a choice.
    mixed = str(mixed_precision or "auto").lower()
    if mixed == "auto":
        mixed = env.get("ACCELERATE_MIXED_PRECISION", "").lower() or "auto"
    if mixed == "auto":
        mixed = _MIXED_OF_DTYPE[name]
    if mixed not in MIXED_PRECISIONS[1:]:
        raise PlanError(f"--mixed-precision {mixed_precision!r} is not one of {', '.join(MIXED_PRECISIONS)}")
    if mixed == "bf16" and gpu is not None and not gpu.native_bf16:
        raise PlanError(f"--mixed-precision bf16: {resolved_device} is a {described}, without native bfloat16 "
                        f"(needs compute capability 8.0 or later); use --mixed-precision fp16 or no")

    offload = str(offload or "none").lower()
    if offload not in OFFLOADS:
        raise PlanError(f"--offload {offload!r} is not one of {', '.join(OFFLOADS)}")
    if offload != "none" and gpu is None:
        raise PlanError(f"--offload {offload} moves models between the CPU and a CUDA GPU, but the device is "
                        f"{resolved_device}; use --offload none")
    if tf32 and gpu is None:
        tf32 = False  # TF32 exists only on CUDA; recording it off keeps the record true
    return RuntimePlan(device=resolved_device, dtype=name, mixed_precision=mixed, tf32=bool(tf32), offload=offload,
                       vae_slicing=bool(vae_slicing), vae_tiling=bool(vae_tiling), local_rank=local_rank,
                       world_size=world_size, hardware=described)


def detect_hardware() -> Hardware:
    """The real machine's profile (the only function here that asks torch about the hardware)."""
    import torch

    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append(CudaDevice(torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i))))
    mps = getattr(torch.backends, "mps", None)
    return Hardware(cuda=tuple(devices), mps=bool(mps is not None and mps.is_available()))


def current_plan(device: str | None = None, dtype: str | None = "auto", mixed_precision: str | None = "auto",
                 **choices) -> RuntimePlan:
    """:func:`resolve_plan` on this process's environment and this machine."""
    return resolve_plan(device, dtype, mixed_precision, env=os.environ, hardware=detect_hardware(), **choices)


def as_plan(plan: "RuntimePlan | None" = None, *, device=None, dtype=None) -> RuntimePlan:
    """A plan from what a caller gives: a plan as is, or the older ``device=`` / ``dtype=`` pair resolved on
    this machine (``None`` = automatic)."""
    if plan is not None:
        if device is not None or dtype is not None:
            raise TypeError("give either a plan or device/dtype, not both")
        return plan
    return current_plan(None if device is None else str(device), "auto" if dtype is None else dtype)
