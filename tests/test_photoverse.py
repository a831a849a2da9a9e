"""PhotoVerse on tiny models: encoder training, fusion branches, identity-loss gradients, tuning-free
personalization, save/load, the CLI end to end, and bad input."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from likeness.faces.align import template
from likeness.methods import get_method, load_artifact
from likeness.methods.photoverse.method import (
    ENCODER_CONFIG,
    IP_ADAPTER_FILE,
    LORA_FILE,
    TEXT_ADAPTER_FILE,
    EncoderWeightsError,
)
from likeness.methods.photoverse.data import encoder_batches, fusion_weights
from likeness.methods.photoverse.modules import cross_attention_layers
from likeness.methods.preparation import NoFaceError


class TinyFaceNet(torch.nn.Module):
    """A small conv face embedder (chips in 0..255), fixed seed: stands in for the dlib / ArcFace networks."""

    def __init__(self, chip_size: int = 16, dim: int = 8):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2),
                                       torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * ((chip_size - 3) // 2 + 1) ** 2, dim))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)

    def forward(self, chips):
        return self.net(chips / 127.5 - 1.0)


def TinyIdentityLoss(cls=None):
    """likeness's differentiable IdentityLoss (5-point chip via grid_sample, 1 - cos) on :class:`TinyFaceNet`."""
    from likeness.faces.identity_loss import IdentityLoss

    return (cls or IdentityLoss)(TinyFaceNet(16), 16, torch.from_numpy(template(16)), min_eye_distance=4.0)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIPVisionModel (6 layers, 32 px, patch 8) saved with save_pretrained."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=6, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def portraits(astronaut_path, tmp_path_factory):
    """A training folder: <person>/<photo>, the astronaut under mirror/crop/colour variations, one
    photo without a face and one unreadable file; a CelebA-style person 'excluded_one' to exclude."""
    root = tmp_path_factory.mktemp("portraits")
    image = Image.open(astronaut_path).convert("RGB")
    variants = {"a/0.jpg": image, "a/1.jpg": ImageOps.mirror(image), "b/0.jpg": image.crop((0, 0, 400, 400)),
                "b/1.jpg": ImageOps.autocontrast(image.crop((20, 0, 512, 450))), "excluded_one/0.jpg": image}
    for name, img in variants.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / name)
    Image.fromarray(np.full((128, 128, 3), 120, np.uint8)).save(root / "b" / "blank.png")
    (root / "b" / "broken.jpg").write_bytes(b"not an image")
    return root


TRAIN = dict(max_steps=6, learning_rate=3e-3, adapter_hidden=16, num_words=5, progress=False, seed=0)


