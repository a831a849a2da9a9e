"""Custom Diffusion on a composed dataset: the loss goes down, only K/V and new tokens move, the
artifact loads in plain diffusers, and review rejections are honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from likeness.compose import ComposedDataset, compose_dataset
from likeness.compose.bench import training_set
from likeness.compose.train import train_on_dataset
from likeness.methods import get_method, load_artifact
from likeness.methods.baselines.custom_diffusion import LEGACY_WEIGHTS, WEIGHTS, captioned_batches, load_pixels
from likeness.methods.training import TrainingConfig, diffusion_loss, step_generator, train
from likeness.models import load_pipeline
from test_compose_pipeline import make_concepts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def dataset(tmp_path, tiny_models):
    concepts = make_concepts(tmp_path / "concepts", {"mochi": ("dog", (50, 36)), "kettle": ("teapot", (30, 40))})
    compose_dataset(concepts, tmp_path / "ds", 4, canvas=(64, 64), seed=3, progress=False)
    return ComposedDataset(tmp_path / "ds")


def _fixed_loss(pipe, make_batch, n=6):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        return float(np.mean([diffusion_loss(pipe, scheduler, make_batch(0, 0, np.random.default_rng(i)),
                                             step_generator(99, i, 0, 0)).item() for i in range(n)]))


def test_training_reduces_loss_and_moves_only_kv_and_new_tokens(dataset, tmp_path):
    method = get_method("custom-diffusion")
    pipe = load_pipeline("likeness/tiny-sd")
    base_unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    setup = method.setup(pipe, ["mochi", "kettle"], {**method.defaults, "class_nouns": {"mochi": "dog", "kettle": "teapot"},
                                                      "global_token": "<gen4gen>"})
    examples = training_set(dataset)["examples"]
    make_batch = captioned_batches(load_pixels([p for p, _ in examples], 64), [c for _, c in examples], 1)
    table = pipe.text_encoder.get_input_embeddings().weight
    before_table = table.detach().clone()
    before = _fixed_loss(pipe, make_batch)
    train(pipe, setup.trainable, make_batch, TrainingConfig(max_steps=20, learning_rate=3e-2, progress=False),
          tmp_path / "run", modules=setup.modules, after_step=setup.after_step)
    after_loss = _fixed_loss(pipe, make_batch)
    assert after_loss < before - 0.005
    unet_names = [n for n in setup.trainable if n.startswith("unet.")]
    assert unet_names and all("attn2.processor.to_" in n and "_custom_diffusion" in n for n in unet_names)
    assert not any("to_q_custom" in n or "to_out_custom" in n for n in unet_names)
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_unet.items())  # original weights untouched
    new_ids = pipe.tokenizer.convert_tokens_to_ids(["<mochi>", "<kettle>", "<gen4gen>"])
    changed = (table.detach() != before_table).any(dim=1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(new_ids)


def test_artifact_loads_in_plain_diffusers(dataset, tmp_path, tiny_models):
    from diffusers import StableDiffusionPipeline

    dataset.reject(["c000001"], reason="test")
    art = train_on_dataset(dataset, tmp_path / "art", "likeness/tiny-sd", max_steps=4, learning_rate=1e-2,
                           batch_size=1, progress=False)
    manifest = load_artifact(art).manifest
    assert manifest.method == "custom-diffusion" and manifest.config["examples"] == 3  # the rejection was honoured
    assert manifest.identities["mochi"].subject == "<mochi> dog"
    assert manifest.config["options"]["global_token"] == "<gen4gen>"

    prompt = "<gen4gen> a photo of <mochi> dog and <kettle> teapot, in the background a garden"
    plain = StableDiffusionPipeline.from_pretrained(tiny_models["likeness/tiny-sd"], safety_checker=None,
                                                    requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    plain.unet.load_attn_procs(str(art), weight_name=WEIGHTS, _pipeline=plain)  # see the module docstring
    for token in ("<mochi>", "<kettle>", "<gen4gen>"):
        plain.load_textual_inversion(str(art / f"{token.strip('<>')}.safetensors"), token=token)
    processors = plain.unet.attn_processors
    cross = [p for n, p in processors.items() if "attn2" in n]
    assert cross and all(type(p).__name__ == "CustomDiffusionAttnProcessor" for p in cross)
    kwargs = dict(num_inference_steps=2, guidance_scale=6.0, height=64, width=64, output_type="np")
    ours = load_artifact(art).pipe(prompt, generator=torch.Generator("cpu").manual_seed(0), **kwargs).images[0]
    theirs = plain(prompt, generator=torch.Generator("cpu").manual_seed(0), **kwargs).images[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    base = load_pipeline("likeness/tiny-sd")
    untrained = base(prompt.replace("<mochi>", "").replace("<kettle>", "").replace("<gen4gen>", ""),
                     generator=torch.Generator("cpu").manual_seed(0), **kwargs).images[0]
    assert np.abs(theirs - untrained).max() > 1e-3  # the trained weights and tokens change the image


def test_weights_are_safetensors_in_diffusers_layout_and_old_bin_artifacts_still_load(dataset, tmp_path):
    """safetensors holds the self-attention entries as empty tensors; every key and tensor is what
    diffusers' own ``save_attn_procs(.bin)`` writes, and a .bin-only artifact loads to the same pixels."""
    import shutil

    from safetensors.torch import load_file

    art = train_on_dataset(dataset, tmp_path / "art", "likeness/tiny-sd", max_steps=2, learning_rate=1e-2,
                           batch_size=1, progress=False)
    assert WEIGHTS.endswith(".safetensors") and not (art / LEGACY_WEIGHTS).exists()
    ours = load_file(art / WEIGHTS)
    loaded = load_artifact(art)
    loaded.pipe.unet.save_attn_procs(str(tmp_path / "bin"), weight_name=LEGACY_WEIGHTS, safe_serialization=False)
    theirs = torch.load(tmp_path / "bin" / LEGACY_WEIGHTS, weights_only=True)
    assert set(ours) == set(theirs)
    empty = [k for k, v in theirs.items() if isinstance(v, dict)]
    assert empty and all(k.endswith("attn1.processor") and ours[k].numel() == 0 for k in empty)
    assert all(torch.equal(ours[k], v) for k, v in theirs.items() if not isinstance(v, dict))

    legacy = tmp_path / "legacy"
    shutil.copytree(art, legacy)
    (legacy / WEIGHTS).unlink()
    shutil.copy(tmp_path / "bin" / LEGACY_WEIGHTS, legacy / LEGACY_WEIGHTS)
    prompt = "<gen4gen> a photo of <mochi> dog and <kettle> teapot"
    kwargs = dict(num_inference_steps=2, height=64, width=64, output_type="np")
    a = loaded.pipe(prompt, generator=torch.Generator("cpu").manual_seed(1), **kwargs).images[0]
    b = load_artifact(legacy).pipe(prompt, generator=torch.Generator("cpu").manual_seed(1), **kwargs).images[0]
    np.testing.assert_array_equal(a, b)


