"""PuLID (v1 and v1.1) on the tiny SDXL model with tiny weights in the published key layouts (EVA02-CLIP
``visual.*``, ``id_adapter.*``, ``id_adapter_attn_layers.*``): the EVA tower against hand computations,
the ID tokens reach the image, artifacts reproduce pixels after save/load, wrong files are refused by name."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file
from test_faces import _export_tiny_arcface, _face_image

from likeness.methods import load_artifact, personalize
from likeness.methods.peer_layouts import eva_clip_state, pulid_state, save_flat
from likeness.methods.peers import CheckpointError, MissingFaceModelError, empty_unet
from likeness.methods.preparation import NoFaceError
from likeness.models.eva_clip import EVAVisionConfig, EVAVisionTower, apply_rope, rope_tables

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a photo of {}"
STEPS = 3
SDXL = "likeness/tiny-sdxl"


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


# -- EVA02-CLIP tower against hand computations ------------------------------------------------------------


def test_rotary_embedding_matches_a_hand_rotation():
    """Every adjacent channel pair of a patch token turns by pos * 10000^(-2j/h): pos = row (first half of the
    head) or column (second half), scaled onto the 16-position pre-training grid."""
    config = EVAVisionConfig(width=8, layers=1, heads=1, mlp_hidden=8, patch=1, image_size=3, embed_dim=4)
    cos, sin = rope_tables(config)
    assert cos.shape == (9, 8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 9, 8, generator=g)
    ours = apply_rope(x, cos, sin)[0, 0]
    half = 4
    expected = torch.empty(9, 8)
    for patch in range(9):
        row, col = divmod(patch, 3)
        for part, index in ((0, row), (1, col)):
            pos = index * 16 / 3
            for j in range(half // 2):
                angle = pos * 10000 ** (-2 * j / half)
                a, b = x[0, 0, patch, part * half + 2 * j].item(), x[0, 0, patch, part * half + 2 * j + 1].item()
                expected[patch, part * half + 2 * j] = a * math.cos(angle) - b * math.sin(angle)
                expected[patch, part * half + 2 * j + 1] = a * math.sin(angle) + b * math.cos(angle)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(apply_rope(x, cos, sin)[..., 0, :], x[..., 0, :])  # patch (0, 0): angle 0, unchanged


def test_eva_tower_forward_matches_a_hand_computation():
    """One block, written out with plain tensor algebra: q/v biases (none on k), rotary on patch tokens only,
    sub-LayerNorm before proj, SwiGLU with its sub-LayerNorm; class token through norm and head; taps = block inputs."""
    from likeness.methods.pulid import load_eva

    state = eva_clip_state(width=8, layers=2, mlp_hidden=12, patch=4, image_size=8, embed_dim=6, seed=3)
    tower = EVAVisionTower(EVAVisionConfig.from_shapes({k[7:]: tuple(v.shape) for k, v in state.items()
                                                        if k.startswith("visual.") and "rope" not in k}))
    tower.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("visual.") and "rope" not in k})
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    s = {k[7:]: v for k, v in state.items() if k.startswith("visual.")}

    def ln(x, p):
        return F.layer_norm(x, x.shape[-1:], s[p + ".weight"], s[p + ".bias"], eps=1e-6)

    patches = pixels.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(2, 4, 48)
    x = patches @ s["patch_embed.proj.weight"].reshape(8, 48).T + s["patch_embed.proj.bias"]
    x = torch.cat([s["cls_token"].expand(2, 1, 8), x], dim=1) + s["pos_embed"]
    taps = [x]
    cos, sin = s["rope.freqs_cos"], s["rope.freqs_sin"]
    for i in range(2):
        p = f"blocks.{i}."
        h = ln(x, p + "norm1")
        q = h @ s[p + "attn.q_proj.weight"].T + s[p + "attn.q_bias"]
        k = h @ s[p + "attn.k_proj.weight"].T
        v = h @ s[p + "attn.v_proj.weight"].T + s[p + "attn.v_bias"]
        rot = torch.stack([-q[..., 1::2], q[..., 0::2]], -1).flatten(-2)
        q = torch.cat([q[:, :1], q[:, 1:] * cos + rot[:, 1:] * sin], 1)
        rot = torch.stack([-k[..., 1::2], k[..., 0::2]], -1).flatten(-2)
        k = torch.cat([k[:, :1], k[:, 1:] * cos + rot[:, 1:] * sin], 1)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), -1) @ v
        x = x + ln(a, p + "attn.inner_attn_ln") @ s[p + "attn.proj.weight"].T + s[p + "attn.proj.bias"]
        h = ln(x, p + "norm2")
        gate = F.silu(h @ s[p + "mlp.w1.weight"].T + s[p + "mlp.w1.bias"]) * (h @ s[p + "mlp.w2.weight"].T + s[p + "mlp.w2.bias"])
        x = x + ln(gate, p + "mlp.ffn_ln") @ s[p + "mlp.w3.weight"].T + s[p + "mlp.w3.bias"]
        if i == 0:
            taps.append(x)
    embed = ln(x, "norm")[:, 0] @ s["head.weight"].T + s["head.bias"]
    with torch.no_grad():
        ours, hidden = tower(pixels, taps=(0, 1))
    torch.testing.assert_close(ours, embed, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(hidden, taps):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    del load_eva


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arcface_dir(tmp_path_factory):
    return _export_tiny_arcface(tmp_path_factory.mktemp("arcface"))


@pytest.fixture(scope="module")
def face_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    paths = {}
    for name, seed in (("ann", 0), ("bob", 1)):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(_face_image(seed)).save(paths[name])
    paths["wall"] = folder / "wall.png"
    Image.new("RGB", (320, 320), (40, 40, 40)).save(paths["wall"])
    return paths


@pytest.fixture(scope="module")
def pulid_files(tiny_models, tmp_path_factory):
    """guozinan/PuLID-style files (v1 .bin, v1.1 .safetensors) and an EVA-CLIP .pt, tiny, random."""
    root = tmp_path_factory.mktemp("pulid")
    unet = empty_unet(SDXL)
    return {"v1": save_flat(pulid_state(unet, version="v1"), root / "pulid_v1.bin"),
            "v1.1": save_flat(pulid_state(unet, version="v1.1", seed=1), root / "pulid_v1.1.safetensors"),
            "eva": save_flat(eva_clip_state(), root / "EVA02_CLIP_L_336_psz14_s6B.pt"),
            "root": root}


def _common(pulid_files, arcface_dir, version="v1", **extra):
    return dict(version=version, weights=str(pulid_files[version]), eva_clip=str(pulid_files["eva"]),
                face_model_dir=str(arcface_dir), **extra)


# -- generation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1.1"])
def test_pulid_id_tokens_change_the_image_and_reproduce(tiny_models, pulid_files, arcface_dir, face_photos, tmp_path, version):
    people = {"ann": [face_photos["ann"]], "bob": [face_photos["bob"]]}
    art = personalize("pulid", people, tmp_path / "a", SDXL, **_common(pulid_files, arcface_dir, version))
    manifest = json.loads((art / "likeness.json").read_text())
    roles = {r["role"]: r for r in manifest["config"]["weights"]}
    assert set(roles) == {"pulid weights", "EVA02-CLIP checkpoint"} and len(roles["pulid weights"]["sha256"]) == 64
    assert roles["EVA02-CLIP checkpoint"]["needed_at_generation"] is False
    stored = load_file(str(art / "embeddings.safetensors"))
    tokens = 10 if version == "v1" else 8
    assert stored["ann.id_embedding"].shape == (1, tokens, 64) == stored["ann.uncond_id_embedding"].shape
    assert (art / "ann-crop0.png").is_file()

    ours = load_artifact(art)
    ann = _pixels(ours.generate([PROMPT], [3], identity="ann", num_inference_steps=STEPS)[0])
    bob = _pixels(ours.generate([PROMPT], [3], identity="bob", num_inference_steps=STEPS)[0])
    assert np.abs(ann - bob).max() > 0  # the person's ID tokens drive the image
    np.testing.assert_array_equal(ann, _pixels(load_artifact(art).generate([PROMPT], [3], identity="ann",
                                                                            num_inference_steps=STEPS)[0]))
    plain = DiffusionPipeline.from_pretrained(tiny_models[SDXL])
    plain.set_progress_bar_config(disable=True)
    without = _pixels(plain("a photo of a person", num_inference_steps=STEPS,
                            generator=torch.Generator("cpu").manual_seed(3)).images[0])
    assert np.abs(ann - without).max() > 10
    # At ID scale 0 the processors are exactly diffusers' text attention: plain pixels.
    ours.manifest.config["options"]["id_scale"] = 0.0
    np.testing.assert_array_equal(_pixels(ours.generate([PROMPT], [3], identity="ann", num_inference_steps=STEPS)[0]), without)
