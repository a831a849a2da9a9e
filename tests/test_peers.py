"""Tuning-free peers (IP-Adapter, IP-Adapter-FaceID, InstantID, PhotoMaker) on tiny models with tiny weights in
the published key layouts: they load through the user's code path, change the image, match plain diffusers,
reproduce pixels after artifact save/load, and refuse wrong files by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from likeness.data.names import name_key
from likeness.testing.tiny_arcface import face_image as _face_image
from likeness.methods import ArtifactError, load_artifact, personalize
from likeness.testing.peer_layouts import clip_vision_encoder, ip_adapter_state, save_published
from likeness.methods.peers.common import CheckpointError, MissingFaceModelError, empty_unet
from likeness.methods.preparation import NoFaceError

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a photo of {}"
STEPS = 3


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


def _plain(tiny_models, model_id):
    pipe = DiffusionPipeline.from_pretrained(tiny_models[model_id])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_steps(pipe, prompt, seed, steps, **kwargs):
    return _pixels(pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images[0])


def _run(pipe, prompt, seed, **kwargs):
    return _pixels(pipe(prompt, num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images[0])


@pytest.fixture(scope="module")
def weights(tiny_models, tmp_path_factory):
    """A published-style folder: models/<ip-adapter files> + models/image_encoder/, for tiny-sd and tiny-sdxl."""
    root = tmp_path_factory.mktemp("h94")
    clip_vision_encoder(root / "models" / "image_encoder")
    sd, sdxl = empty_unet("likeness/tiny-sd"), empty_unet("likeness/tiny-sdxl")
    files = {
        "plain": save_published(ip_adapter_state(sd, "plain", embed=32), root / "models" / "ip-adapter_sd15.safetensors"),
        "plus-face": save_published(ip_adapter_state(sd, "resampler", embed=32, seed=1),
                                    root / "models" / "ip-adapter-plus-face_sd15.safetensors"),
        "sdxl-plus-face": save_published(ip_adapter_state(sdxl, "resampler", embed=32, seed=2),
                                         root / "models" / "ip-adapter-plus-face_sdxl_vit-h.safetensors"),
        "faceid": save_published(ip_adapter_state(sd, "faceid", embed=32, face_dim=16, lora_rank=4, seed=3),
                                 root / "faceid" / "ip-adapter-faceid_sd15.bin"),
        "faceid-plusv2": save_published(ip_adapter_state(sd, "faceid-plus", embed=32, face_dim=16, lora_rank=4, seed=4),
                                        root / "faceid" / "ip-adapter-faceid-plusv2_sd15.bin"),
    }
    return {"root": root, "encoder": root / "models" / "image_encoder", **files}


# -- IP-Adapter ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["plain", "plus-face"])
def test_ip_adapter_matches_diffusers_and_reproduces_after_save_load(tiny_models, weights, astronaut_path, tmp_path, variant):
    art = personalize("ip-adapter", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd", variant=variant,
                      weights=str(weights[variant]), scale=0.8)
    manifest = json.loads((art / "likeness.json").read_text())
    record = manifest["config"]["weights"][0]
    assert record["path"] == str(weights[variant].resolve()) and len(record["sha256"]) == 64
    assert manifest["identities"]["astro"]["subject"] == "a person" and manifest["config"]["tuning_free"]
    embeds = load_file(str(art / "embeddings.safetensors"))
    assert embeds["astro.image_embeds"].shape == ((1, 1, 32) if variant == "plain" else (1, 1, 17, 32))

    ours = load_artifact(art)
    two = ours.generate([PROMPT, PROMPT], [3, 3], num_inference_steps=STEPS, batch_size=2)
    mine = _pixels(two[0])
    np.testing.assert_array_equal(mine, _pixels(two[1]))  # a batch gets the person's embeddings per image
    mine = _pixels(ours.generate([PROMPT], [3], num_inference_steps=STEPS)[0])
    assert np.abs(mine - _pixels(two[0])).max() <= 2  # batch of 2 vs 1: float reduction order only
    again = load_artifact(art).generate([PROMPT], [3], num_inference_steps=STEPS)[0]
    np.testing.assert_array_equal(mine, _pixels(again))  # save/load reproduces pixels exactly

    plain = _plain(tiny_models, "likeness/tiny-sd")
    without = _run(plain, "a photo of a person", 3)
    assert np.abs(mine - without).max() > 10  # the adapter changes the image
    # Plain diffusers, encoding the saved crop itself with its own image encoder: the same pixels.
    plain.load_ip_adapter(str(weights["root"]), subfolder="models", weight_name=weights[variant].name)
    plain.set_ip_adapter_scale(0.8)
    reference = _run(plain, "a photo of a person", 3, ip_adapter_image=Image.open(art / "astro-crop.png"))
    np.testing.assert_array_equal(mine, reference)


def test_ip_adapter_sdxl_from_a_folder(tiny_models, weights, astronaut_path, tmp_path):
    """Weights given as the repository folder: the published file name for SDXL plus-face is found in models/."""
    art = personalize("ip-adapter", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sdxl",
                      weights=str(weights["root"]))
    assert Path(json.loads((art / "likeness.json").read_text())["config"]["weights"][0]["path"]).name == \
        "ip-adapter-plus-face_sdxl_vit-h.safetensors"
    mine = _pixels(load_artifact(art).generate([PROMPT], [5], num_inference_steps=STEPS)[0])
    plain = _plain(tiny_models, "likeness/tiny-sdxl")
    without = _run(plain, "a photo of a person", 5)
    plain.load_ip_adapter(str(weights["root"]), subfolder="models", weight_name="ip-adapter-plus-face_sdxl_vit-h.safetensors")
    reference = _run(plain, "a photo of a person", 5, ip_adapter_image=Image.open(art / "astro-crop.png"))
    np.testing.assert_array_equal(mine, reference)
    assert np.abs(mine - without).max() > 10


# -- IP-Adapter-FaceID --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["faceid", "faceid-plusv2"])
def test_faceid_uses_the_arcface_embedding_and_fuses_its_lora(tiny_models, weights, arcface_dir, face_photos, tmp_path, variant):
    extra = {"image_encoder": str(weights["encoder"])} if variant != "faceid" else {}
    common = dict(variant=variant, weights=str(weights[variant]), face_model_dir=str(arcface_dir), **extra)
    art = personalize("ip-adapter-faceid", {"ann": [face_photos["ann"]], "bob": [face_photos["bob"]]}, tmp_path / "a",
                      "likeness/tiny-sd", **common)
    embeds = load_file(str(art / "embeddings.safetensors"))
    from likeness.faces import get_backend

    backend = get_backend("arcface", model_dir=str(arcface_dir.resolve()))
    image = np.asarray(Image.open(face_photos["ann"]).convert("RGB"))
    face = backend.embed(image, backend.detect(image)[:1])[0]
    np.testing.assert_allclose(embeds["ann.image_embeds"][0, 0].numpy(), face.embedding, atol=1e-6)  # the ArcFace vector itself

    ours = load_artifact(art)
    ann = _pixels(ours.generate([PROMPT], [3], identity="ann", num_inference_steps=STEPS)[0])
    bob = _pixels(ours.generate([PROMPT], [3], identity="bob", num_inference_steps=STEPS)[0])
    assert np.abs(ann - bob).max() > 0  # the face embedding drives the image
    np.testing.assert_array_equal(ann, _pixels(load_artifact(art).generate([PROMPT], [3], identity="ann", num_inference_steps=STEPS)[0]))

    plain = _plain(tiny_models, "likeness/tiny-sd")
    without = _run(plain, "a photo of a person", 3)
    plain.load_ip_adapter(str(weights[variant].parent), subfolder="", weight_name=weights[variant].name, image_encoder_folder=None)
    assert any(a.startswith("faceid_") for a in plain.unet.peft_config)  # diffusers found the published LoRA
    ids = torch.cat([embeds["ann.negative_image_embeds"], embeds["ann.image_embeds"]])
    if variant != "faceid":
        layer = plain.unet.encoder_hid_proj.image_projection_layers[0]
        layer.clip_embeds = torch.cat([embeds["ann.negative_clip_embeds"], embeds["ann.clip_embeds"]])
        layer.shortcut = True
    reference = _run(plain, "a photo of a person", 3, ip_adapter_image_embeds=[ids])
    assert np.abs(ann - reference).max() <= 2  # fused (ours) vs unfused LoRA (plain diffusers): rounding only
    assert np.abs(ann - without).max() > 10

    no_lora = personalize("ip-adapter-faceid", {"ann": [face_photos["ann"]]}, tmp_path / "b", "likeness/tiny-sd",
                          lora_scale=0.0, **common)
    assert np.abs(_pixels(load_artifact(no_lora).generate([PROMPT], [3], num_inference_steps=STEPS)[0]) - ann).max() > 2


# -- bad input: clear errors before any generation -------------------------------------------------------


def _refused(tmp_path, match, method="ip-adapter", base="likeness/tiny-sd", photo=None, error=CheckpointError, **options):
    out = tmp_path / "refused"
    with pytest.raises(error, match=match):
        personalize(method, {"p": [photo]}, out, base, **options)
    assert not (out / "likeness.json").exists()


def test_wrong_keys_and_shapes_are_named(weights, astronaut_path, tmp_path):
    state = load_file(str(weights["plus-face"]))
    renamed = dict(state)
    renamed["image_proj.layers.2.0.to_qq.weight"] = renamed.pop("image_proj.layers.2.0.to_q.weight")
    bad = save_published(renamed, tmp_path / "renamed.safetensors")
    _refused(tmp_path, r"missing keys: image_proj\.layers\.2\.0\.to_q\.weight; unexpected keys: image_proj\.layers\.2\.0\.to_qq",
             photo=astronaut_path, weights=str(bad))
    reshaped = dict(state)
    reshaped["ip_adapter.3.to_v_ip.weight"] = torch.zeros(64, 16)
    bad = save_published(reshaped, tmp_path / "reshaped.bin")
    _refused(tmp_path, r"wrong shapes: ip_adapter\.3\.to_v_ip\.weight is \(64, 16\), expected \(64, 32\)",
             photo=astronaut_path, weights=str(bad))
    dropped = {k: v for k, v in state.items() if k != "ip_adapter.1.to_k_ip.weight"}
    _refused(tmp_path, r"missing keys: ip_adapter\.1\.to_k_ip\.weight", photo=astronaut_path,
             weights=str(save_published(dropped, tmp_path / "dropped.safetensors")))


def test_other_base_model_and_other_variant_are_refused(weights, astronaut_path, arcface_dir, tmp_path):
    _refused(tmp_path, "made for cross-attention dim 32.*this base model's UNet has cross-attention dim 64",
             base="likeness/tiny-sdxl", photo=astronaut_path, weights=str(weights["plus-face"]))
    _refused(tmp_path, "is an IP-Adapter \\(plain\\) file, but variant 'plus-face' needs", photo=astronaut_path,
             weights=str(weights["plain"]), variant="plus-face")
    _refused(tmp_path, "is an IP-Adapter-FaceID file, but variant 'faceid-plusv2'", method="ip-adapter-faceid",
             photo=astronaut_path, weights=str(weights["faceid"]), variant="faceid-plusv2", face_model_dir=str(arcface_dir),
             image_encoder=str(weights["encoder"]))
    _refused(tmp_path, "not an IP-Adapter file", photo=astronaut_path,
             weights=str(save_published({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")))


def test_no_face_missing_face_model_and_missing_weights(weights, face_photos, arcface_dir, tmp_path):
    _refused(tmp_path, "wall.png: no face found", error=NoFaceError, photo=face_photos["wall"], weights=str(weights["plus-face"]))
    _refused(tmp_path, "wall.png: no face found", method="ip-adapter-faceid", error=NoFaceError, photo=face_photos["wall"],
             weights=str(weights["faceid"]), face_model_dir=str(arcface_dir))
    _refused(tmp_path, "needs an ArcFace model folder.*face_model_dir", method="ip-adapter-faceid", error=MissingFaceModelError,
             photo=face_photos["ann"], weights=str(weights["faceid"]))
    _refused(tmp_path, "absent.*ArcFace model folder does not exist", method="ip-adapter-faceid", error=MissingFaceModelError,
             photo=face_photos["ann"], weights=str(weights["faceid"]), face_model_dir=str(tmp_path / "absent"))
    _refused(tmp_path, "no such file or folder, and not a hub id", error=FileNotFoundError, photo=face_photos["ann"],
             weights=str(tmp_path / "nowhere.safetensors"))
    _refused(tmp_path, "hub repository did not provide.*HF_HUB_OFFLINE", error=FileNotFoundError, photo=face_photos["ann"],
             weights="someone/ip-adapter-copy")


def test_photo_with_several_faces_encodes_the_largest_and_says_so(weights, face_photos, arcface_dir, tmp_path, capsys):
    """Several faces in a photo: the largest is encoded (as the published pipelines do); more photos than the
    published pipeline takes: the first is encoded. The artifact's manifest and stderr say so, naming the photos and
    the fix; the manifest keeps file names and hashes, never local paths."""
    group = tmp_path / "photos" / "two people.png"
    group.parent.mkdir()
    pixels = _face_image(0)
    pixels[96:112, 64:80] = 255  # a second face: another stride-32 cell of the tiny detector's canvas
    Image.fromarray(pixels).save(group)
    art = personalize("ip-adapter-faceid", {"Ann O'Neil": [group, face_photos["bob"]]}, tmp_path / "a", "likeness/tiny-sd",
                      variant="faceid", weights=str(weights["faceid"]), face_model_dir=str(arcface_dir))
    manifest = json.loads((art / "likeness.json").read_text())
    key = name_key("Ann O'Neil")
    photos, faces = manifest["config"]["notes"]
    assert photos == f"{key}: 2 photos given; ip-adapter-faceid encodes 1 as published (two people.png), the others are not used"
    assert faces.startswith("two people.png: 2 faces found; encoded the largest") and "crop the photo" in faces
    assert "two people.png: 2 faces found" in capsys.readouterr().err
    assert manifest["identities"][key]["photos"] == ["two people.png", "bob.png"]
    assert manifest["identities"][key]["display"] == "Ann O'Neil"
    assert len(manifest["identities"][key]["photo_sha256"]) == 2
    assert str(group.parent) not in (art / "likeness.json").read_text()
    # The person is found by the name as given, as by its key (bench passes either).
    ours = load_artifact(art)
    by_name = _pixels(ours.generate([PROMPT], [3], identity="Ann O'Neil", num_inference_steps=STEPS)[0])
    np.testing.assert_array_equal(by_name, _pixels(ours.generate([PROMPT], [3], identity=key, num_inference_steps=STEPS)[0]))


def test_changed_weights_file_is_refused_at_load(weights, astronaut_path, tmp_path):
    copy = tmp_path / "w.safetensors"
    shutil.copy(weights["plain"], copy)
    art = personalize("ip-adapter", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd", variant="plain",
                      weights=str(copy), image_encoder=str(weights["encoder"]))
    state = load_file(str(copy))
    state["image_proj.norm.bias"] = state["image_proj.norm.bias"] + 1
    save_published(state, copy)
    with pytest.raises(ArtifactError, match="w.safetensors changed since the artifact was made"):
        load_artifact(art)
    copy.unlink()
    with pytest.raises(ArtifactError, match="w.safetensors, which no longer exists"):
        load_artifact(art)


def _recogniser_output(arcface_dir, photo) -> np.ndarray:
    """By hand: the ArcFace-aligned 112 px crop of the largest face, normalised, through the recogniser's ONNX session."""
    from likeness.data.images import image_to_array, load_image
    from likeness.faces import get_backend
    from likeness.faces.align import similarity_transform, template, warp

    backend = get_backend("arcface", model_dir=str(Path(arcface_dir).resolve()))
    array = image_to_array(load_image(photo))
    face = max(backend.detect(array), key=lambda f: f.area)
    crop = np.asarray(warp(array, similarity_transform(face.landmarks, template(112)), 112), dtype=np.float32)
    blob = ((crop - 127.5) / 127.5).transpose(2, 0, 1)[None].astype(np.float32)
    session = backend.recogniser
    return session.run(None, {session.get_inputs()[0].name: blob})[0][0]