def test_prior_preservation_adds_class_images_and_their_weighted_loss(dataset, tmp_path, monkeypatch):
    """Class images per class noun (generated once), one per instance image in every batch, and the loss
    is instance + prior_loss_weight x prior, checked against the unweighted batch mean by hand."""
    from dataclasses import replace

    from diffusers import DDPMScheduler

    from likeness.methods import training

    method = get_method("custom-diffusion")
    pipe = load_pipeline("likeness/tiny-sd")
    options = {**method.defaults, "class_nouns": {"mochi": "dog", "kettle": "teapot"}, "with_prior_preservation": True,
               "num_class_images": 2, "class_inference_steps": 1, "out_dir": tmp_path / "art"}
    setup = method.setup(pipe, ["mochi", "kettle"], options)
    assert [sorted(q.name for q in (tmp_path / "art" / "class_images" / noun).iterdir()) for noun in ("dog", "teapot")] \
        == [["class-0000.png", "class-0001.png"]] * 2
    examples = training_set(dataset)["examples"]
    make = setup.wrap_batches(captioned_batches(load_pixels([p for p, _ in examples], 64), [c for _, c in examples], 1))
    batch = make(0, 0, np.random.default_rng(0))
    assert batch.pixels.shape[0] == 2 and batch.prior.tolist() == [False, True]
    assert batch.captions[0] in [c for _, c in examples] and batch.captions[1] in ("a photo of a dog", "a photo of a teapot")

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def loss(b, w=1.0):
        with torch.no_grad():
            return training.diffusion_loss(pipe, scheduler, b, step_generator(5, 0, 0, 1), prior_loss_weight=w).item()

    mean_of_two = loss(replace(batch, prior=None))  # (instance + prior) / 2
    instance = loss(batch, 0.0)
    assert loss(batch, 1.0) == pytest.approx(2 * mean_of_two, rel=1e-5)
    assert loss(batch, 0.5) == pytest.approx(instance + 0.5 * (2 * mean_of_two - instance), rel=1e-5)
    assert abs(2 * mean_of_two - 2 * instance) > 1e-4  # the prior term is not nothing

    seen = []
    real = training.diffusion_loss

    def spy(pipe, scheduler, batch, generator, **kw):
        seen.append((batch.prior.tolist(), kw["prior_loss_weight"]))
        return real(pipe, scheduler, batch, generator, **kw)

    monkeypatch.setattr(training, "diffusion_loss", spy)
    art = train_on_dataset(dataset, tmp_path / "trained", "likeness/tiny-sd", max_steps=2, batch_size=1, progress=False,
                           with_prior_preservation=True, num_class_images=1, class_inference_steps=1, prior_loss_weight=0.7)
    assert seen == [([False, True], 0.7)] * 2  # the training loop itself gets the class images and the weight
    assert load_artifact(art).manifest.config["options"]["with_prior_preservation"] is True

    from likeness.methods.baselines.custom_diffusion import prior_images

    real_dogs = [q for q, _ in examples][:2]  # any real images: the paper retrieves them
    folder = tmp_path / "dogs"
    folder.mkdir()
    for k, q in enumerate(real_dogs):
        (folder / f"{k}.png").write_bytes(Path(q).read_bytes())
    given = {"class_data_dir": {"dog": str(folder)}, "num_class_images": 5, "out_dir": tmp_path / "x"}
    assert prior_images(pipe, ["dog"], given) == [(folder / "0.png", "a photo of a dog"), (folder / "1.png", "a photo of a dog")]
    with pytest.raises(FileNotFoundError, match="nowhere: no class images for 'dog'"):
        prior_images(pipe, ["dog"], {**given, "class_data_dir": {"dog": str(tmp_path / "nowhere")}})


def test_every_composition_rejected_is_a_clear_error(dataset, tmp_path):
    dataset.reject([e.id for e in dataset.entries()])
    with pytest.raises(ValueError, match="no training examples"):
        train_on_dataset(dataset, tmp_path / "art", "likeness/tiny-sd", max_steps=1, progress=False)


def test_sdxl_artifact_trains_and_loads(dataset, tmp_path):
    art = train_on_dataset(dataset, tmp_path / "xl", "likeness/tiny-sdxl", max_steps=1, batch_size=1, progress=False)
    loaded = load_artifact(art)
    assert loaded.manifest.family == "sdxl"
    assert all(type(p).__name__ == "CustomDiffusionAttnProcessor" for n, p in loaded.pipe.unet.attn_processors.items()
               if "attn2" in n)
    tokens = loaded.pipe.tokenizer_2.convert_tokens_to_ids(["<mochi>", "<kettle>"])
    assert all(t != loaded.pipe.tokenizer_2.unk_token_id for t in tokens)  # tokens in both text encoders
    image = loaded.pipe("<gen4gen> a photo of <mochi> dog", num_inference_steps=1, height=64, width=64,
                        generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert image.size == (64, 64)