@pytest.fixture(scope="module")
def encoder_dir(tiny_models, tiny_clip, portraits, tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        method = get_method("photoverse")
        out = method.train_encoder(portraits, tmp_path_factory.mktemp("pv") / "encoder", "likeness/tiny-sd",
                                   image_encoder=str(tiny_clip), identity_loss=TinyIdentityLoss(),
                                   exclude=["excluded_one"], **TRAIN)
        return out, method.last_training, method.last_result
    finally:
        torch.set_num_threads(previous)


def test_encoder_folder_files_and_data_report(encoder_dir):
    out, _, result = encoder_dir
    for name in (ENCODER_CONFIG, TEXT_ADAPTER_FILE, IP_ADAPTER_FILE, LORA_FILE, "loss.csv"):
        assert (out / name).is_file(), name
    config = json.loads((out / ENCODER_CONFIG).read_text())
    data = config["data"]
    assert data["total"] == 6 and data["ok"] == 4 and data["excluded"] == 1
    assert data["skipped"] == {"no_face": 1, "unreadable": 1}
    assert any("blank.png" in e for e in data["examples"]) and any("broken.jpg" in e for e in data["examples"])
    assert config["image_encoder"]["layers"] == [1, 2, 3, 4, 5]
    ip = load_file(str(out / IP_ADAPTER_FILE))
    assert {k.split(".")[0] for k in ip} == {"image_proj", "ip_adapter"}
    assert sorted({int(k.split(".")[1]) for k in ip if k.startswith("ip_adapter")})[:3] == [1, 3, 5]
    assert len(result.losses) == TRAIN["max_steps"]
    assert config["identity_loss"] == "IdentityLoss" and config["identity_loss_skipped"] == 0


# --------------------------------------------------------------------------------------------------
# The dual branch on a live pipeline (no encoder folder): loss, frozen weights, branches, gradients
# --------------------------------------------------------------------------------------------------


def _rig(tiny_clip, encoder_dir, portraits, identity_loss=None, fusion="both"):
    """A tiny-sd pipeline with the dual branch put in, and batches from the prepared training set."""
    from likeness.faces import get_backend
    from likeness.methods.photoverse.method import TRAIN_TOKEN, DualBranch, ImageEncoder
    from likeness.methods.photoverse.data import list_training_images, prepare_training_set
    from likeness.models import load_pipeline

    pipe = load_pipeline("likeness/tiny-sd")
    encoder = ImageEncoder.from_pretrained(tiny_clip, num_layers=5)
    images, _ = list_training_images(portraits, ["excluded_one"])
    items, _ = prepare_training_set(images, encoder_dir[0] / "prepared", size=64, encoder_size=32, backend=get_backend())
    model = DualBranch(pipe, encoder, num_words=5, hidden=16, lora_rank=4, identity_loss=identity_loss)
    return pipe, model, encoder_batches(items, TRAIN_TOKEN, batch_size=1, fusion=fusion)


def _fixed_loss(pipe, model, make_batch, n=6):
    """Loss on fixed (image, noise, timestep) draws: comparable before and after training."""
    from diffusers import DDPMScheduler

    from likeness.methods.training import step_generator

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        return float(np.mean([model.loss(pipe, scheduler, make_batch(0, 0, np.random.default_rng(i)),
                                         step_generator(7, i, 0, 0)).item() for i in range(n)]))


def test_training_reduces_the_loss_and_moves_only_adapters_and_lora(tiny_clip, encoder_dir, portraits, tmp_path, one_thread):
    from likeness.methods.training import TrainingConfig, train

    pipe, model, make_batch = _rig(tiny_clip, encoder_dir, portraits)
    parts = (("unet", pipe.unet), ("vae", pipe.vae), ("text", pipe.text_encoder), ("clip", model.encoder))
    frozen = {f"{part}.{k}": v.clone() for part, module in parts for k, v in module.state_dict().items()
              if f"{part}.{k}" not in model.trainable}
    trained = {k: v.detach().clone() for k, v in model.trainable.items()}
    before = _fixed_loss(pipe, model, make_batch)
    train(pipe, model.trainable, make_batch, TrainingConfig(max_steps=15, learning_rate=3e-2, progress=False), tmp_path,
          modules=model.modules, loss_fn=model.loss)
    assert _fixed_loss(pipe, model, make_batch) < before - 0.005
    kinds = {"lora": 0, "to_k_ip": 0, "to_v_ip": 0, "encoder_hid_proj": 0, "text_adapter": 0}
    for name, value in model.trainable.items():
        assert any(k in name for k in kinds), name  # nothing else trains
        kinds.update({k: kinds[k] + 1 for k in kinds if k in name and not torch.equal(value.detach(), trained[name])})
    assert all(kinds.values()), kinds  # and each kind moved
    now = {f"{part}.{k}": v for part, module in parts for k, v in module.state_dict().items()}
    assert frozen and all(torch.equal(now[k], v) for k, v in frozen.items())


def test_each_fusion_mode_takes_its_branch(tiny_clip, encoder_dir, portraits, one_thread):
    """Forward hooks on every cross-attention's text K/V (LoRA layers) and image K/V count the calls."""
    from diffusers import DDPMScheduler

    from likeness.methods.training import step_generator

    pipe, model, _ = _rig(tiny_clip, encoder_dir, portraits)
    calls = {"text_k": 0, "text_v": 0, "image_k": 0, "image_v": 0}
    handles = []
    for _, attn, _ in cross_attention_layers(pipe.unet):
        for key, module in (("text_k", attn.to_k), ("text_v", attn.to_v), ("image_k", attn.processor.to_k_ip[0]),
                            ("image_v", attn.processor.to_v_ip[0])):
            handles.append(module.register_forward_hook(lambda *a, key=key: calls.__setitem__(key, calls[key] + 1)))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    layers = len(cross_attention_layers(pipe.unet))
    seen = {}
    for mode in ("text", "image", "both"):
        calls.update(dict.fromkeys(calls, 0))
        batch = encoder_batches(_items(encoder_dir), "<photoverse>", batch_size=1, fusion=mode)(0, 0, np.random.default_rng(0))
        with torch.no_grad():
            model.loss(pipe, scheduler, batch, step_generator(0, 0, 0, 0))
        seen[mode] = dict(calls)
    for h in handles:
        h.remove()
    assert seen["text"] == {"text_k": layers, "text_v": layers, "image_k": 0, "image_v": 0}
    assert seen["image"] == {"text_k": 0, "text_v": 0, "image_k": layers, "image_v": layers}
    assert seen["both"] == dict.fromkeys(calls, layers)
    assert fusion_weights(0.1) == (2.0, 0.0) and fusion_weights(0.9) == (0.0, 2.0) and fusion_weights(0.5) == (1.0, 1.0)


def _items(encoder_dir):
    from likeness.methods.photoverse.data import TrainingItem

    cache = encoder_dir[0] / "prepared"
    records = [json.loads(line) for line in (cache / "index.jsonl").read_text().splitlines()]
    return [TrainingItem(cache / f"{r['item']}.target.png", cache / f"{r['item']}.encoder.png", np.array(r["points"], np.float32))
            for r in records if r["status"] == "ok"]


def test_identity_loss_sends_gradient_to_the_adapters(tiny_clip, encoder_dir, portraits, one_thread):
    """The gradient of the identity term alone (loss with weight 1 minus loss with weight 0) reaches
    the text adapter, the image adapter, the image K/V and the LoRA."""
    from diffusers import DDPMScheduler

    from likeness.methods.training import step_generator

    pipe, model, make_batch = _rig(tiny_clip, encoder_dir, portraits, identity_loss=TinyIdentityLoss())
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    batch = make_batch(0, 0, np.random.default_rng(0))
    grads = []
    for weight in (0.0, 1.0):
        model.weights["identity"] = weight
        for p in model.trainable.values():
            p.grad = None
        model.loss(pipe, scheduler, batch, step_generator(0, 0, 0, 0)).backward()
        grads.append({n: p.grad.clone() for n, p in model.trainable.items() if p.grad is not None})
    assert 0 < model.terms[-1]["identity"] <= 2
    moved = {n for n in grads[1] if not torch.allclose(grads[1][n], grads[0].get(n, torch.zeros_like(grads[1][n])))}
    for part in ("text_adapter", "encoder_hid_proj", "to_k_ip", "to_v_ip", "lora"):
        assert any(part in n for n in moved), part
    assert all(p.grad is None for p in model.identity_loss.parameters())  # the face network stays frozen


# --------------------------------------------------------------------------------------------------
# Tuning-free personalization, generation, save/load, the CLI end to end
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pv_artifact(encoder_dir, astronaut_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("pv-art") / "artifact"
    return get_method("photoverse").personalize({"astro": [astronaut_path]}, out, "likeness/tiny-sd",
                                                weights=str(encoder_dir[0]), max_steps=20)


def test_personalize_only_encodes_and_the_files_are_standard(pv_artifact, encoder_dir, astronaut_path, tiny_clip):
    from likeness.data.images import image_to_array, load_image
    from likeness.faces import get_backend
    from likeness.methods.photoverse.method import EncoderWeights, ImageEncoder, views_tensor
    from likeness.methods.photoverse.data import encoder_view

    manifest = json.loads((pv_artifact / "likeness.json").read_text())
    assert manifest["method"] == "photoverse"
    assert manifest["identities"]["astro"]["tokens"] == ["<astro>"] + [f"<astro>_{i}" for i in range(1, 5)]
    assert manifest["config"]["encode_seconds"] < 30  # seconds, not the minutes of per-person tuning
    assert "ignored training option(s) max_steps" in manifest["config"]["notes"][0]
    assert not (pv_artifact / "loss.csv").exists() and not (pv_artifact / "checkpoints").exists()
    # The pseudo-words are exactly the text adapter's output on the masked 1.3x face view.
    image = load_image(astronaut_path)
    face = max(get_backend().detect(image_to_array(image)), key=lambda f: f.area)
    encoder = ImageEncoder.from_pretrained(tiny_clip, layers=[1, 2, 3, 4, 5])
    layer_features, tokens = encoder(views_tensor([encoder_view(image, face, 32)]))
    with torch.no_grad():
        words = EncoderWeights(encoder_dir[0]).text_adapter("cpu")(layer_features)[0]
    assert torch.allclose(load_file(str(pv_artifact / "astro.safetensors"))["<astro>"], words, atol=1e-6)
    assert torch.allclose(load_file(str(pv_artifact / "astro.image_embeds.safetensors"))["image_embeds"], tokens[0], atol=1e-6)
    assert tokens.shape == (1, 17, 32)  # (32 / 8)^2 patches + class token
    for name in (IP_ADAPTER_FILE, LORA_FILE):  # shared with the encoder folder, not copied per person
        assert (pv_artifact / name).read_bytes() == (encoder_dir[0] / name).read_bytes()


def test_a_person_is_found_by_the_name_as_given(encoder_dir, astronaut_path, tmp_path, one_thread):
    """A display name that differs from its key (accents, apostrophe): generation finds the person by either."""
    from likeness.data.names import name_key

    art = get_method("photoverse").personalize({"José O'Neil": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd",
                                               weights=str(encoder_dir[0]))
    loaded = load_artifact(art)
    by_name = loaded.generate(["{} reading a book"], [3], identity="José O'Neil", num_inference_steps=2)[0]
    by_key = loaded.generate(["{} reading a book"], [3], identity=name_key("José O'Neil"), num_inference_steps=2)[0]
    assert np.asarray(by_name).tolist() == np.asarray(by_key).tolist()


def test_save_load_reproduces_images_and_the_image_scale_acts(pv_artifact, one_thread):
    prompts, seeds = ["{} reading a book", "a portrait of {}"], [3, 4]
    first = load_artifact(pv_artifact).generate(prompts, seeds, num_inference_steps=2)
    loaded = load_artifact(pv_artifact)
    again = loaded.generate(prompts, seeds, num_inference_steps=2)
    assert [np.asarray(a).tolist() for a in first] == [np.asarray(b).tolist() for b in again]
    batched = loaded.generate(prompts, seeds, num_inference_steps=2, batch_size=2)
    for a, b in zip(first, batched):  # same images in one batch, up to float rounding of batched kernels
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).max() <= 2
    loaded.set_scales(image=0.0)
    no_image = loaded.generate(prompts[:1], seeds[:1], num_inference_steps=2)
    assert not np.array_equal(np.asarray(no_image[0]), np.asarray(first[0]))


def test_personalize_generate_evaluate_end_to_end_cli(encoder_dir, astronaut_path, tmp_path, capsys, one_thread):
    from likeness.cli import main

    people = tmp_path / "people" / "astro"
    people.mkdir(parents=True)
    (people / "astronaut.jpg").write_bytes(astronaut_path.read_bytes())
    artifact = tmp_path / "art"
    started = time.perf_counter()
    assert main(["personalize", "--method", "photoverse", "--weights", str(encoder_dir[0]), "--identity", str(people),
                 "--out", str(artifact)]) == 0
    assert time.perf_counter() - started < 60
    out = tmp_path / "images"
    assert main(["generate", "--artifact", str(artifact), "--prompt", "{} reading a book", "-n", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    images = sorted((out / "astro").glob("*.png"))
    assert len(images) == 2
    assert json.loads(images[0].with_suffix(".json").read_text())["method"] == "photoverse"
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "people"), str(out), "--store", str(tmp_path / "r.sqlite"), "--quiet"]) == 0
    assert "2 images: 2 scored now" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Bad input and exact resume
# --------------------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error(encoder_dir, astronaut_path, tiny_clip, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    method = get_method("photoverse")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(blank)
    with pytest.raises(NoFaceError, match="blank.png"):
        method.personalize({"x": [blank]}, tmp_path / "a", "likeness/tiny-sd", weights=str(encoder_dir[0]))
    with pytest.raises(EncoderWeightsError, match="trained for base model 'likeness/tiny-sd'.*likeness/tiny-sdxl"):
        method.personalize({"x": [astronaut_path]}, tmp_path / "b", "likeness/tiny-sdxl", weights=str(encoder_dir[0]))
    other = tmp_path / "other-clip"
    torch.manual_seed(5)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=6, num_attention_heads=4,
                                     image_size=32, patch_size=8)).save_pretrained(other)
    with pytest.raises(EncoderWeightsError, match="trained with image encoder .*digest"):
        method.personalize({"x": [astronaut_path]}, tmp_path / "c", "likeness/tiny-sd", weights=str(encoder_dir[0]),
                           image_encoder=str(other))
    with pytest.raises(ValueError, match="needs trained encoder weights"):
        method.personalize({"x": [astronaut_path]}, tmp_path / "d", "likeness/tiny-sd")
    with pytest.raises(EncoderWeightsError, match="not PhotoVerse encoder weights"):
        method.personalize({"x": [astronaut_path]}, tmp_path / "e", "likeness/tiny-sd", weights=str(tmp_path))
    faceless = tmp_path / "faceless"
    faceless.mkdir()
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(faceless / "0.png")
    (faceless / "1.jpg").write_bytes(b"broken")
    with pytest.raises(ValueError, match="none of the 2 training images is usable"):
        method.train_encoder(faceless, tmp_path / "enc", "likeness/tiny-sd", image_encoder=str(tiny_clip),
                             identity_loss=None, **TRAIN)