# -- InstantID ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instantid_weights(tiny_models, tmp_path_factory):
    """The published InstantX/InstantID layout: ip-adapter.bin + ControlNetModel/ (tiny, random)."""
    from likeness.testing.peer_layouts import identitynet

    root = tmp_path_factory.mktemp("instantid")
    identitynet("likeness/tiny-sdxl", root / "ControlNetModel", conditioning_channels=(16, 32))
    save_published(ip_adapter_state(empty_unet("likeness/tiny-sdxl"), "resampler", embed=16, queries=16, seed=5),
                   root / "ip-adapter.bin")
    return root


def test_keypoint_drawing_matches_the_published_recipe():
    from likeness.methods.peers.instantid import KEYPOINT_COLOURS, draw_keypoints

    points = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], dtype=float)
    image = np.asarray(draw_keypoints(points, (100, 120)))
    assert image.shape == (120, 100, 3)
    for (x, y), colour in zip(points.astype(int), KEYPOINT_COLOURS):
        assert tuple(image[y, x]) == colour  # a full-colour dot on each point
    assert tuple(image[50, 40]) == (153, 0, 0)  # the left-eye stick at 60 %, half-way to the nose
    assert tuple(image[5, 5]) == (0, 0, 0)


def test_instantid_identitynet_sees_the_identity_and_reproduces(tiny_models, instantid_weights, arcface_dir, face_photos, tmp_path):
    people = {"ann": [face_photos["ann"]], "bob": [face_photos["bob"]]}
    common = dict(weights=str(instantid_weights), face_model_dir=str(arcface_dir))
    art = personalize("instantid", people, tmp_path / "a", "likeness/tiny-sdxl", **common)
    roles = [r["role"] for r in json.loads((art / "likeness.json").read_text())["config"]["weights"]]
    assert roles == ["instantid ip-adapter weights", "instantid IdentityNet weights"]
    # The published recipe feeds InsightFace's raw ``embedding`` (not ``normed_embedding``): the recogniser's output as is.
    raw = _recogniser_output(arcface_dir, face_photos["ann"])
    stored = load_file(str(art / "embeddings.safetensors"))["ann.image_embeds"].flatten()
    np.testing.assert_allclose(stored.numpy(), raw, rtol=1e-5, atol=1e-6)
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.1  # not the unit vector the identity metrics use
    ours = load_artifact(art)
    ann = _pixels(ours.generate([PROMPT], [4], identity="ann", num_inference_steps=STEPS)[0])
    np.testing.assert_array_equal(ann, _pixels(load_artifact(art).generate([PROMPT], [4], identity="ann", num_inference_steps=STEPS)[0]))
    without = _run(_plain(tiny_models, "likeness/tiny-sdxl"), "a photo of a person", 4)
    assert np.abs(ann - without).max() > 10

    # With the UNet's IP-Adapter off, the two people (same keypoints, other faces) still differ: only through
    # IdentityNet, whose cross-attention gets the identity tokens instead of the text.
    off = personalize("instantid", people, tmp_path / "b", "likeness/tiny-sdxl", scale=0.0, **common)
    e = load_file(str(off / "embeddings.safetensors"))
    np.testing.assert_allclose(e["ann.keypoints"].numpy(), e["bob.keypoints"].numpy())
    pipe = load_artifact(off)
    a, b = (_pixels(pipe.generate([PROMPT], [4], identity=n, num_inference_steps=STEPS)[0]) for n in ("ann", "bob"))
    assert np.abs(a - b).max() > 0
    none = personalize("instantid", people, tmp_path / "c", "likeness/tiny-sdxl", scale=0.0, controlnet_scale=0.0, **common)
    pipe = load_artifact(none)
    a, b = (_pixels(pipe.generate([PROMPT], [4], identity=n, num_inference_steps=STEPS)[0]) for n in ("ann", "bob"))
    np.testing.assert_array_equal(a, b)  # both adapters off: the person no longer matters


