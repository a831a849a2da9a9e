"""InfiniteYou on the tiny FLUX.1 base: published layout (random weights), identity through InfuseNet,
save/load, scale 0 = plain FLUX, bad input, and the reference code's goldens (tests/golden/infiniteyou)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from likeness.methods import load_artifact, personalize
from likeness.methods.peers.common import CheckpointError, MissingFaceModelError
from likeness.methods.preparation import NoFaceError
from likeness.models.runtime import resolve_plan
from likeness.testing.infiniteyou_layout import write_published_files
from likeness.testing.tiny_arcface import face_image
from likeness.testing.weights_folder import hub_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = "likeness/tiny-flux"
SIZE = dict(height=32, width=32, num_inference_steps=3)
GOLDEN = Path(__file__).parent / "golden" / "infiniteyou"


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two 'people' the tiny detector finds (the same bright face on a dark and on a light grey background, so the
    tiny recogniser's unit embeddings differ: cosine about 0.56) and a photo without a face."""
    folder = tmp_path_factory.mktemp("infu-faces")
    bob = face_image(1)
    background = (bob < 255).all(-1, keepdims=True)
    bob = np.where(background, (120 + 0.3 * bob).clip(0, 230), bob).astype(np.uint8)
    paths = {"ann": folder / "ann.png", "bob": folder / "bob.png", "wall": folder / "wall.png"}
    Image.fromarray(face_image(0)).save(paths["ann"])
    Image.fromarray(bob).save(paths["bob"])
    Image.new("RGB", (320, 320), (40, 40, 40)).save(paths["wall"])
    return paths


@pytest.fixture(scope="module")
def weights(tiny_models, tmp_path_factory):
    return write_published_files(tmp_path_factory.mktemp("infu-hub"), BASE, variant="sim_stage1")


def _people(photos):
    return {"ann": [photos["ann"]], "bob": [photos["bob"]]}


def test_identity_changes_the_image_reproduces_and_scale_zero_is_plain_flux(tiny_models, weights, arcface_dir, photos, tmp_path):
    from diffusers import DiffusionPipeline

    from likeness.data.images import image_to_array, load_image
    from likeness.faces import get_backend

    art = personalize("infiniteyou", _people(photos), tmp_path / "a", BASE, face_model_dir=str(arcface_dir), **weights)
    manifest = json.loads((art / "likeness.json").read_text())
    roles = [r["role"] for r in manifest["config"]["weights"]]
    assert roles == ["infiniteyou ID projection", "infiniteyou InfuseNet config"] + ["infiniteyou InfuseNet weights"] * 2
    assert manifest["sampling"] == {"num_inference_steps": 30, "guidance_scale": 3.5}  # the published test.py defaults
    # As published: the recogniser sees the aligned crop in BGR order, and the embedding is L2-normalised.
    backend = get_backend("arcface", model_dir=str(arcface_dir))
    array = image_to_array(load_image(photos["ann"]))
    face = max(backend.detect(array), key=lambda f: f.area)
    bgr = backend.embed(np.ascontiguousarray(array[..., ::-1]), [face])[0].raw_embedding
    stored = load_file(str(art / "embeddings.safetensors"))["ann.id_embedding"].flatten().numpy()
    np.testing.assert_allclose(stored, bgr / np.linalg.norm(bgr), rtol=1e-5, atol=1e-6)
    rgb = backend.embed(array, [face])[0].embedding
    assert np.abs(stored - rgb).max() > 1e-3  # the channel order matters

    ours = load_artifact(art)
    ann = _pixels(ours.generate(["a photo of {}"], [4], identity="ann", **SIZE)[0])
    # The person changes the result: compared on the latents, where the tiny random InfuseNet's identity effect
    # (6e-3 here) stands far above any rounding (1e-6) but may stay under one 8-bit level once decoded.
    latents = {name: ours.call_pipe(["a photo of a person"], identity=name, output_type="latent", guidance_scale=3.5,
                                    generator=[torch.Generator("cpu").manual_seed(4)], **SIZE).images
               for name in ("ann", "bob")}
    assert (latents["ann"] - latents["bob"]).abs().max() > 1e-3
    # keypoints=true: InfuseNet's control image is the photo's keypoints instead of black.
    drawn = personalize("infiniteyou", _people(photos), tmp_path / "kps", BASE, face_model_dir=str(arcface_dir),
                        keypoints=True, **weights)
    with_points = load_artifact(drawn).call_pipe(["a photo of a person"], identity="ann", output_type="latent",
                                                 guidance_scale=3.5, generator=[torch.Generator("cpu").manual_seed(4)],
                                                 **SIZE).images
    assert (with_points - latents["ann"]).abs().max() > 1e-3
    np.testing.assert_array_equal(ann, _pixels(load_artifact(art).generate(["a photo of {}"], [4], identity="ann", **SIZE)[0]))
    # Model CPU offload (simulated on the CPU: the hooks move nothing, but InfuseNet must be hooked in and the ID
    # tokens found where the hooks put the weights): the same pixels.
    plan = resolve_plan("cpu", "float32", "no")
    offloaded = load_artifact(art, plan=dataclasses.replace(plan, offload="model"))
    assert getattr(offloaded.pipe.controlnet, "_hf_hook", None) is not None
    np.testing.assert_array_equal(ann, _pixels(offloaded.generate(["a photo of {}"], [4], identity="ann", **SIZE)[0]))

    plain = DiffusionPipeline.from_pretrained(tiny_models[BASE])
    plain.set_progress_bar_config(disable=True)
    flux = _pixels(plain("a photo of a person", guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(4), **SIZE).images[0])
    assert np.abs(ann - flux).max() > 10
    # Scale 0: every residual is exactly 0, so FLUX's blocks add exact zeros; the initial noise is drawn as plain
    # FLUX draws it (before the control image is encoded), so the pixels are plain FLUX's, bit for bit.
    off = personalize("infiniteyou", _people(photos), tmp_path / "off", BASE, face_model_dir=str(arcface_dir),
                      conditioning_scale=0.0, **weights)
    np.testing.assert_array_equal(_pixels(load_artifact(off).generate(["a photo of {}"], [4], identity="bob", **SIZE)[0]), flux)


