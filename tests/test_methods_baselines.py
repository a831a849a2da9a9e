"""Textual Inversion and DreamBooth-LoRA artifacts: plain diffusers reproduces them; bad input fails clearly."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from likeness.data.images import ImageError
from likeness.methods import ArtifactError, PromptPlaceholderError, UnknownMethodError, get_method, load_artifact, personalize
from likeness.methods.preparation import NoFaceError, prepare_photo
from likeness.models import FamilyMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain(tiny_models, model_id):
    pipe = DiffusionPipeline.from_pretrained(tiny_models[model_id])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _plain_image(pipe, prompt, seed):
    return np.asarray(pipe(prompt, num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(seed)).images[0], dtype=int)


def test_textual_inversion_artifact_loads_in_plain_diffusers(tiny_models, ti_artifact):
    manifest = json.loads((ti_artifact / "likeness.json").read_text())
    assert manifest["method"] == "textual-inversion"
    assert manifest["base_model"] == {"model_id": "likeness/tiny-sd", "family": "sd1", "revision": "tiny-v1"}
    assert manifest["identities"]["astro"]["tokens"] == ["<astro>", "<astro>_1"]
    assert manifest["likeness_version"]

    ours = load_artifact(ti_artifact)
    image = np.asarray(ours.generate(["{} sleeping on a couch"], [7], num_inference_steps=3)[0], dtype=int)
    plain = _plain(tiny_models, "likeness/tiny-sd")
    plain.load_textual_inversion(str(ti_artifact / "astro.safetensors"), token="<astro>")
    np.testing.assert_array_equal(image, _plain_image(plain, "<astro> sleeping on a couch", 7))
    # The learned token matters: the base model's own "person" gives another image.
    assert np.abs(image - _plain_image(plain, "person sleeping on a couch", 7)).max() > 0
    with pytest.raises(FamilyMismatchError, match="tiny-sdxl' is sdxl, but this artifact was made for sd1"):
        load_artifact(ti_artifact, base_model="likeness/tiny-sdxl")


def test_lora_artifact_loads_in_plain_diffusers(tiny_models, lora_artifact):
    ours = load_artifact(lora_artifact)
    images = ours.generate(["{} riding a horse", "{} riding a horse"], [5, 5], num_inference_steps=3, batch_size=2)
    mine = np.asarray(images[0], dtype=int)
    np.testing.assert_array_equal(mine, np.asarray(images[1], dtype=int))  # same seed, same image, even in a batch
    plain = _plain(tiny_models, "likeness/tiny-sd")
    without = _plain_image(plain, "sks person riding a horse", 5)
    plain.load_lora_weights(str(lora_artifact))  # unfused, as a plain user would
    with_lora = _plain_image(plain, "sks person riding a horse", 5)
    assert np.abs(mine - with_lora).max() <= 2  # fused vs unfused LoRA: rounding only
    assert np.abs(with_lora - without).max() > 2  # and the LoRA does change the image


@pytest.mark.parametrize("method", ["textual-inversion", "dreambooth-lora"])
def test_sdxl_artifacts_load_in_plain_diffusers(tiny_models, astronaut_path, tmp_path, method):
    out = personalize(method, {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sdxl", max_steps=2,
                      gradient_accumulation_steps=1, learning_rate=1e-2, progress=False)
    ours = load_artifact(out)
    assert ours.manifest.family == "sdxl"
    mine = np.asarray(ours.generate(["a photo of {}"], [3], num_inference_steps=3)[0], dtype=int)
    plain = _plain(tiny_models, "likeness/tiny-sdxl")
    if method == "textual-inversion":
        from safetensors.torch import load_file

        state = load_file(out / "astro.safetensors")
        plain.load_textual_inversion(state["clip_l"], token="<astro>", text_encoder=plain.text_encoder, tokenizer=plain.tokenizer)
        plain.load_textual_inversion(state["clip_g"], token="<astro>", text_encoder=plain.text_encoder_2, tokenizer=plain.tokenizer_2)
    else:
        plain.load_lora_weights(str(out))
    assert np.abs(mine - _plain_image(plain, ours.prompt("a photo of {}"), 3)).max() <= 2
    with pytest.raises(FamilyMismatchError, match="made for sdxl"):
        load_artifact(out, base_model="likeness/tiny-sd")


def test_prior_preservation_generates_class_images_once(tiny_models, astronaut_path, tmp_path):
    out = personalize("dreambooth-lora", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd", max_steps=2,
                      with_prior_preservation=True, num_class_images=2, class_inference_steps=2, progress=False)
    assert sorted(p.name for p in (out / "class_images").iterdir()) == ["class-0000.png", "class-0001.png"]
    assert load_artifact(out).manifest.config["options"]["with_prior_preservation"] is True


def test_prompt_without_placeholder_is_refused(ti_artifact):
    with pytest.raises(PromptPlaceholderError, match="no '\\{\\}' placeholder"):
        load_artifact(ti_artifact).generate(["a person on a couch"], [0], num_inference_steps=2)


def test_unknown_method_and_option_are_refused(tiny_models, astronaut_path, tmp_path):
    with pytest.raises(UnknownMethodError, match="known methods: .*textual-inversion"):
        get_method("hypernetwork")
    with pytest.raises(ValueError, match="unknown option\\(s\\) rnak"):
        personalize("dreambooth-lora", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd", rnak=8)


def test_unfinished_artifact_says_to_resume(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ArtifactError, match="rerun the same"):
        load_artifact(tmp_path)


def test_finished_artifact_is_not_overwritten(ti_artifact, astronaut_path):
    with pytest.raises(FileExistsError, match="already holds a finished artifact"):
        personalize("textual-inversion", {"astro": [astronaut_path]}, ti_artifact, "likeness/tiny-sd")


def test_photo_without_face_is_an_error_naming_the_file(tiny_models, tmp_path):
    blank = tmp_path / "wall.png"
    Image.new("RGB", (160, 160), (120, 130, 140)).save(blank)
    with pytest.raises(NoFaceError, match="wall.png: no face found"):
        personalize("textual-inversion", {"wall": [blank]}, tmp_path / "a", "likeness/tiny-sd", max_steps=1)


def test_unreadable_photo_is_an_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageError, match="broken.jpg"):
        prepare_photo(bad)


def test_several_faces_uses_the_largest_and_says_so(astronaut_path, caplog):
    with caplog.at_level(logging.WARNING):
        photo = prepare_photo(astronaut_path, size=128)
    assert photo.n_faces >= 2
    assert "using the largest" in caplog.text and str(astronaut_path) in caplog.text
    # The crop is centred on the chosen face: the face mask sits in the middle of the crop.
    ys, xs = np.nonzero(photo.face_mask)
    assert abs(xs.mean() - 64) < 4 and abs(ys.mean() - 64) < 12
    assert photo.person_mask.sum() > photo.face_mask.sum()


def test_unusable_photo_is_skipped_with_a_note_when_others_remain(tiny_models, astronaut_path, tmp_path):
    blank = tmp_path / "wall.png"
    Image.new("RGB", (160, 160), (120, 130, 140)).save(blank)
    out = personalize("textual-inversion", {"astro": [astronaut_path, blank]}, tmp_path / "a", "likeness/tiny-sd",
                      max_steps=1, gradient_accumulation_steps=1, progress=False)
    manifest = load_artifact(out).manifest
    # file names and content hashes, never local paths: the artifact folder can be shared
    assert manifest.identities["astro"].photos == ["astronaut.jpg"]
    assert manifest.identities["astro"].photo_sha256 == [hashlib.sha256(astronaut_path.read_bytes()).hexdigest()]
    assert any("wall.png: no face found" in note for note in manifest.config["notes"])
    assert str(tmp_path) not in (out / "likeness.json").read_text() and str(astronaut_path.parent) not in (out / "likeness.json").read_text()
