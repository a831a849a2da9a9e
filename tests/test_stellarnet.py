"""StellarNet on tiny-sdxl: encoder training, tuning-free personalization, artifacts, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from stellarnet_helpers import build_portraits, build_tiny_clip_vision, build_tiny_segformer

from likeness.data.identities import DatasetError
from likeness.methods import get_method, load_artifact
from likeness.methods.stellarnet.method import CONFIG_FILE, ENCODER_FILE, LORA_WEIGHTS, WeightsError
from likeness.methods.training import TrainingConfig, diffusion_loss, masked_mse, step_generator, train
from likeness.models.loading import FamilyMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = dict(max_steps=4, learning_rate=1e-3, segmenter="celebamask", progress=False, exclude=["id-002"])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip_vision(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def portraits(tmp_path_factory, astronaut_path):
    return build_portraits(tmp_path_factory.mktemp("portraits") / "data", astronaut_path)


@pytest.fixture(scope="module")
def weights(tiny_models, clip_dir, portraits, tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return get_method("stellarnet").train_encoder(portraits, tmp_path_factory.mktemp("w") / "weights",
                                                      "likeness/tiny-sdxl", image_encoder=str(clip_dir), **TRAIN)
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def artifact(weights, astronaut_path, tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return get_method("stellarnet").personalize({"astro": [astronaut_path]}, tmp_path_factory.mktemp("a") / "art",
                                                    None, weights=str(weights))
    finally:
        torch.set_num_threads(previous)


def _fixed_loss(session, n=4):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(session.pipe.scheduler.config)
    with torch.no_grad():
        return float(np.mean([diffusion_loss(session.pipe, scheduler, session.make_batch(0, 0, np.random.default_rng(i)),
                                             step_generator(123, i, 0, 0)).item() for i in range(n)]))


def test_masked_mse_ignores_pixels_outside_the_mask():
    # 1 sample, 2 channels, 2x4 latent; the mask is given at 4x8 px (area-resized to the latent grid).
    pred = torch.zeros(1, 2, 2, 4)
    target = torch.zeros(1, 2, 2, 4)
    target[..., 0] = 1.0  # squared error 1 in latent column 0
    target[..., 1] = 2.0  # squared error 4 in latent column 1
    target[..., 2:] = 100.0  # huge error outside the mask
    mask = torch.zeros(1, 1, 4, 8)
    mask[..., :3] = 1.0  # pixel columns 0-2: latent column 0 fully inside, column 1 half inside
    # By hand: per row (1 * 1 + 4 * 0.5) / (1 + 0.5) = 2, the same for both rows and channels.
    assert masked_mse(pred, target, mask).item() == pytest.approx(2.0)
    moved = pred.clone()
    moved[..., 2:] = -50.0  # changing the prediction outside the mask changes nothing
    assert masked_mse(moved, target, mask).item() == pytest.approx(2.0)
    leaf = pred.clone().requires_grad_(True)
    masked_mse(leaf, target, mask).sum().backward()
    assert torch.all(leaf.grad[..., 2:] == 0) and torch.all(leaf.grad[..., :2] != 0)
    assert masked_mse(pred, target, None).item() == pytest.approx((1 + 4 + 2 * 10000) / 4)


def test_training_reduces_the_loss_and_changes_only_projections_words_and_lora(tiny_models, clip_dir, portraits, tmp_path):
    method = get_method("stellarnet")
    session = method.encoder_session(portraits, "likeness/tiny-sdxl", image_encoder=str(clip_dir), **TRAIN)
    pipe = session.pipe
    frozen = {f"{name}.{k}": v.detach().clone() for name, module in
              (("unet", pipe.unet), ("vae", pipe.vae), ("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2),
               ("clip", session.image_encoder.model)) for k, v in module.state_dict().items() if "lora" not in k}
    before_trainable = {k: v.detach().clone() for k, v in session.trainable.items()}
    before = _fixed_loss(session)
    config = TrainingConfig(max_steps=12, learning_rate=2e-3, masked_loss="person", progress=False)
    result = train(pipe, session.trainable, session.make_batch, config, tmp_path, modules=[pipe.unet, session.encoder],
                   extra_loss=session.extra_loss)
    session.injector.remove()
    assert _fixed_loss(session) < before - 0.005
    assert len(result.losses) == 12
    # What trains: both projections (incl. the 5 base pseudo-words each) and the UNet LoRA; nothing else.
    names = set(session.trainable)
    assert {n.split(".")[0] for n in names} == {"encoder", "unet"}
    assert all("lora" in n for n in names if n.startswith("unet."))
    assert any(".base" in n for n in names) and sum(".net." in n for n in names) == 2 * 6
    changed = {n for n, v in session.trainable.items() if not torch.equal(v.detach(), before_trainable[n])}
    assert any(n.endswith("projections.0.base") for n in changed) and any(n.endswith("projections.1.base") for n in changed)
    assert any("projections.1.net.3.weight" in n for n in changed) and any("lora" in n for n in changed)
    after = {f"{name}.{k}": v for name, module in
             (("unet", pipe.unet), ("vae", pipe.vae), ("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2),
              ("clip", session.image_encoder.model)) for k, v in module.state_dict().items() if "lora" not in k}
    assert frozen.keys() == after.keys()
    assert [k for k, v in frozen.items() if not torch.equal(after[k], v)] == []


def test_pseudo_words_depend_on_the_photo_and_sit_in_the_prompt(tiny_models, clip_dir, portraits):
    session = get_method("stellarnet").encoder_session(portraits, "likeness/tiny-sdxl", image_encoder=str(clip_dir), **TRAIN)
    with torch.no_grad():
        session.encoder.projections[0].net[-1].weight.normal_(0, 0.1)  # as after training: words depend on features
        batch_a = session.make_batch(0, 0, np.random.default_rng(0))
        words_a = session.encoder(session.injector.features)[0]
        from likeness.methods.training import encode_captions

        embeds_a, _ = encode_captions(session.pipe, batch_a.captions, "cpu")
        session.injector.features = session.injector.features + 1.0
        embeds_b, _ = encode_captions(session.pipe, batch_a.captions, "cpu")
        words_b = session.encoder(session.injector.features)[0]
    session.injector.remove()
    assert "<stellar> person" in batch_a.captions[0]
    assert not torch.allclose(words_a, words_b)
    assert not torch.allclose(embeds_a, embeds_b)  # the pseudo-words reach the prompt embedding


def test_weights_folder_names_its_masks_data_and_base(weights):
    record = json.loads((weights / CONFIG_FILE).read_text())
    assert (weights / ENCODER_FILE).is_file() and (weights / LORA_WEIGHTS).is_file() and (weights / "loss.csv").is_file()
    assert not (weights / "checkpoints").exists()
    assert record["masks"]["segmenter"] == "celebamask" and record["masks"]["loss_mask"] == "person"
    data = record["data"]
    assert data["layout"] == "stellar" and data["photos"] == 2 and data["excluded"] == 1
    assert data["skipped"] == {"missing_mask": 1, "unreadable": 1}
    assert data["skipped_examples"]["unreadable"].endswith("091/0.jpg")
    assert record["base_model"]["model_id"] == "likeness/tiny-sdxl" and record["num_words"] == 5
    assert record["hidden"] == 1024 and record["rank"] == 4 and len(record["training"]) > 5


def test_resume_is_exact(tiny_models, clip_dir, portraits, tmp_path):
    method = get_method("stellarnet")
    opts = {**TRAIN, "max_steps": 3, "checkpoint_every": 2}
    straight = method.train_encoder(portraits, tmp_path / "straight", "likeness/tiny-sdxl", image_encoder=str(clip_dir), **opts)
    straight_losses = method.last_training.losses
    import likeness.methods.stellarnet.method as sn

    original = sn.EncoderSession.make_batch

    def crashing(self, step, micro, rng):
        if step == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self, step, micro, rng)

    sn.EncoderSession.make_batch = crashing
    try:
        with pytest.raises(KeyboardInterrupt):
            method.train_encoder(portraits, tmp_path / "resumed", "likeness/tiny-sdxl", image_encoder=str(clip_dir), **opts)
    finally:
        sn.EncoderSession.make_batch = original
    assert not (tmp_path / "resumed" / CONFIG_FILE).exists()  # nothing half-finished looks finished
    with pytest.raises(WeightsError, match="did not finish"):
        method.personalize({"x": [tmp_path]}, tmp_path / "never", None, weights=str(tmp_path / "resumed"))
    method.train_encoder(portraits, tmp_path / "resumed", "likeness/tiny-sdxl", image_encoder=str(clip_dir), **opts)
    assert method.last_training.resumed_from == 2
    assert method.last_training.losses == pytest.approx(straight_losses, abs=1e-6)
    from safetensors.torch import load_file

    first, second = load_file(straight / ENCODER_FILE), load_file(tmp_path / "resumed" / ENCODER_FILE)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=1e-6)


def test_artifact_is_plain_diffusers_and_reloads_to_the_same_images(artifact, weights, tiny_models):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    manifest = json.loads((artifact / "likeness.json").read_text())
    assert manifest["method"] == "stellarnet" and manifest["sampling"]["guidance_scale"] == 5.0
    assert manifest["identities"]["astro"]["subject"] == "<astro> person"
    assert manifest["config"]["trained_with_masks"]["segmenter"] == "celebamask"
    assert manifest["config"]["masks"]["sources"] and manifest["config"]["weights_sha256"]
    words = load_file(artifact / "astro.safetensors")
    assert words["clip_l"].shape == (5, 32) and words["clip_g"].shape == (5, 32)

    first = load_artifact(artifact).generate(["{} reading a book"], [3], num_inference_steps=2)[0]
    second = load_artifact(artifact).generate(["{} reading a book"], [3], num_inference_steps=2)[0]
    assert np.array_equal(np.asarray(first), np.asarray(second))

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["likeness/tiny-sdxl"])
    pipe.set_progress_bar_config(disable=True)
    for key, tok, enc in (("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)):
        pipe.load_textual_inversion(words[key], token="<astro>", tokenizer=tok, text_encoder=enc)
    pipe.load_lora_weights(str(artifact), weight_name=LORA_WEIGHTS)
    plain = pipe("<astro> person reading a book", num_inference_steps=2, guidance_scale=5.0,
                 generator=torch.Generator("cpu").manual_seed(3)).images[0]
    diff = np.abs(np.asarray(plain, dtype=np.int16) - np.asarray(first, dtype=np.int16))
    assert diff.max() <= 2  # fused vs unfused LoRA: rounding only


def test_personalize_generate_evaluate_end_to_end(weights, astronaut_path, tmp_path, capsys):
    from likeness.cli import main

    people = tmp_path / "people" / "astro"
    people.mkdir(parents=True)
    shutil.copy(astronaut_path, people / "0.jpg")
    art = tmp_path / "art"
    assert main(["personalize", "--method", "stellarnet", "--weights", str(weights), "--identity", str(people),
                 "--out", str(art)]) == 0
    assert main(["generate", "--artifact", str(art), "--prompt", "{} on the moon", "-n", "2", "--steps", "2",
                 "--out", str(tmp_path / "gen")]) == 0
    images = sorted((tmp_path / "gen" / "astro").glob("*.png"))
    assert len(images) == 2 and Image.open(images[0]).size == (64, 64)  # tiny-sdxl's native size
    sidecar = json.loads(images[0].with_suffix(".json").read_text())
    assert sidecar["method"] == "stellarnet" and sidecar["prompt"] == "<astro> person on the moon"
    assert main(["evaluate", str(tmp_path / "people"), str(tmp_path / "gen"), "--store", str(tmp_path / "r.sqlite"),
                 "--metrics", "ips", "--quiet", "--csv", str(tmp_path / "rows.csv")]) == 0
    assert len((tmp_path / "rows.csv").read_text().strip().splitlines()) == 1 + 2
    # The benchmark runner and its report take the method like any other (weights as a method option).
    run = tmp_path / "run"
    assert main(["bench", "--out", str(run), "--method", "stellarnet", "--base-model", "likeness/tiny-sdxl",
                 "--identities", str(tmp_path / "people"), "--limit", "1", "--metrics", "ips",
                 "--method-option", f"weights={weights}"]) == 0
    assert main(["report", str(run)]) == 0
    assert "stellarnet" in next(run.rglob("*.html")).read_text()
    capsys.readouterr()


def test_train_encoder_cli_dispatches_on_the_method_hook(tiny_models, clip_dir, portraits, tmp_path, capsys):
    from likeness.cli import main

    out = tmp_path / "w"
    assert main(["train-encoder", "--method", "stellarnet", "--base-model", "likeness/tiny-sdxl", "--data", str(portraits),
                 "--image-encoder", str(clip_dir), "--out", str(out), "--steps", "1", "--segmenter", "celebamask",
                 "--option", "progress=false"]) == 0
    assert (out / CONFIG_FILE).is_file()
    assert main(["train-encoder", "--method", "textual-inversion", "--base-model", "likeness/tiny-sdxl", "--data",
                 str(portraits), "--out", str(tmp_path / "x")]) == 2
    assert "has no encoder to train" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bad input


def test_photo_without_a_person_is_refused_and_nothing_is_written(weights, tmp_path, tiny_models):
    from likeness.methods.preparation import NoFaceError

    wall = tmp_path / "wall.png"
    Image.new("RGB", (160, 160), (120, 130, 140)).save(wall)
    with pytest.raises(NoFaceError, match="wall.png"):
        get_method("stellarnet").personalize({"wall": [wall]}, tmp_path / "out", None, weights=str(weights))
    assert not (tmp_path / "out").exists()


def test_segmenter_finding_no_person_is_refused(weights, astronaut_path, tmp_path, tiny_models):
    from likeness.segmentation import NoPersonError

    model = build_tiny_segformer(tmp_path / "seg", bias=[5.0, 0.0, 0.0, 0.0])  # says "background" everywhere
    with pytest.raises(NoPersonError, match="astronaut.jpg: no person found"):
        get_method("stellarnet").personalize({"astro": [astronaut_path]}, tmp_path / "out", None, weights=str(weights),
                                             segmenter=f"transformers:{model}")
    assert not (tmp_path / "out").exists()


def test_weights_for_another_base_model_are_refused(weights, astronaut_path, tmp_path, tiny_models):
    from likeness.models.tiny import build_tiny_sdxl

    method = get_method("stellarnet")
    with pytest.raises(FamilyMismatchError, match="sd1"):
        method.personalize({"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd", weights=str(weights))
    other = build_tiny_sdxl(tmp_path / "tok", seed=7)
    other.save_pretrained(tmp_path / "other-sdxl")
    with pytest.raises(WeightsError, match="trained for base model 'likeness/tiny-sdxl'"):
        method.personalize({"astro": [astronaut_path]}, tmp_path / "b", str(tmp_path / "other-sdxl"), weights=str(weights))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_broken_weights_folders_are_clear_errors(weights, astronaut_path, tmp_path):
    method = get_method("stellarnet")
    with pytest.raises(WeightsError, match="tuning-free: pass weights"):
        method.personalize({"astro": [astronaut_path]}, tmp_path / "a", None)
    with pytest.raises(WeightsError, match="does not exist"):
        method.personalize({"astro": [astronaut_path]}, tmp_path / "a", None, weights=str(tmp_path / "nope"))
    tampered = tmp_path / "tampered"
    shutil.copytree(weights, tampered)
    (tampered / ENCODER_FILE).write_bytes((tampered / ENCODER_FILE).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(WeightsError, match="changed or corrupt"):
        method.personalize({"astro": [astronaut_path]}, tmp_path / "a", None, weights=str(tampered))
    (tampered / LORA_WEIGHTS).unlink()
    with pytest.raises(WeightsError, match="pytorch_lora_weights.safetensors: missing"):
        method.personalize({"astro": [astronaut_path]}, tmp_path / "a", None, weights=str(tampered))


def test_training_data_problems_are_errors_or_counted_skips(tiny_models, clip_dir, portraits, tmp_path):
    from stellarnet_helpers import colour_mask

    method = get_method("stellarnet")
    with pytest.raises(FamilyMismatchError, match="SDXL"):
        method.encoder_session(portraits, "likeness/tiny-sd", image_encoder=str(clip_dir), **TRAIN)
    # Only the built-in tiny ids have a default image encoder; the same model as a plain folder asks for one.
    from likeness.models.tiny import tiny_model_path

    with pytest.raises(ValueError, match="image_encoder"):
        method.encoder_session(portraits, str(tiny_model_path("likeness/tiny-sdxl")), **TRAIN)
    empty = tmp_path / "empty"
    (empty / "000").mkdir(parents=True)
    (empty / "000" / "0.jpg").write_bytes(b"broken")
    with pytest.raises(DatasetError, match="no usable portraits"):
        method.encoder_session(empty, "likeness/tiny-sdxl", image_encoder=str(clip_dir), **TRAIN)
    # A mask of the wrong shape is found while training: skipped and counted, another photo drawn.
    odd = tmp_path / "odd"
    shutil.copytree(portraits, odd)
    colour_mask(48).resize((48, 20), Image.Resampling.NEAREST).save(odd / "000" / "0_bg.png")
    session = method.encoder_session(odd, "likeness/tiny-sdxl", image_encoder=str(clip_dir), **{**TRAIN, "exclude": None})
    for step in range(12):  # seed 11 draws photo 000 first
        session.make_batch(step, 0, np.random.default_rng(step))
    session.injector.remove()
    assert session.sampler.skipped == {"mask_size": 1}