def _refused(tmp_path, match, photo, error=CheckpointError, base=BASE, **options):
    with pytest.raises(error, match=match):
        personalize("infiniteyou", {"ann": [photo]}, tmp_path / "refused", base, **options)
    assert not (tmp_path / "refused" / "likeness.json").exists()


def test_bad_input_is_named(tiny_models, weights, arcface_dir, photos, tmp_path):
    ann, face_dir = photos["ann"], str(arcface_dir)
    variant_dir = Path(weights["weights"]) / "infu_flux_v1.0" / "sim_stage1"
    for base, family in (("likeness/tiny-flux2-klein", "FLUX.2"), ("likeness/tiny-sdxl", "SDXL")):
        _refused(tmp_path, f"infiniteyou: InfiniteYou .* made for FLUX.1 \\[dev\\]; '{base}' is {family}. Use a FLUX.1 base", ann,
                 ValueError, base=base, face_model_dir=face_dir, **weights)
    _refused(tmp_path, "needs an ArcFace model folder", ann, MissingFaceModelError, **weights)
    _refused(tmp_path, "nowhere: ArcFace model folder does not exist", ann, MissingFaceModelError,
             face_model_dir=str(tmp_path / "nowhere"), **weights)
    _refused(tmp_path, "wall.png: no face found", photos["wall"], NoFaceError, face_model_dir=face_dir, **weights)
    _refused(tmp_path, "variant must be one of aes_stage2, sim_stage1", ann, ValueError, face_model_dir=face_dir,
             weights=weights["weights"], variant="stage3")

    # A variant folder without its projection file: the file, where it is published, and the fix.
    lonely = tmp_path / "sim_stage1"
    shutil.copytree(variant_dir / "InfuseNetModel", lonely / "InfuseNetModel")
    _refused(tmp_path, r"sim_stage1 folder has no image_proj_model\.bin .*ByteDance/InfiniteYou "
             r"infu_flux_v1\.0/sim_stage1/image_proj_model\.bin\); download it into .*, or pass projection=FILE",
             ann, FileNotFoundError, face_model_dir=face_dir, weights=str(lonely), variant="sim_stage1")
    _refused(tmp_path, "holds the sim_stage1 variant, but variant='aes_stage2'", ann, ValueError, face_model_dir=face_dir,
             weights=str(lonely), variant="aes_stage2")
    # The snapshot layout with only the other variant.
    _refused(tmp_path, "expected infu_flux_v1.0/aes_stage2/.*it holds sim_stage1 only: pass variant=sim_stage1", ann,
             FileNotFoundError, face_model_dir=face_dir,
             weights=weights["weights"], variant="aes_stage2")

    # A missing shard, an InfuseNet for another base, a projection of another width: named before any loading.
    (lonely / "InfuseNetModel" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    _refused(tmp_path, "index names diffusion_pytorch_model-00002-of-00002.safetensors, not in the folder", ann,
             face_model_dir=face_dir, infusenet=str(lonely / "InfuseNetModel"), **weights)
    shutil.copy(variant_dir / "InfuseNetModel" / "diffusion_pytorch_model-00002-of-00002.safetensors", lonely / "InfuseNetModel")
    shard = lonely / "InfuseNetModel" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    state = load_file(str(shard))
    dropped = sorted(state)[0]
    state.pop(dropped)
    save_file(state, str(shard))
    _refused(tmp_path, f"missing keys: {dropped}", ann, face_model_dir=face_dir, infusenet=str(lonely / "InfuseNetModel"),
             **weights)
    other = tmp_path / "other"
    shutil.copytree(variant_dir, other)
    config = json.loads((other / "InfuseNetModel" / "config.json").read_text())
    (other / "InfuseNetModel" / "config.json").write_text(json.dumps({**config, "joint_attention_dim": 48}))
    _refused(tmp_path, "InfuseNet made for another base model; joint_attention_dim: InfuseNet 48, transformer 32", ann,
             face_model_dir=face_dir, weights=str(other), variant="sim_stage1")
    wide = write_published_files(tmp_path / "wide", BASE, variant="sim_stage1", face_dim=24)
    _refused(tmp_path, "expects a 24-d face embedding, but the ArcFace model .* gives 16-d", ann, face_model_dir=face_dir, **wide)
    state = torch.load(str(variant_dir / "image_proj_model.bin"), weights_only=True)
    state["image_proj"].pop("norm_out.bias")
    torch.save(state, str(tmp_path / "broken.bin"))
    _refused(tmp_path, "missing keys: image_proj.norm_out.bias", ann, face_model_dir=face_dir,
             projection=str(tmp_path / "broken.bin"), **weights)


# -- the reference code's goldens (tests/golden/make_infiniteyou_goldens.py) --------------------------------


def _close(ours: torch.Tensor, golden: torch.Tensor, what: str, rel: float = 1e-5) -> None:
    """fp32, the same weights and inputs, diffusers 0.42 here and 0.31 in the reference run: only the order of
    floating-point sums may differ, so within ``rel`` of the golden's largest magnitude."""
    bound = rel * float(golden.abs().max())
    error = float((ours.detach().float() - golden).abs().max())
    assert ours.shape == golden.shape and error <= bound, f"{what}: max error {error:.3g} > {bound:.3g}"


def test_matches_the_reference_code_goldens(tmp_path):
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from likeness.methods.peers.infiniteyou import InfiniteYou, _infusenet_class, check_infusenet, load_projection, run_infusenet

    g = load_file(str(GOLDEN / "goldens.safetensors"))
    settings = json.loads((GOLDEN / "goldens.json").read_text())["settings"]
    # The weights the reference code wrote, found and checked through likeness' own path (the hub snapshot layout).
    method = InfiniteYou()
    projection_file, folder = method.locate({**method.defaults, "weights": str(GOLDEN), "variant": "sim_stage1"})
    base = tmp_path / "base"  # a base folder holding the reference run's FLUX transformer
    shutil.copytree(GOLDEN / "transformer", base / "transformer")
    (base / "model_index.json").write_text("{}")
    assert len(check_infusenet(folder, str(base))) == 2  # two shards, as published

    projection = load_projection(projection_file)
    with torch.no_grad():
        tokens = projection(g["embedding"].reshape(1, 1, -1))
    _close(tokens, g["id_tokens"], "ID tokens")

    # InfuseNet called as diffusers' FluxControlNetPipeline calls it (the prompt as context, FLUX's guidance 3.5):
    # the identity tokens, zero text positions and guidance 1.0 replace them, as the reference pipeline passes them.
    infusenet = _infusenet_class().from_pretrained(str(folder)).eval()
    infusenet.identity_tokens = tokens
    timestep = torch.tensor([settings["timestep"] / 1000])
    text_ids = torch.zeros(g["prompt_embeds"].shape[1], 3)
    with torch.no_grad():
        blocks, singles = infusenet(hidden_states=g["latents"], controlnet_cond=g["control_latents"],
                                    conditioning_scale=settings["residual_scale"], timestep=timestep,
                                    guidance=torch.tensor([3.5]), pooled_projections=g["pooled"],
                                    encoder_hidden_states=g["prompt_embeds"], txt_ids=text_ids, img_ids=g["img_ids"],
                                    return_dict=False)
    assert len(blocks) == 2 and len(singles) == 2
    for i, sample in enumerate(blocks):
        _close(sample, g[f"block_sample.{i}"], f"double-stream residual {i}")
    for i, sample in enumerate(singles):
        _close(sample, g[f"single_block_sample.{i}"], f"single-stream residual {i}")
    transformer = FluxTransformer2DModel.from_pretrained(str(GOLDEN / "transformer")).eval()
    with torch.no_grad():
        noise = transformer(hidden_states=g["latents"], timestep=timestep, guidance=torch.tensor([3.5]),
                            pooled_projections=g["pooled"], encoder_hidden_states=g["prompt_embeds"],
                            controlnet_block_samples=blocks, controlnet_single_block_samples=singles, txt_ids=text_ids,
                            img_ids=g["img_ids"], return_dict=False)[0]
    _close(noise, g["noise_pred"], "noise prediction with the residuals")

    # Two steps of the whole generation path (apply + run_infusenet) against the reference pipeline's __call__.
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(str(GOLDEN / "scheduler")),
                        vae=AutoencoderKL.from_pretrained(str(GOLDEN / "vae")), text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.likeness_info = None
    options = {**method.defaults, "conditioning_scale": settings["pipeline_scale"],
               "guidance_end": settings["pipeline_guidance_end"]}
    manifest = SimpleNamespace(config={"options": options, "weights": [
        {"role": "infiniteyou ID projection", "path": str(projection_file)},
        {"role": "infiniteyou InfuseNet config", "path": str(folder / "config.json")}]})
    infused = method.apply(pipe, None, manifest)
    side = settings["side"]
    out = run_infusenet(infused, options, {"id_embedding": g["embedding"].reshape(1, 1, -1)}, 1,
                        prompt_embeds=g["prompt_embeds"], pooled_prompt_embeds=g["pooled"], height=side, width=side,
                        num_inference_steps=settings["pipeline_steps"], guidance_scale=3.5, latents=g["latents"].clone(),
                        generator=torch.Generator("cpu").manual_seed(settings["seed"]), output_type="latent").images
    _close(out, g["pipeline_latents"], "latents after two steps", rel=1e-4)


def test_the_default_hub_id_resolves_from_the_local_hub_cache(tiny_models, arcface_dir, photos, tmp_path, monkeypatch):
    """No ``weights``: ``ByteDance/InfiniteYou`` through huggingface_hub (offline: its local cache), file by file in
    the published subfolders; a variant the cache lacks is named with its hub path."""
    import huggingface_hub.constants

    from likeness.models.pretrained import ModelUnavailableError

    root = hub_snapshot(tmp_path / "hub", "ByteDance/InfiniteYou")
    write_published_files(root, BASE, variant="aes_stage2")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    art = personalize("infiniteyou", {"ann": [photos["ann"]]}, tmp_path / "a", BASE, face_model_dir=str(arcface_dir))
    paths = [Path(r["path"]) for r in json.loads((art / "likeness.json").read_text())["config"]["weights"]]
    snapshot = (root / "infu_flux_v1.0" / "aes_stage2").resolve()
    assert [p.relative_to(snapshot).as_posix() for p in paths] == [
        "image_proj_model.bin", "InfuseNetModel/config.json",
        "InfuseNetModel/diffusion_pytorch_model-00001-of-00002.safetensors",
        "InfuseNetModel/diffusion_pytorch_model-00002-of-00002.safetensors"]
    load_artifact(art)  # the recorded files check out
    # What the method declares it loads (the demo's weights discovery) is exactly this layout.
    from likeness.methods import METHODS

    declared = [f for f in METHODS.get("infiniteyou").published_files if dict(f.when)["variant"] == "aes_stage2"]
    assert all(f.hub == "ByteDance/InfiniteYou" and f.option == "weights" for f in declared)
    assert sorted((root / f.subfolder / f.filename).resolve() for f in declared) == sorted(
        [*paths, snapshot / "InfuseNetModel" / "diffusion_pytorch_model.safetensors.index.json"])
    # A repository with InfuseNet in one file (not the published shards) works too.
    infusenet = snapshot / "InfuseNetModel"
    shards = sorted(infusenet.glob("*-of-00002.safetensors"))
    merged = {k: v for shard in shards for k, v in load_file(str(shard)).items()}
    for path in [*shards, infusenet / "diffusion_pytorch_model.safetensors.index.json"]:
        path.unlink()
    save_file(merged, str(infusenet / "diffusion_pytorch_model.safetensors"))
    single = personalize("infiniteyou", {"ann": [photos["ann"]]}, tmp_path / "c", BASE, face_model_dir=str(arcface_dir))
    assert [Path(r["path"]).name for r in json.loads((single / "likeness.json").read_text())["config"]["weights"]][-1] == \
        "diffusion_pytorch_model.safetensors"
    with pytest.raises(ModelUnavailableError, match="infu_flux_v1.0/sim_stage1/image_proj_model.bin"):
        personalize("infiniteyou", {"ann": [photos["ann"]]}, tmp_path / "b", BASE, face_model_dir=str(arcface_dir),
                    variant="sim_stage1")
