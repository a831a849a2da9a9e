"""Celeb Basis: the basis, the coefficient layer, training, prompt expansion, export, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from likeness.methods import get_method
from likeness.methods.celeb_basis.method import (
    COEFFICIENTS_FILE,
    TooManyPeopleError,
    encoders,
    read_coefficients,
)
from likeness.methods.celeb_basis.basis import (
    BasisMismatchError,
    CelebBasis,
    NameListError,
    build_basis,
    cached_basis,
    read_names,
    split_names,
)
from likeness.methods.preparation import Augmentation, NoFaceError, photo_batches, prepare_identities
from likeness.methods.training import TrainingConfig, diffusion_loss, step_generator, train
from likeness.models import load_pipeline


def _text_parts(pipe):
    pairs = encoders(pipe)
    return [enc for _, enc, _ in pairs], [tok for tok, _, _ in pairs]


@pytest.fixture(scope="module")
def two_photos(astronaut_path, tmp_path_factory):
    """Two different face photos that are always available: the astronaut and its mirror image."""
    mirrored = tmp_path_factory.mktemp("mirror") / "astronaut_mirrored.jpg"
    Image.open(astronaut_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, quality=95)
    return {"astro": [astronaut_path], "mirror": [mirrored]}


@pytest.fixture(scope="module")
def sd_artifact(tiny_models, two_photos, tmp_path_factory):
    """Two people trained jointly on tiny-sd (a few steps: the files and wiring matter here)."""
    out = tmp_path_factory.mktemp("celeb-sd") / "artifact"
    return get_method("celeb-basis").personalize(two_photos, out, "likeness/tiny-sd", max_steps=4, ema_momentum=0.5,
                                                 progress=False)


@pytest.mark.parametrize("model_id, dims", [("likeness/tiny-sd", (32,)), ("likeness/tiny-sdxl", (32, 32))])
def test_basis_is_orthonormal_and_reconstructs_the_names_at_full_rank(tiny_models, model_id, dims):
    pipe = load_pipeline(model_id)
    text_encoders, tokenizers = _text_parts(pipe)
    basis = build_basis(text_encoders, tokenizers, rank=512)
    # 512 asked, clipped to what the names span: the joint hidden size of the encoders.
    assert basis.dims == dims and basis.rank == sum(dims) and basis.requested_rank == 512
    gram = torch.einsum("pkd,pjd->pkj", basis.directions, basis.directions)
    assert torch.allclose(gram, torch.eye(basis.rank).expand_as(gram), atol=1e-5)

    split = split_names(tokenizers, basis.names)
    joint = torch.stack([
        torch.cat([enc.get_input_embeddings().weight[list(ids[i])] for enc, ids in zip(text_encoders, split.ids)], dim=-1)
        for i in range(len(split.kept))
    ]).detach()  # (names, 2 positions, D)
    rebuilt = torch.cat(basis.embed(basis.project(joint)), dim=-1)
    assert torch.allclose(rebuilt, joint, atol=1e-5)
    # A truncated basis cannot do that: the test has teeth.
    small = build_basis(text_encoders, tokenizers, rank=4)
    assert (torch.cat(small.embed(small.project(joint)), dim=-1) - joint).abs().max() > 1e-2


def test_name_filter_keeps_two_token_names_and_strict_lists_name_the_bad_entries(tiny_models):
    pipe = load_pipeline("likeness/tiny-sd")
    names = read_names()
    assert 650 <= len(names) <= 750 and len(set(names)) == len(names)
    split = split_names([pipe.tokenizer], names)
    assert 0 < len(split.kept) < len(names)
    assert split.report() == f"{len(split.kept)} of {len(names)} names split into exactly 2 known tokens"
    assert all(len(pipe.tokenizer.tokenize(n)) == 2 for n in split.kept)

    with pytest.raises(NameListError) as err:
        split_names([pipe.tokenizer], ["Tom Hanks", "Emma Stone", "Morgan Freeman", "Obama", "Robert De Niro"], strict=True)
    message = str(err.value)
    assert "2 name(s)" in message and "'Obama' -> 1 token(s)" in message and "'Robert De Niro' -> " in message
    with pytest.raises(NameListError, match="at least 3"):
        split_names([pipe.tokenizer], ["Tom Hanks", "Zzqx Qqzx"])


def test_basis_cache_is_reused_and_keyed_by_the_embedding_table(tiny_models, tmp_path):
    pipe = load_pipeline("likeness/tiny-sd")
    text_encoders, tokenizers = _text_parts(pipe)
    first = cached_basis(text_encoders, tokenizers, rank=8, cache_dir=tmp_path)
    files = list(tmp_path.glob("basis-*.safetensors"))
    assert len(files) == 1
    again = cached_basis(text_encoders, tokenizers, rank=8, cache_dir=tmp_path)
    assert torch.equal(again.directions, first.directions) and again.table_hashes == first.table_hashes
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[5] += 1.0
    changed = cached_basis(text_encoders, tokenizers, rank=8, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("basis-*.safetensors"))) == 2 and changed.table_hashes != first.table_hashes
    with pytest.raises(BasisMismatchError, match="re-run personalization"):
        first.check_compatible(text_encoders)


def _celeb_setup(astronaut_path, tmp_path, pipe):
    method = get_method("celeb-basis")
    prepared, _ = prepare_identities([("astro", [astronaut_path])], size=64, framing="face")
    setup = method.setup(pipe, ["astro"], {**method.defaults, "face_backend": "dlib", "out_dir": tmp_path})
    setup.identities["astro"].photos = [str(astronaut_path)]  # what the shared personalize fills in
    make_batch = setup.wrap_batches(photo_batches(prepared, {"astro": "<astro>"}, batch_size=1, aug=Augmentation()))
    return setup, make_batch


def test_only_the_linear_layer_receives_gradients(tiny_models, astronaut_path, tmp_path):
    pipe = load_pipeline("likeness/tiny-sdxl")
    setup, make_batch = _celeb_setup(astronaut_path, tmp_path, pipe)
    from diffusers import DDPMScheduler

    loss = diffusion_loss(pipe, DDPMScheduler.from_config(pipe.scheduler.config), make_batch(0, 0, np.random.default_rng(0)),
                          step_generator(0, 0, 0, 0))
    loss.backward()
    layer = setup.encoder.linear
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    assert setup.encoder.ema.grad is None
    frozen = [p for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2) for p in module.parameters()]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    assert setup.encoder.ema.shape == (1, 2, setup.basis.rank)


def test_training_reduces_the_loss_on_the_tiny_model(tiny_models, astronaut_path, tmp_path):
    from diffusers import DDPMScheduler

    pipe = load_pipeline("likeness/tiny-sd")
    # The random tiny UNet all but ignores its text (captions change its loss by < 1e-3); a stronger
    # cross-attention output makes the text path, which is all Celeb Basis trains, matter.
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.mul_(100.0)
    setup, make_batch = _celeb_setup(astronaut_path, tmp_path, pipe)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def fixed_loss():
        with torch.no_grad():
            return float(np.mean([diffusion_loss(pipe, scheduler, make_batch(0, 0, np.random.default_rng(i)),
                                                 step_generator(123, i, 0, 0)).item() for i in range(6)]))

    weight_before = setup.encoder.linear.weight.detach().clone()
    table_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    before = fixed_loss()
    train(pipe, setup.trainable, make_batch, TrainingConfig(max_steps=10, learning_rate=1e-2, progress=False), tmp_path,
          modules=setup.modules, after_step=setup.after_step)
    assert fixed_loss() < before - 0.003
    assert not torch.equal(setup.encoder.linear.weight, weight_before)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, table_before)


def test_artifact_stores_exactly_2k_numbers_per_person(sd_artifact):
    coefficients = read_coefficients(sd_artifact)
    basis = CelebBasis.load(sd_artifact / "celeb_basis.safetensors")
    assert sorted(coefficients) == ["astro", "mirror"]
    for value in coefficients.values():
        assert value.shape == (2, basis.rank) and value.numel() == 2 * basis.rank
    manifest = json.loads((sd_artifact / "likeness.json").read_text())
    assert manifest["method"] == "celeb-basis"
    assert manifest["identities"]["astro"]["tokens"] == ["<astro>", "<astro>_1"]
    # The exported textual-inversion file is exactly the basis applied to those numbers.
    exported = load_file(sd_artifact / "astro.safetensors")["<astro>"]
    assert torch.allclose(exported, basis.embed(coefficients["astro"])[0], atol=1e-6)


def test_two_person_prompt_expands_to_each_persons_embeddings(sd_artifact):
    personalized = get_method("celeb-basis").load(sd_artifact)
    pipe = personalized.pipe
    basis = CelebBasis.load(sd_artifact / "celeb_basis.safetensors")
    coefficients = read_coefficients(sd_artifact)
    text = personalized.prompt("{} and <mirror> sitting together", identity="astro")
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(text, pipe.tokenizer)).input_ids
    tokens = pipe.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[1:7] == ["<astro>", "<astro>_1", "and</w>", "<mirror>", "<mirror>_1", "sitting</w>"]
    rows = pipe.text_encoder.get_input_embeddings()(torch.tensor([ids]))[0].detach()
    astro, mirror = (basis.embed(coefficients[n])[0] for n in ("astro", "mirror"))
    assert (astro - mirror).abs().max() > 1e-4  # two different people
    assert torch.allclose(rows[1:3], astro, atol=1e-6)
    assert torch.allclose(rows[4:6], mirror, atol=1e-6)


def test_exported_textual_inversion_reproduces_likeness_images_in_a_plain_pipeline(sd_artifact, tiny_models):
    from diffusers import StableDiffusionPipeline

    ours = get_method("celeb-basis").generate(sd_artifact, ["{} and <mirror> at the beach"], [7], identity="astro",
                                              num_inference_steps=3)[0]
    plain = StableDiffusionPipeline.from_pretrained(tiny_models["likeness/tiny-sd"], safety_checker=None,
                                                    requires_safety_checker=False)
    plain.load_textual_inversion(str(sd_artifact / "astro.safetensors"))
    plain.load_textual_inversion(str(sd_artifact / "mirror.safetensors"))
    theirs = plain("<astro> and <mirror> at the beach", num_inference_steps=3, guidance_scale=10.0,
                   generator=torch.Generator("cpu").manual_seed(7)).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    # ... and the people matter: without the second person's embedding the image differs.
    other = plain("<astro> and a man at the beach", num_inference_steps=3, guidance_scale=10.0,
                  generator=torch.Generator("cpu").manual_seed(7)).images[0]
    assert not np.array_equal(np.asarray(ours), np.asarray(other))


def test_sdxl_artifact_loads_in_a_plain_sdxl_pipeline(tiny_models, astronaut_path, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    method = get_method("celeb-basis")
    out = method.personalize({"astro": [astronaut_path]}, tmp_path / "xl", "likeness/tiny-sdxl", max_steps=2, progress=False)
    state = load_file(out / "astro.safetensors")
    rank = read_coefficients(out)["astro"].shape[1]
    assert state["clip_l"].shape == (2, 32) and state["clip_g"].shape == (2, 32) and rank == 64
    ours = method.generate(out, ["{} reading"], [3], num_inference_steps=2)[0]
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_models["likeness/tiny-sdxl"])
    plain.load_textual_inversion(state["clip_l"], token="<astro>", text_encoder=plain.text_encoder, tokenizer=plain.tokenizer)
    plain.load_textual_inversion(state["clip_g"], token="<astro>", text_encoder=plain.text_encoder_2,
                                 tokenizer=plain.tokenizer_2)
    theirs = plain("<astro> reading", num_inference_steps=2, guidance_scale=method.load(out).manifest.sampling["guidance_scale"],
                   generator=torch.Generator("cpu").manual_seed(3)).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_photo_without_a_face_is_an_error_naming_the_file(tiny_models, tmp_path):
    blank = tmp_path / "wall.png"
    Image.new("RGB", (128, 128), (120, 130, 140)).save(blank)
    with pytest.raises(NoFaceError, match="wall.png: no face found"):
        get_method("celeb-basis").personalize({"nobody": [blank]}, tmp_path / "out", "likeness/tiny-sd", max_steps=1,
                                              progress=False)


def test_more_people_than_the_layer_supports_is_refused(tmp_path, sd_artifact):
    people = {f"p{i}": [tmp_path / f"{i}.jpg"] for i in range(11)}
    with pytest.raises(TooManyPeopleError, match="11 people given.*at most 10"):
        get_method("celeb-basis").personalize(people, tmp_path / "out", "likeness/tiny-sd")
    # An artifact whose manifest names a person the layer was not trained for.
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in sd_artifact.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    coefficients = load_file(broken / COEFFICIENTS_FILE)
    coefficients.pop("mirror")
    save_file(coefficients, str(broken / COEFFICIENTS_FILE), metadata={"rank": str(coefficients["astro"].shape[1])})
    with pytest.raises(TooManyPeopleError, match="trained for 1.*no coefficients for mirror"):
        get_method("celeb-basis").load(broken)


def test_basis_built_for_another_base_model_is_refused(sd_artifact, tiny_models, tmp_path):
    pipe = load_pipeline("likeness/tiny-sd")
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[10] *= -1  # same family, different weights
    pipe.save_pretrained(tmp_path / "other-sd")
    with pytest.raises(BasisMismatchError, match="built for a base model with token-embedding table hash"):
        get_method("celeb-basis").load(sd_artifact, base_model=str(tmp_path / "other-sd"))


def test_resumed_run_continues_the_same_moving_average(tiny_models, astronaut_path, tmp_path):
    config = dict(max_steps=4, learning_rate=1e-2, progress=False)

    def run(out_dir, **extra):
        pipe = load_pipeline("likeness/tiny-sd")
        setup, make_batch = _celeb_setup(astronaut_path, tmp_path, pipe)
        train(pipe, setup.trainable, make_batch, TrainingConfig(**config, **extra), out_dir, modules=setup.modules,
              after_step=setup.after_step)
        return setup.encoder

    straight = run(tmp_path / "straight")
    run(tmp_path / "interrupted", checkpoint_every=2)  # leaves its step-2 checkpoint behind
    assert [c.name for c in (tmp_path / "interrupted" / "checkpoints").iterdir()] == ["step-000002"]
    resumed = run(tmp_path / "interrupted", checkpoint_every=2)
    assert torch.allclose(resumed.ema, straight.ema, atol=1e-6)
    assert torch.allclose(resumed.linear.weight, straight.linear.weight, atol=1e-6)


def test_arcface_torch_face_features_train_differ_from_the_default_and_reproduce(tiny_models, two_photos, tmp_path,
                                                                                 one_thread):
    """``face_encoder=arcface-torch`` (the paper's iresnet features, here a random tiny iresnet as InsightFace exports
    it): the features are the iresnet's on the ArcFace-aligned crop, not dlib's; training runs and reproduces."""
    from likeness.faces import get_backend, largest_face_crop
    from likeness.faces.arcface_torch import ArcFaceEmbedder
    from likeness.testing.tiny_arcface import export_iresnet_onnx, random_iresnet
    from likeness.methods.celeb_basis.method import ENCODER_FILE, face_embedding

    net = random_iresnet(embedding=128)
    weights = export_iresnet_onnx(tmp_path / "w_ir.onnx", net)
    dlib = get_backend("dlib")
    default = face_embedding(two_photos["astro"], dlib)
    ours = face_embedding(two_photos["astro"], dlib, ArcFaceEmbedder(weights, device="cpu"))
    crop = largest_face_crop(np.asarray(Image.open(two_photos["astro"][0]).convert("RGB")), dlib)
    with torch.no_grad():
        by_hand = net(torch.from_numpy(np.asarray(crop.aligned, dtype=np.float32)).permute(2, 0, 1)[None].contiguous())[0]
    assert ours.shape == default.shape == (128,) and float(ours @ default) < 0.9
    assert torch.allclose(ours, torch.nn.functional.normalize(by_hand, dim=0), atol=1e-4)

    method = get_method("celeb-basis")
    runs = [method.personalize(two_photos, tmp_path / f"run{i}", "likeness/tiny-sd", max_steps=2, progress=False,
                               face_encoder="arcface-torch", face_weights=str(weights)) for i in range(2)]
    plain = method.personalize(two_photos, tmp_path / "plain", "likeness/tiny-sd", max_steps=2, progress=False)
    first, second, default_run = (read_coefficients(r) for r in (*runs, plain))
    for name in ("astro", "mirror"):
        assert torch.equal(first[name], second[name]) and not torch.allclose(first[name], default_run[name], atol=1e-3)
    with safe_open(str(runs[0] / ENCODER_FILE), "pt") as handle:
        assert handle.metadata()["face_encoder"] == "arcface-torch:w_ir.onnx"
    with safe_open(str(plain / ENCODER_FILE), "pt") as handle:
        assert handle.metadata()["face_encoder"] == "dlib"
    with pytest.raises(ValueError, match="needs face_weights"):
        method.personalize(two_photos, tmp_path / "bad", "likeness/tiny-sd", max_steps=1, face_encoder="arcface-torch")
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        method.personalize(two_photos, tmp_path / "bad2", "likeness/tiny-sd", max_steps=1, face_encoder="arcface-torch",
                           face_weights=str(tmp_path / "absent.onnx"))
