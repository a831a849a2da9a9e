"""Weight quantization of the denoiser through diffusers' own ``PipelineQuantizationConfig``.

``--quantize`` picks a precision; the backend follows from the device:

===========  =====================================  ============================================
choice       CUDA                                   CPU (and Apple MPS)
===========  =====================================  ============================================
``int8``     bitsandbytes 8-bit (``LLM.int8``)      optimum-quanto int8 weights
``nf4``      bitsandbytes 4-bit NF4, bf16 compute   refused: bitsandbytes' NF4 kernels need CUDA
``fp8``      optimum-quanto float8 weights          optimum-quanto float8 weights
===========  =====================================  ============================================

Only the denoiser (UNet / transformer: 12B of FLUX.1's 17B parameters, 4B of FLUX.2 [klein] 4B's 8B) is quantized;
text encoders and the VAE keep the chosen dtype. Activations stay in that dtype too (weight-only quantization).
What was applied is returned as a record that artifacts and protocols store.
"""

from __future__ import annotations

import importlib.util

import torch

QUANTIZE_CHOICES = ("none", "int8", "nf4", "fp8")


class QuantizationError(ValueError):
    """A quantization the device or the installed packages cannot run. The message says what to do."""


def _need(package: str, module: str, choice: str, device: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise QuantizationError(f"--quantize {choice} on {device} needs the {package} package: pip install {package} "
                                f"(or use --quantize none)")


def plan(choice: str | None, device: torch.device | str, dtype: torch.dtype | None = None) -> dict:
    """``{"quantize", "backend", "weights"}`` for ``choice`` on ``device`` (computing in ``dtype``);
    :class:`QuantizationError` when unsupported."""
    choice = (choice or "none").lower()
    if choice not in QUANTIZE_CHOICES:
        raise QuantizationError(f"unknown --quantize {choice!r}; use one of {', '.join(QUANTIZE_CHOICES)}")
    device = torch.device(device)
    if choice == "none":
        return {"quantize": "none"}
    if device.type == "cuda" and choice in ("int8", "nf4"):
        _need("bitsandbytes", "bitsandbytes", choice, "CUDA")
        return {"quantize": choice, "backend": "bitsandbytes", "weights": "int8" if choice == "int8" else "nf4"}
    if choice == "nf4":
        raise QuantizationError(f"--quantize nf4 needs bitsandbytes on a CUDA GPU, and this run is on {device.type}; "
                                f"on {device.type} use --quantize int8 or fp8 (optimum-quanto), or run on a CUDA device")
    _need("optimum-quanto", "optimum.quanto", choice, device.type)
    if device.type == "cpu" and choice == "int8" and dtype == torch.bfloat16:
        # optimum-quanto 0.2.7 sends bf16 activations to torch._weight_int8pack_mm on CPU, which fails on the
        # non-contiguous activations of FLUX.2's blocks; in fp32 it dequantizes per layer instead.
        raise QuantizationError("--quantize int8 on CPU needs fp32 compute (optimum-quanto's bf16 int8 CPU kernel fails on "
                                "these transformers); use the CPU default dtype fp32, or --quantize fp8")
    return {"quantize": choice, "backend": "quanto", "weights": "int8" if choice == "int8" else "float8"}


def quantization_config(choice: str | None, device, family: str, *, model_id: str = "",
                        dtype: torch.dtype | None = None) -> tuple[object | None, dict]:
    """(a ``PipelineQuantizationConfig`` or None, the record of what it does) for the pipeline's denoiser."""
    record = plan(choice, device, dtype)
    if record["quantize"] == "none":
        return None, record
    from diffusers import PipelineQuantizationConfig

    component = "unet" if family in ("sd1", "sd2", "sdxl") else "transformer"
    if record["backend"] == "bitsandbytes":
        from diffusers import BitsAndBytesConfig

        if record["weights"] == "nf4":
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        else:
            config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        from diffusers import QuantoConfig

        config = QuantoConfig(weights_dtype=record["weights"])
    record["components"] = [component]
    return PipelineQuantizationConfig(quant_mapping={component: config}), record
