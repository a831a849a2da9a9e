"""Issue 20, "show it": generation of the methods test_runtime.py does not cover, and the metric models, in bfloat16
and float16 on the CPU, each within a stated bound of float32. A dtype the CPU cannot run must fail with a clear
error, never switch silently; these all run, so each test also checks the weights really are in the chosen dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from likeness.methods import load_artifact, personalize
from likeness.models.runtime import resolve_plan

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a photo of {}"
HALF = ("bfloat16", "float16")


def _images(artifact, denoiser: str, **call) -> dict:
    """{dtype: pixels (float64)} of one image per dtype, the artifact loaded on a CPU plan of that dtype."""
    out = {}
    for dtype in ("float32", *HALF):
        ours = load_artifact(artifact, plan=resolve_plan("cpu", dtype, "no"))
        assert getattr(ours.pipe, denoiser).dtype == getattr(torch, dtype)  # no silent switch back to float32
        out[dtype] = np.asarray(ours.generate([PROMPT], [3], **call)[0], dtype=np.float64)
    return out


def _within(images: dict, mean: float, peak: float) -> dict:
    measured = {}
    for dtype in HALF:
        difference = np.abs(images[dtype] - images["float32"])
        measured[dtype] = (round(difference.mean(), 3), difference.max())
    print(measured)
    for dtype, (m, p) in measured.items():
        assert m < mean and p <= peak, (dtype, measured)
    return measured


# -- generation ---------------------------------------------------------------------------------------


def test_ip_adapter_generates_in_half_precision(tiny_models, astronaut_path, tmp_path):
    from likeness.methods.peer_layouts import clip_vision_encoder, ip_adapter_state, save_published
    from likeness.methods.peers import empty_unet

    clip_vision_encoder(tmp_path / "h94" / "models" / "image_encoder")
    weights = save_published(ip_adapter_state(empty_unet("likeness/tiny-sd"), "plain", embed=32),
                             tmp_path / "h94" / "models" / "ip-adapter_sd15.safetensors")
    art = personalize("ip-adapter", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd", variant="plain",
                      weights=str(weights), scale=0.8)
    _within(_images(art, "unet", num_inference_steps=3), 3, 40)


def test_flux_lora_and_kontext_generate_in_half_precision(tiny_models, astronaut_path, tmp_path):
    art = personalize("dreambooth-lora", {"astro": [astronaut_path]}, tmp_path / "lora", "likeness/tiny-flux",
                      max_steps=2, resolution=32, progress=False)
    _within(_images(art, "transformer", num_inference_steps=2, guidance_scale=1.0, height=32, width=32), 3, 40)
    art = personalize("flux-kontext", {"astro": [astronaut_path]}, tmp_path / "kontext", "likeness/tiny-flux",
                      reference_size=64)
    _within(_images(art, "transformer", num_inference_steps=2, height=32, width=32), 3, 40)