def test_instantid_bad_input(tiny_models, instantid_weights, arcface_dir, face_photos, astronaut_path, tmp_path):
    from likeness.testing.peer_layouts import identitynet

    common = dict(method="instantid", base="likeness/tiny-sdxl", weights=str(instantid_weights))
    _refused(tmp_path, "is published for SDXL only", error=ValueError, photo=face_photos["ann"], face_model_dir=str(arcface_dir),
             method="instantid", weights=str(instantid_weights))
    _refused(tmp_path, "needs an ArcFace model folder", error=MissingFaceModelError, photo=face_photos["ann"], **common)
    _refused(tmp_path, "wall.png: no face found", error=NoFaceError, photo=face_photos["wall"], face_model_dir=str(arcface_dir), **common)
    other = identitynet("likeness/tiny-sd", tmp_path / "sd-controlnet", conditioning_channels=(16, 32))
    _refused(tmp_path, "IdentityNet made for another base model; cross_attention_dim: IdentityNet 32, UNet 64",
             photo=face_photos["ann"], face_model_dir=str(arcface_dir), controlnet=str(other), **common)
    broken = tmp_path / "broken-controlnet"
    shutil.copytree(instantid_weights / "ControlNetModel", broken)
    state = load_file(str(broken / "diffusion_pytorch_model.safetensors"))
    state.pop("controlnet_mid_block.weight")
    save_published(state, broken / "diffusion_pytorch_model.safetensors")
    _refused(tmp_path, "missing keys: controlnet_mid_block.weight", photo=face_photos["ann"], face_model_dir=str(arcface_dir),
             controlnet=str(broken), **common)
    state["controlnet_mid_block.weight"] = torch.zeros(3, 3, 1, 1)  # shapes come from the safetensors header alone
    save_published(state, broken / "diffusion_pytorch_model.safetensors")
    _refused(tmp_path, r"wrong shapes: controlnet_mid_block\.weight is \(3, 3, 1, 1\), expected \(64, 64, 1, 1\)",
             photo=face_photos["ann"], face_model_dir=str(arcface_dir), controlnet=str(broken), **common)
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    _refused(tmp_path, "diffusion_pytorch_model.safetensors: cannot read as a weights file", photo=face_photos["ann"],
             face_model_dir=str(arcface_dir), controlnet=str(broken), **common)


