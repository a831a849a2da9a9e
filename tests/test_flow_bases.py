"""FLUX.1, FLUX.2 [klein], SD3.5 and Qwen-Image bases (tiny): family detection and bad input, DreamBooth-LoRA with
the flow-matching loss reproduced in plain diffusers, the reference-image editors through bench and report,
quantized generation on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from likeness.methods import load_artifact, personalize
from likeness.models.loading import FamilyMismatchError, detect_family

pytestmark = pytest.mark.usefixtures("one_thread")

FLOW_TINY = {"likeness/tiny-flux": "flux1", "likeness/tiny-flux2-klein": "flux2", "likeness/tiny-sd3": "sd3",
             "likeness/tiny-qwen-image": "qwen-image", "likeness/tiny-qwen-image-edit": "qwen-image"}


def test_families_are_detected_and_an_unknown_folder_is_refused(tiny_models, tmp_path):
    from likeness.models.families import UnknownFamilyError

    for model_id, family in FLOW_TINY.items():
        assert detect_family(tiny_models[model_id]) == family
    other = tmp_path / "cascade"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableCascadeDecoderPipeline", "decoder": ["x", "y"]}))
    with pytest.raises(UnknownFamilyError, match="StableCascadeDecoderPipeline.*FLUX.1 \\(flux1\\)"):
        detect_family(other)


def test_gated_model_says_to_accept_the_licence_and_log_in(tiny_models, monkeypatch):
    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import GatedRepoError

    from likeness.models.loading import GatedModelError, resolve_model_path

    def refuse(*args, **kwargs):  # what huggingface_hub raises for a gated repository without an accepted licence
        import httpx

        url = "https://huggingface.co/api/models/black-forest-labs/FLUX.1-dev"
        raise GatedRepoError("401 Client Error. Cannot access gated repo for url " + url,
                             response=httpx.Response(401, request=httpx.Request("GET", url)))

    monkeypatch.setattr(DiffusionPipeline, "download", refuse)
    with pytest.raises(GatedModelError, match="FLUX.1-dev.*FLUX.1 \\[dev\\] Non-Commercial License.*accept its licence.*hf auth login"):
        resolve_model_path("black-forest-labs/FLUX.1-dev")


# -- DreamBooth-LoRA on the flow-matching bases ----------------------------------------------------------------

LORA_CASES = {  # base -> options (text-encoder LoRA where the family has a CLIP encoder; several weighting schemes)
    "likeness/tiny-flux": {"train_text_encoder": True},
    "likeness/tiny-sd3": {"train_text_encoder": True, "weighting_scheme": "logit_normal"},
    "likeness/tiny-flux2-klein": {"weighting_scheme": "sigma_sqrt"},
    "likeness/tiny-qwen-image": {"weighting_scheme": "cosmap"},
}


@pytest.fixture(scope="module")
def flow_loras(tiny_models, tmp_path_factory, astronaut_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU
    try:
        return {base: personalize("dreambooth-lora", {"astro": [astronaut_path]}, tmp_path_factory.mktemp("lora") / "a",
                                  base, max_steps=10, learning_rate=2e-2, resolution=32, progress=False, **options)
                for base, options in LORA_CASES.items()}
    finally:
        torch.set_num_threads(previous)


def _fixed_loss(pipe, astronaut_path, weighting):
    """The flow-matching loss on fixed (view, noise, sigma) draws: comparable with and without the LoRA."""
    from likeness.methods.baselines.flow_matching import flow_matching_loss
    from likeness.methods.preparation import Augmentation, photo_batches, prepare_identities
    from likeness.methods.training import step_generator

    prepared, _ = prepare_identities([("astro", [astronaut_path])], size=32, framing="upper_body")
    make_batch = photo_batches(prepared, {"astro": "sks person"}, batch_size=1, aug=Augmentation())
    with torch.no_grad():
        return float(np.mean([flow_matching_loss(pipe, None, make_batch(0, 0, np.random.default_rng(i)),
                                                 step_generator(7, i, 0, 0), weighting_scheme=weighting).item()
                              for i in range(4)]))


def _clip(family):
    """The CLIP text encoders that may hold a LoRA (FLUX.1: one, SD3.5: two)."""
    return {"flux1": ["text_encoder"], "sd3": ["text_encoder", "text_encoder_2"]}.get(family, [])


def _plain_call(pipe, family, prompt, seed):
    guidance = {"true_cfg_scale": 1.0} if family == "qwen-image" else {"guidance_scale": 1.0}
    image = pipe(prompt=prompt, num_inference_steps=2, height=32, width=32, generator=torch.Generator("cpu").manual_seed(seed),
                 **guidance).images[0]
    return np.asarray(image, dtype=int)


@pytest.mark.parametrize("base", list(LORA_CASES))
def test_lora_lowers_the_loss_and_reproduces_in_plain_diffusers(tiny_models, flow_loras, astronaut_path, base):
    from diffusers import DiffusionPipeline

    artifact = flow_loras[base]
    manifest = json.loads((artifact / "likeness.json").read_text())
    family = manifest["base_model"]["family"]
    weighting = LORA_CASES[base].get("weighting_scheme", "none")
    plain = DiffusionPipeline.from_pretrained(tiny_models[base])
    plain.set_progress_bar_config(disable=True)
    plain.likeness_info = type("Info", (), {"family": family})()
    before = _fixed_loss(plain, astronaut_path, weighting)
    without = _plain_call(plain, family, "sks person on a beach", 3)
    plain.load_lora_weights(str(artifact))  # unfused, as a plain user would
    assert _fixed_loss(plain, astronaut_path, weighting) < before
    unfused = _plain_call(plain, family, "sks person on a beach", 3)
    plain.fuse_lora(components=["transformer", "text_encoder", "text_encoder_2"][:1 + len(_clip(family))])
    plain.unload_lora_weights()
    fused = _plain_call(plain, family, "sks person on a beach", 3)

    ours = load_artifact(artifact)
    assert ours.prompt("{} on a beach") == "sks person on a beach"
    mine = np.asarray(ours.generate(["{} on a beach"], [3], num_inference_steps=2, guidance_scale=1.0, height=32,
                                    width=32)[0], dtype=int)
    np.testing.assert_array_equal(mine, fused)  # the same computation: load_lora_weights + fuse_lora
    # Fused vs unfused products round differently on different CPUs: at most a few levels.
    assert np.abs(mine - unfused).max() <= 3
    assert np.abs(unfused - without).max() > 3  # and the LoRA does change the image
    if LORA_CASES[base].get("train_text_encoder"):
        from safetensors.torch import load_file

        keys = load_file(str(artifact / "pytorch_lora_weights.safetensors"))
        assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("transformer.") for k in keys)


def test_flux1_lora_on_flux2_is_refused_by_name(flow_loras):
    with pytest.raises(FamilyMismatchError, match="is flux2, but this artifact was made for flux1 \\(a FLUX.1 artifact "
                                                  "cannot run on FLUX.2\\)"):
        load_artifact(flow_loras["likeness/tiny-flux"], base_model="likeness/tiny-flux2-klein")


def test_text_encoder_lora_and_weighting_are_refused_where_they_do_not_apply(tiny_models, astronaut_path, tmp_path):
    with pytest.raises(ValueError, match="Qwen-Image has no CLIP text encoder"):
        personalize("dreambooth-lora", {"a": [astronaut_path]}, tmp_path / "q", "likeness/tiny-qwen-image",
                    max_steps=1, resolution=32, train_text_encoder=True)
    with pytest.raises(ValueError, match="weighting_scheme applies to flow-matching bases"):
        personalize("dreambooth-lora", {"a": [astronaut_path]}, tmp_path / "s", "likeness/tiny-sd", max_steps=1,
                    weighting_scheme="cosmap")


# -- quantization -------------------------------------------------------------------------------------------------


def test_quantized_generation_on_cpu_and_unsupported_choices(flow_loras, tmp_path):
    pytest.importorskip("optimum.quanto", reason="optimum-quanto is not installed (pip install optimum-quanto)")
    from likeness.data.prompts import Prompt
    from likeness.methods.base import write_images
    from likeness.models.quantization import QuantizationError

    artifact = flow_loras["likeness/tiny-flux"]
    ours = load_artifact(artifact, quantize="int8")
    assert ours.pipe.likeness_quantization == {"quantize": "int8", "backend": "quanto", "weights": "int8",
                                               "components": ["transformer"]}
    assert "QLinear" in type(ours.pipe.transformer.transformer_blocks[0].attn.to_q.base_layer).__name__
    written = write_images(ours, [Prompt(prompt_id="u0", prompts="{} on a beach", source="test")], [0], tmp_path,
                           progress=False, num_inference_steps=2, height=32, width=32)
    sidecar = json.loads(written[0].with_suffix(".json").read_text())
    assert sidecar["quantization"]["weights"] == "int8"
    with pytest.raises(QuantizationError, match="nf4 needs bitsandbytes on a CUDA GPU.*int8 or fp8"):
        load_artifact(artifact, quantize="nf4", device="cpu")
    with pytest.raises(QuantizationError, match="int8 on CPU needs fp32 compute"):
        load_artifact(artifact, quantize="int8", device="cpu", dtype="bf16")


# -- the reference-image editors as methods ---------------------------------------------------------------------

EDITORS = {"flux-kontext": "likeness/tiny-flux", "flux2-reference": "likeness/tiny-flux2-klein",
           "qwen-image-edit": "likeness/tiny-qwen-image-edit"}


def test_editors_run_through_bench_and_report(tiny_models, tmp_path, monkeypatch):
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus

    from likeness.bench.leaderboard import build_leaderboard, method_folder, run_methods
    from likeness.bench.plan import RunConfig
    from likeness.bench.report import build_report

    # Qwen-Image-Edit-Plus always re-encodes the reference at about 1024x1024 for its VAE (a module constant); on the
    # tiny model that is 40 s of a 1-second test, so the tiny run uses 64x64. Everything else is the real pipeline.
    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", 64 * 64)
    folders = []
    for method, base in EDITORS.items():
        config = RunConfig(method=method, base_model=base, identities="builtin", prompt_limit=1, steps=2, resolution=32,
                           metrics=["ips"], method_options={"reference_size": 64})
        summary = run_methods(config, {method: {}}, tmp_path / "run", progress=False, report=False)[0]
        assert summary.counts == {"done": 1}, summary.describe()
        folder = method_folder(tmp_path / "run", method)
        folders.append(folder)
        page, text = build_report(folder)
        assert page.is_file() and "ips" in text.lower()
        sidecar = json.loads(next((folder / "images").rglob("*.json")).read_text())
        assert sidecar["prompt"].startswith("Make a photo of the person in ")  # the instruction, as the pipeline got it
        assert sidecar["prompt"].endswith("Keep this person's face, facial features and identity exactly the same.")
        artifact = next(p.parent for p in folder.rglob("likeness.json"))
        manifest = json.loads((artifact / "likeness.json").read_text())
        assert manifest["config"]["template"]["version"] == "v1" and manifest["config"]["tuning_free"]
        assert (artifact / f"{next(iter(manifest['identities']))}-reference-0.png").is_file()
    page, text = build_leaderboard(folders, tmp_path / "run")
    assert [line.split()[0] for line in text.splitlines()[1:]] == list(EDITORS)


def test_editor_instruction_and_bad_bases(tiny_models, astronaut_path, tmp_path):
    from likeness.methods.editors.common import instruction

    assert instruction("v1", "the person in this image sleeping on a couch.") == (
        "Make a photo of the person in this image sleeping on a couch. Keep this person's face, facial features and "
        "identity exactly the same.")
    with pytest.raises(ValueError, match="flux-kontext runs on FLUX.1 .* is FLUX.2"):
        personalize("flux-kontext", {"a": [astronaut_path]}, tmp_path / "k", "likeness/tiny-flux2-klein")
    with pytest.raises(ValueError, match="processor.*Qwen-Image-Edit-2509"):
        personalize("qwen-image-edit", {"a": [astronaut_path]}, tmp_path / "q", "likeness/tiny-qwen-image")
    with pytest.raises(ValueError, match="unknown instruction template 'v9'"):
        personalize("flux2-reference", {"a": [astronaut_path]}, tmp_path / "f", "likeness/tiny-flux2-klein", template="v9")