def _crashing_loss(crash_at=None):
    """An IdentityLoss that raises on its ``crash_at``-th call: an interruption mid-run."""
    from likeness.faces.identity_loss import IdentityLoss

    class CrashingIdentityLoss(IdentityLoss):
        calls = 0

        def forward(self, images, points, reference):
            self.calls += 1
            if crash_at is not None and self.calls == crash_at:
                raise KeyboardInterrupt("simulated interruption")
            return super().forward(images, points, reference)

    return TinyIdentityLoss(CrashingIdentityLoss)


def test_interrupted_training_resumes_exactly(tiny_clip, portraits, tmp_path, one_thread):
    method = get_method("photoverse")
    run = dict(TRAIN, max_steps=4, checkpoint_every=2)
    kwargs = dict(image_encoder=str(tiny_clip), exclude=["excluded_one"], **run)
    portraits = portraits / "a"  # two photos are enough here
    straight = method.train_encoder(portraits, tmp_path / "straight", "likeness/tiny-sd",
                                    identity_loss=_crashing_loss(), **kwargs)
    straight_losses = method.last_result.losses
    crashing = _crashing_loss(crash_at=4)
    with pytest.raises(KeyboardInterrupt):
        method.train_encoder(portraits, tmp_path / "resumed", "likeness/tiny-sd", identity_loss=crashing, **kwargs)
    assert (tmp_path / "resumed" / "checkpoints" / "step-000002").is_dir()
    assert not (tmp_path / "resumed" / ENCODER_CONFIG).exists()
    with pytest.raises(EncoderWeightsError, match="training did not finish"):
        method.personalize({"x": [portraits / "0.jpg"]}, tmp_path / "art", "likeness/tiny-sd",
                           weights=str(tmp_path / "resumed"))
    resumed = method.train_encoder(portraits, tmp_path / "resumed", "likeness/tiny-sd",
                                   identity_loss=_crashing_loss(), **kwargs)
    assert method.last_result.resumed_from == 2
    assert method.last_result.losses == pytest.approx(straight_losses, abs=1e-6)
    for name in (TEXT_ADAPTER_FILE, IP_ADAPTER_FILE):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_encoder_view_is_the_masked_1_3x_face_box_and_celeba_tables_drive_exclusion(tmp_path):
    from likeness.faces.base import Face
    from likeness.methods.photoverse.data import encoder_view, list_training_images

    image = Image.new("RGB", (200, 200), (200, 30, 30))
    face = Face(box=(50.0, 60.0, 150.0, 160.0), score=1.0)
    view = np.asarray(encoder_view(image, face, 130))  # 1.3 x 100 px box -> 130 px: 1 source px per view px
    assert view.shape == (130, 130, 3)
    assert (view[65, 65] == [200, 30, 30]).all()  # the face centre is kept
    assert (view[2, 2] == 0).all() and (view[127, 127] == 0).all()  # corners of the enlarged box are masked
    # Face ellipse (box stretched 1.35x upwards) in view pixels: x 15..115, y -2.5..115, centre row 56.
    assert (view[56, 18] == [200, 30, 30]).all() and (view[56, 12] == 0).all()
    assert (view[112, 65] == [200, 30, 30]).all() and (view[118, 65] == 0).all()
    edge = np.asarray(encoder_view(image, Face(box=(0.0, 0.0, 100.0, 100.0), score=1.0), 130))
    assert (edge[5, 65] == 0).all()  # past the image border: padded black, not stretched

    root = tmp_path / "celeba"
    root.mkdir()
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        image.save(root / name)
    (root / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 9\n000003.jpg 7\n")
    (tmp_path / "stellar.txt").write_text("7\n")
    from likeness.methods.photoverse.data import read_exclude

    kept, dropped = list_training_images(root, read_exclude([tmp_path / "stellar.txt"]))
    assert [(p.name, who) for p, who in kept] == [("000002.jpg", "9")] and dropped == 2


def test_train_encoder_cli(tiny_clip, portraits, tmp_path, capsys, one_thread):
    from likeness.cli import main

    args = ["train-encoder", "--data", str(portraits / "a"), "--out", str(tmp_path / "enc"), "--image-encoder",
            str(tiny_clip), "--identity-loss", "none", "--steps", "1", "--option", "adapter_hidden=16"]
    assert main(args) == 0
    config = json.loads((tmp_path / "enc" / ENCODER_CONFIG).read_text())
    assert config["adapter_hidden"] == 16 and config["identity_loss"] is None and config["data"]["ok"] == 2
    assert main(args) == 2 and "already holds trained encoder weights" in capsys.readouterr().err
    assert main(["train-encoder", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "training folder does not exist" in capsys.readouterr().err