# -- bench: peers and a trained method in one leaderboard --------------------------------------------------


def test_bench_two_peers_and_textual_inversion_fill_one_leaderboard(tiny_models, weights, arcface_dir, tmp_path):
    from skimage.data import astronaut

    from likeness.bench.leaderboard import build_leaderboard, method_folder, run_methods
    from likeness.bench.plan import RunConfig
    from likeness.bench.runstore import RunStore

    people = tmp_path / "people"
    photo = astronaut().copy()
    photo[192:232, 192:232] = 255  # where the tiny ArcFace detector finds its "face"; dlib still finds the real one
    (people / "astro").mkdir(parents=True)
    Image.fromarray(photo).save(people / "astro" / "0.png")
    Image.new("RGB", (200, 200), (90, 90, 90)).save(people / "astro" / "1.png")  # no face: its items fail, with the reason
    config = RunConfig(method="textual-inversion", base_model="likeness/tiny-sd", identities=str(people), prompt_limit=2,
                       references=2, steps=2, resolution=32, metrics=["ips"], method_options={"max_steps": 2})
    methods = {"textual-inversion": {"gradient_accumulation_steps": 1},
               "ip-adapter": {"weights": str(weights["plus-face"])},
               "ip-adapter-faceid": {"weights": str(weights["faceid"]), "face_model_dir": str(arcface_dir)}}
    summaries = run_methods(config, methods, tmp_path / "run", progress=False)
    for summary in summaries:
        assert summary.counts == {"done": 2, "failed": 2}, summary.describe()
        assert all("no face found" in f["reason"] and "1.png" in f["reason"] for f in summary.failures)
    seeds = []
    for method in methods:
        store = RunStore(method_folder(tmp_path / "run", method) / "results.sqlite")
        seeds.append(sorted(r["item_id"] for r in store.items("done")))
        store.close()
    assert seeds[0] == seeds[1] == seeds[2]  # the same items (and seeds) for every method
    page, text = build_leaderboard([method_folder(tmp_path / "run", m) for m in methods], tmp_path / "run")
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[1:]] == list(methods)
    html_text = page.read_text()
    assert html_text.count("<tr><td class='l'>") == 3 and "no face found" in html_text
    for line in lines[1:]:  # IPS computed for every method (a number, not the dash), 2 images each
        assert line.split()[1] != "—" and line.split()[-2:] == ["2", "2"]
    again = run_methods(config, methods, tmp_path / "run", progress=False, report=False)  # resumes: nothing redone
    assert [s.counts for s in again] == [s.counts for s in summaries]


# -- PhotoMaker ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photomaker_file(tiny_models, tmp_path_factory):
    from likeness.testing.peer_layouts import photomaker_state

    return save_published(photomaker_state("likeness/tiny-sdxl"), tmp_path_factory.mktemp("pm") / "photomaker-v1.bin")


def test_photomaker_merges_the_stacked_id_into_the_class_word(tiny_models, photomaker_file, astronaut_path, tmp_path):
    flipped = tmp_path / "flipped.jpg"
    Image.open(astronaut_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    art = personalize("photomaker", {"astro": [astronaut_path, flipped]}, tmp_path / "a", "likeness/tiny-sdxl",
                      weights=str(photomaker_file), style_strength=0.0)
    ours = load_artifact(art)
    assert ours.prompt(PROMPT) == "a photo of a person img"
    ids = ours.tensors["astro.id_embeds"]
    assert ids.shape == (2, 64)  # one ID embedding per photo: the stack
    pipe = ours.pipe
    merged, _ = ours.method.merged_embeddings(pipe, "a photo of a person img", ids, "img")
    # By hand: the text-only prompt with the class word repeated once per photo, then the fuse module at those rows.
    text = "a photo of a person person"
    hidden = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        tokens = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden.append(encoder(tokens, output_hidden_states=True).hidden_states[-2])
    hidden = torch.cat(hidden, dim=-1)[0]
    person = pipe.tokenizer("a photo of a").input_ids.__len__() - 1  # index of the first class-word copy (after BOS)
    rows = torch.zeros(77, dtype=torch.bool)
    rows[person:person + 2] = True
    torch.testing.assert_close(merged[0][~rows], hidden[~rows])
    with torch.no_grad():
        torch.testing.assert_close(merged[0][rows], pipe.photomaker_fuse(hidden[rows], ids))

    mine = _pixels(ours.generate([PROMPT], [2], num_inference_steps=STEPS)[0])
    np.testing.assert_array_equal(mine, _pixels(load_artifact(art).generate([PROMPT], [2], num_inference_steps=STEPS)[0]))
    assert np.abs(mine - _run(_plain(tiny_models, "likeness/tiny-sdxl"), "a photo of a person", 2)).max() > 2
    with pytest.raises(ValueError, match="needs exactly one trigger word 'img'"):
        ours.method.merged_embeddings(pipe, "a photo of a person", ids, "img")

    # Delayed merge, as published: steps 0..int(style_strength * steps) inclusive are text-only, the rest merged.
    # With style_strength 1 the ID never enters (= the text-only prompt on the same pipeline), nor in a 1-step run
    # at style_strength 0 (step 0 is always text-only).
    options = ours.manifest.config["options"]
    options["style_strength"] = 1.0
    text_only = _pixels(ours.generate([PROMPT], [2], num_inference_steps=4)[0])
    np.testing.assert_array_equal(text_only, _run_steps(pipe, "a photo of a person", 2, 4))
    options["style_strength"] = 0.0
    np.testing.assert_array_equal(_pixels(ours.generate([PROMPT], [2], num_inference_steps=1)[0]),
                                  _run_steps(pipe, "a photo of a person", 2, 1))
    assert np.abs(_pixels(ours.generate([PROMPT], [2], num_inference_steps=4)[0]) - text_only).max() > 0
    # Which prompt the UNet sees at each step (the conditional half of the batch): merged or not, step by step.
    merged_rows = merged[0][rows]
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(bool(torch.equal(kwargs["encoder_hidden_states"][-1][rows], merged_rows))),
        with_kwargs=True)
    try:
        schedule = {}
        for strength in (0.0, 0.25, 0.5, 0.75):
            options["style_strength"] = strength
            seen.clear()
            ours.generate([PROMPT], [2], num_inference_steps=4)
            schedule[strength] = list(seen)
    finally:
        hook.remove()
    assert schedule == {0.0: [False, True, True, True], 0.25: [False, False, True, True],
                        0.5: [False, False, False, True], 0.75: [False, False, False, False]}


def test_photomaker_lora_in_the_attention_processor_format_loads_the_same(tiny_models, photomaker_file, astronaut_path,
                                                                          tmp_path):
    """The same LoRA under diffusers' older attention-processor names (``...attn1.processor.to_q_lora.down.weight``)
    passes the checks and fuses to the same UNet, so both ways the published file may name it give one image."""
    from likeness.testing.peer_layouts import photomaker_state
    from likeness.methods.peers.photomaker import lora_module

    assert lora_module("unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight") == \
        ("mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0", "up")
    assert lora_module("unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_k.lora.down.weight") == \
        ("up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_k", "down")
    state = photomaker_state("likeness/tiny-sdxl", lora_format="processor")
    assert any(k.endswith("attn1.processor.to_out_lora.down.weight") for k in state)
    legacy = save_published(state, tmp_path / "photomaker-v1.bin")
    images = []
    for name, weights in (("new", photomaker_file), ("legacy", legacy)):
        art = personalize("photomaker", {"astro": [astronaut_path]}, tmp_path / name, "likeness/tiny-sdxl",
                          weights=str(weights), style_strength=0.0)
        images.append(_pixels(load_artifact(art).generate([PROMPT], [5], num_inference_steps=STEPS)[0]))
    np.testing.assert_array_equal(*images)
    assert np.abs(images[0] - _run(_plain(tiny_models, "likeness/tiny-sdxl"), "a photo of a person", 5)).max() > 2
    bad = dict(state)
    key = next(k for k in bad if k.endswith("attn2.processor.to_k_lora.down.weight"))
    bad[key] = torch.zeros(4, 7)
    _refused(tmp_path, r"wrong shapes: " + key.replace(".", r"\.") + r" is \(4, 7\)", method="photomaker",
             base="likeness/tiny-sdxl", photo=astronaut_path, weights=str(save_published(bad, tmp_path / "bad.bin")))


def test_photomaker_bad_files_are_named(tiny_models, photomaker_file, astronaut_path, tmp_path):
    from likeness.methods.peers.common import read_state_dict

    state = read_state_dict(photomaker_file)
    _refused(tmp_path, "photomaker is published for SDXL only", method="photomaker", error=ValueError, photo=astronaut_path,
             weights=str(photomaker_file))
    common = dict(method="photomaker", base="likeness/tiny-sdxl", photo=astronaut_path)
    renamed = dict(state)
    renamed["id_encoder.fuse_module.mlp2.fc9.weight"] = renamed.pop("id_encoder.fuse_module.mlp2.fc2.weight")
    _refused(tmp_path, r"missing keys: id_encoder\.fuse_module\.mlp2\.fc2\.weight; unexpected keys: id_encoder\.fuse_module\.mlp2\.fc9",
             weights=str(save_published(renamed, tmp_path / "renamed.bin")), **common)
    lora = dict(state)
    key = next(k for k in lora if k.startswith("lora_weights.") and k.endswith("attn2.to_k.lora.down.weight"))
    lora[key] = torch.zeros(4, 7)
    lora["lora_weights.unet.nowhere.to_q.lora.down.weight"] = torch.zeros(4, 8)
    _refused(tmp_path, r"LoRA does not fit.*nowhere\.to_q.*wrong shapes: " + key.replace(".", r"\.") + r" is \(4, 7\)",
             weights=str(save_published(lora, tmp_path / "lora.safetensors")), **common)


def _photomaker_pixels(encoder, crop):
    from transformers import CLIPImageProcessor

    size = encoder.tower.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)([Image.open(crop).convert("RGB")], return_tensors="pt").pixel_values


def test_photomaker_v2_adds_two_arcface_tokens_per_photo(tiny_models, arcface_dir, face_photos, photomaker_file, tmp_path):
    from likeness.testing.peer_layouts import photomaker_state
    from likeness.methods.peers.photomaker import load_photomaker

    v2 = save_published(photomaker_state("likeness/tiny-sdxl", version="v2", face_dim=16, seed=1), tmp_path / "photomaker-v2.bin")
    common = dict(version="v2", weights=str(v2), face_backend="arcface", face_model_dir=str(arcface_dir), style_strength=0.0)
    art = personalize("photomaker", {"ann": [face_photos["ann"]], "bob": [face_photos["bob"]]}, tmp_path / "a",
                      "likeness/tiny-sdxl", **common)
    ours = load_artifact(art)
    assert ours.tensors["ann.id_embeds"].shape == (2, 64)  # one photo, two ID tokens
    # The face perceiver got the raw recogniser output (the published v2 passes InsightFace's ``embedding``).
    encoder, _ = load_photomaker(v2, "likeness/tiny-sdxl")
    raw = torch.from_numpy(_recogniser_output(arcface_dir, face_photos["ann"]))[None]
    with torch.no_grad():
        tower = encoder.tower.vision_model(pixel_values=_photomaker_pixels(encoder, art / "ann-crop0.png")).last_hidden_state
        torch.testing.assert_close(ours.tensors["ann.id_embeds"].cpu(), encoder.qformer_perceiver(raw, tower).flatten(0, 1))
    merged, _ = ours.method.merged_embeddings(ours.pipe, "a photo of a person img", ours.tensors["ann.id_embeds"], "img")
    assert merged.shape == (1, 77, 64)
    ann, bob = (_pixels(ours.generate([PROMPT], [1], identity=n, num_inference_steps=6)[0]) for n in ("ann", "bob"))
    assert np.abs(ann - bob).max() > 0  # the ArcFace embedding reaches the image (steps 1..5 merged)
    np.testing.assert_array_equal(ann, _pixels(load_artifact(art).generate([PROMPT], [1], identity="ann", num_inference_steps=6)[0]))
    _refused(tmp_path, "is a PhotoMaker v2 file, but version 'v1' was asked", method="photomaker", base="likeness/tiny-sdxl",
             photo=face_photos["ann"], weights=str(v2))
    _refused(tmp_path, "is a PhotoMaker v1 file, but version 'v2'", method="photomaker", base="likeness/tiny-sdxl",
             photo=face_photos["ann"], **{**common, "weights": str(photomaker_file)})


def test_faceid_file_without_lora_needs_the_published_lora_file(tiny_models, weights, arcface_dir, face_photos, tmp_path):
    """Some FaceID files ship the LoRA separately (*_lora.safetensors, diffusers' format): refused without it, used with it."""
    from likeness.methods.peers.common import read_state_dict

    state = read_state_dict(weights["faceid"])
    bare = save_published({k: v for k, v in state.items() if "_lora." not in k}, tmp_path / "faceid-nolora.bin")
    common = dict(method="ip-adapter-faceid", photo=face_photos["ann"], weights=str(bare), face_model_dir=str(arcface_dir))
    _refused(tmp_path, "without its LoRA.*pass lora=FILE", **common)
    plain = _plain(tiny_models, "likeness/tiny-sd")
    plain.load_ip_adapter(str(weights["faceid"].parent), subfolder="", weight_name=weights["faceid"].name, image_encoder_folder=None)
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(plain.unet, adapter_name="faceid_0"))
    type(plain).save_lora_weights(str(tmp_path / "lora"), unet_lora_layers=lora, weight_name="faceid_lora.safetensors")
    kwargs = dict(weights=str(bare), face_model_dir=str(arcface_dir))
    with_file = personalize("ip-adapter-faceid", {"ann": [face_photos["ann"]]}, tmp_path / "a", "likeness/tiny-sd",
                            lora=str(tmp_path / "lora" / "faceid_lora.safetensors"), **kwargs)
    inside = personalize("ip-adapter-faceid", {"ann": [face_photos["ann"]]}, tmp_path / "b", "likeness/tiny-sd",
                         weights=str(weights["faceid"]), face_model_dir=str(arcface_dir))
    a, b = (_pixels(load_artifact(x).generate([PROMPT], [3], num_inference_steps=STEPS)[0]) for x in (with_file, inside))
    assert np.abs(a - b).max() <= 2  # the same LoRA, from the separate file or from inside the .bin
