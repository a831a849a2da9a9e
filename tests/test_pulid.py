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

from likeness.testing.tiny_arcface import face_image
from likeness.methods import load_artifact, personalize
from likeness.testing.peer_layouts import eva_clip_state, pulid_state, save_flat
from likeness.methods.peers.common import CheckpointError, MissingFaceModelError, empty_unet
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


# -- fixtures -----------------------------------------------------------------------------------------------


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


def test_id_attention_modes_match_a_hand_computation():
    """The ID processor on one diffusers Attention layer, against the published formulas written out by hand:
    text attention + id_scale * (off: ID attention; v1: its part orthogonal to the text output per channel;
    v2: ID attention + (attention on the first 5 ID tokens - 1) * its text-parallel part), zero tokens appended."""
    from diffusers.models.attention_processor import Attention

    from likeness.methods.peers.pulid import IDAttnProcessor, IDState

    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).eval()
    state = IDState(scale=0.7, num_zero=3, ortho="off")
    processor = IDAttnProcessor(8, 6, state)
    torch.nn.init.normal_(processor.id_to_k.weight)
    torch.nn.init.normal_(processor.id_to_v.weight)
    g = torch.Generator().manual_seed(1)
    image, text, ids = torch.randn(2, 5, 8, generator=g), torch.randn(2, 7, 6, generator=g), torch.randn(2, 6, 6, generator=g)

    def split(t):  # (B, N, 8) -> (B, 2 heads, N, 4)
        return t.view(2, -1, 2, 4).transpose(1, 2)

    def merge(t):
        return t.transpose(1, 2).reshape(2, -1, 8)

    def attend(q, k, v, scale=0.5):
        return merge(torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v)

    with torch.no_grad():
        q = split(attn.to_q(image))
        plain = attend(q, split(attn.to_k(text)), split(attn.to_v(text)))
        padded = torch.cat([ids, torch.zeros(2, 3, 6)], dim=1)
        k_id, v_id = split(processor.id_to_k(padded)), split(processor.id_to_v(padded))
        identity = attend(q, k_id, v_id)
        parallel = (plain * identity).sum(1, keepdim=True) / (plain * plain).sum(1, keepdim=True) * plain
        weight = torch.softmax(q @ k_id.transpose(-1, -2), -1).mean(1)[:, :, :5].sum(-1, keepdim=True)
        expected = {"off": plain + 0.7 * identity, "v1": plain + 0.7 * (identity - parallel),
                    "v2": plain + 0.7 * (identity + (weight - 1) * parallel)}
        for mode, mixed in expected.items():
            state.ortho, state.embedding = mode, ids
            torch.testing.assert_close(processor(attn, image, text), attn.to_out[0](mixed), rtol=1e-4, atol=1e-5)
        state.embedding = None  # no ID tokens: exactly the text attention
        torch.testing.assert_close(processor(attn, image, text), attn.to_out[0](plain), rtol=1e-4, atol=1e-5)
        state.embedding = ids[:1]
        with pytest.raises(ValueError, match="ID tokens for a batch of 1, the UNet runs a batch of 2"):
            processor(attn, image, text)


def test_pulid_encoding_feeds_raw_arcface_and_normalised_eva(tiny_models, pulid_files, arcface_dir, face_photos, tmp_path):
    """The stored tokens = the ID encoder on [raw recogniser output ; unit EVA embedding] and the inputs of EVA blocks
    4..20, recomputed from the saved (whitened, greyscale) crop; two photos: v1 adds the second's 5 ArcFace tokens."""
    from likeness.faces import get_backend
    from likeness.methods.peers.pulid import TAPS, eva_pixels, load_eva, load_pulid

    # Antialiased resize here: the 8-bit crop's rounding passes through it smoothed (a plain 16x bicubic
    # down-sampling, the default, picks single pixels, so the recomputation below would need a loose bound).
    art = personalize("pulid", {"ann": [face_photos["ann"], face_photos["bob"]]}, tmp_path / "a", SDXL,
                      **_common(pulid_files, arcface_dir, resize_antialias=True))
    stored = load_file(str(art / "embeddings.safetensors"))
    assert stored["ann.id_embedding"].shape == (1, 15, 64) == stored["ann.uncond_id_embedding"].shape
    encoder, _ = load_pulid(pulid_files["v1"], empty_unet(SDXL))
    tower = load_eva(pulid_files["eva"])
    backend = get_backend("arcface", model_dir=str(arcface_dir.resolve()))
    tokens = []
    for k, photo in enumerate(("ann", "bob")):
        image = np.asarray(Image.open(face_photos[photo]).convert("RGB"))
        face = max(backend.detect(image), key=lambda f: f.area)
        raw = torch.from_numpy(backend.embed(image, [face])[0].raw_embedding)[None]
        crop = np.asarray(Image.open(art / f"ann-crop{k}.png"), dtype=np.float32) / 255.0
        assert np.array_equal(crop[..., 0], crop[..., 1]) and np.array_equal(crop[..., 1], crop[..., 2])  # greyscale
        assert (crop == 1.0).mean() > 0.3  # background whitened
        with torch.no_grad():
            embedding, hidden = tower(eva_pixels(torch.from_numpy(crop).permute(2, 0, 1)[None], 32, True), taps=TAPS)
            out = encoder(torch.cat([raw, embedding / embedding.norm()], dim=-1), hidden)
        tokens.append(out if k == 0 else out[:, :5])
    torch.testing.assert_close(stored["ann.id_embedding"], torch.cat(tokens, dim=1), rtol=0, atol=2e-3)  # crop PNG rounding
    with torch.no_grad():
        zero = encoder(torch.zeros(1, 32), [torch.zeros(1, 17, 32)] * 5)
    torch.testing.assert_close(stored["ann.uncond_id_embedding"], torch.cat([zero, zero[:, :5]], dim=1))


def test_pulid_v11_takes_all_photos_in_one_pass(tiny_models, pulid_files, arcface_dir, face_photos, tmp_path):
    one = personalize("pulid", {"ann": [face_photos["ann"]]}, tmp_path / "one", SDXL, **_common(pulid_files, arcface_dir, "v1.1"))
    two = personalize("pulid", {"ann": [face_photos["ann"], face_photos["bob"]]}, tmp_path / "two", SDXL,
                      **_common(pulid_files, arcface_dir, "v1.1"))
    a, b = (load_file(str(x / "embeddings.safetensors")) for x in (one, two))
    assert a["ann.id_embedding"].shape == b["ann.id_embedding"].shape == (1, 8, 64)  # always the queries
    assert (a["ann.id_embedding"] - b["ann.id_embedding"]).abs().max() > 1e-4  # the second photo took part
    torch.testing.assert_close(a["ann.uncond_id_embedding"], b["ann.uncond_id_embedding"])


def test_pulid_parsing_model_decides_what_turns_white(tiny_models, pulid_files, arcface_dir, face_photos, tmp_path):
    """With a face-parsing model, background/cloth/neck/... pixels turn white and the rest greyscale, label by label."""
    from stellarnet_helpers import build_tiny_segformer

    from likeness.faces import get_backend
    from likeness.methods.peers.pulid import align_ffhq
    from likeness.segmentation.transformers_backend import TransformersSegmenter

    model = build_tiny_segformer(tmp_path / "seg", labels=("background", "skin", "hair", "cloth"))
    art = personalize("pulid", {"ann": [face_photos["ann"]]}, tmp_path / "a", SDXL,
                      **_common(pulid_files, arcface_dir, parsing_model=str(model)))
    backend = get_backend("arcface", model_dir=str(arcface_dir.resolve()))
    photo = Image.open(face_photos["ann"]).convert("RGB")
    face = max(backend.detect(np.asarray(photo)), key=lambda f: f.area)
    crop, _ = align_ffhq(photo, face.landmarks)
    labels = TransformersSegmenter(model).label_map(crop)
    white = np.isin(labels, [0, 3])  # background, cloth
    assert 0 < white.mean() < 1
    picture = np.asarray(Image.open(art / "ann-crop0.png"), dtype=np.float64)
    assert (picture[white] == 255).all()
    rgb = np.asarray(crop, dtype=np.float64)
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.abs(picture[~white][:, 0] - grey[~white]).max() <= 0.51
    _refused(tmp_path, "no 'background' label", error=ValueError, photo=face_photos["ann"],
             **_common(pulid_files, arcface_dir, parsing_model=str(build_tiny_segformer(tmp_path / "s2", labels=("a", "skin")))))


# -- bad input: clear errors before any generation ----------------------------------------------------------------


def _refused(tmp_path, match, base=SDXL, photo=None, error=CheckpointError, **options):
    out = tmp_path / "refused"
    with pytest.raises(error, match=match):
        personalize("pulid", {"p": [photo]}, out, base, **options)
    assert not (out / "likeness.json").exists()


def test_pulid_bad_weights_are_named(tiny_models, pulid_files, arcface_dir, face_photos, tmp_path):
    from likeness.methods.peers.common import read_state_dict

    photo = face_photos["ann"]
    common = _common(pulid_files, arcface_dir)
    _refused(tmp_path, "pulid is published for SDXL only", base="likeness/tiny-sd", error=ValueError, photo=photo, **common)
    sd15 = save_flat(pulid_state(empty_unet("likeness/tiny-sd")), tmp_path / "sd15.bin")
    _refused(tmp_path, "made for cross-attention dim 32 .*this base model's UNet has cross-attention dim 64", photo=photo,
             **{**common, "weights": str(sd15)})
    state = read_state_dict(pulid_files["v1"])
    renamed = dict(state)
    renamed["id_adapter.mapping_patch_3.9.weight"] = renamed.pop("id_adapter.mapping_patch_3.6.weight")
    _refused(tmp_path, r"missing keys: id_adapter\.mapping_patch_3\.6\.weight; unexpected keys: id_adapter\.mapping_patch_3\.9\.weight",
             photo=photo, **{**common, "weights": str(save_flat(renamed, tmp_path / "renamed.bin"))})
    reshaped = dict(state)
    key = next(k for k in state if k.startswith("id_adapter_attn_layers.") and k.endswith("id_to_v.weight"))
    reshaped[key] = torch.zeros(7, 64)
    _refused(tmp_path, rf"wrong shapes: {key.replace('.', chr(92) + '.')} is \(7, 64\), expected",
             photo=photo, **{**common, "weights": str(save_flat(reshaped, tmp_path / "reshaped.safetensors"))})
    dropped = {k: v for k, v in state.items() if k != "id_adapter_attn_layers.1.id_to_k.weight"}
    _refused(tmp_path, r"missing keys: id_adapter_attn_layers\.1\.id_to_k\.weight", photo=photo,
             **{**common, "weights": str(save_flat(dropped, tmp_path / "dropped.bin"))})
    _refused(tmp_path, "is a PuLID v1 file, but version 'v1.1' was asked", photo=photo,
             **{**_common(pulid_files, arcface_dir, "v1.1"), "weights": str(pulid_files["v1"])})
    _refused(tmp_path, "is a PuLID v1.1 file, but version 'v1'", photo=photo, **{**common, "weights": str(pulid_files["v1.1"])})
    _refused(tmp_path, "not a PuLID file", photo=photo,
             **{**common, "weights": str(save_flat({"foo.weight": torch.zeros(2)}, tmp_path / "other.bin"))})
    _refused(tmp_path, "ortho must be one of v2, v1, off", error=ValueError, photo=photo, **{**common, "ortho": "v3"})


def test_pulid_bad_eva_checkpoints_are_named(tiny_models, pulid_files, arcface_dir, face_photos, tmp_path):
    from likeness.methods.peers.common import read_state_dict

    photo = face_photos["ann"]
    common = _common(pulid_files, arcface_dir)
    eva = read_state_dict(pulid_files["eva"])

    def with_eva(state, name):
        return {**common, "eva_clip": str(save_flat(state, tmp_path / name))}

    renamed = dict(eva)
    renamed["visual.blocks.7.attn.k_bias"] = renamed.pop("visual.blocks.7.attn.v_bias")
    _refused(tmp_path, r"missing keys: visual\.blocks\.7\.attn\.v_bias; unexpected keys: visual\.blocks\.7\.attn\.k_bias",
             photo=photo, **with_eva(renamed, "renamed.pt"))
    reshaped = dict(eva)
    reshaped["visual.blocks.2.mlp.w3.weight"] = torch.zeros(32, 40)
    _refused(tmp_path, r"wrong shapes: visual\.blocks\.2\.mlp\.w3\.weight is \(32, 40\), expected \(32, 48\)", photo=photo,
             **with_eva(reshaped, "reshaped.pt"))
    rope = dict(eva)
    rope["visual.rope.freqs_sin"] = rope["visual.rope.freqs_sin"].flip(0)
    _refused(tmp_path, r"visual\.rope\.freqs_sin differs from the rotary table", photo=photo, **with_eva(rope, "rope.pt"))
    short = {k: v for k, v in eva.items() if not any(k.startswith(f"visual.blocks.{i}.") for i in range(14, 21))}
    _refused(tmp_path, "EVA-CLIP tower of 14 blocks; PuLID takes the inputs of blocks 4, 8, 12, 16, 20", photo=photo,
             **with_eva(short, "short.pt"))
    narrow = eva_clip_state(embed_dim=8)
    _refused(tmp_path, "takes \\[face embedding ; EVA-CLIP embedding\\] of width 32 = 24 \\+ 8, but the ArcFace model .* gives 16-d",
             photo=photo, **with_eva(narrow, "narrow.pt"))
    _refused(tmp_path, "not an EVA-CLIP checkpoint", photo=photo, **with_eva({"text.x": torch.zeros(1)}, "text.pt"))
    # A visual-only file (no visual. prefix) and one without the rotary tables load as well.
    bare = {k[7:]: v for k, v in eva.items() if k.startswith("visual.") and "rope" not in k}
    art = personalize("pulid", {"p": [photo]}, tmp_path / "bare", SDXL, **with_eva(bare, "bare.pt"))
    full = personalize("pulid", {"p": [photo]}, tmp_path / "full", SDXL, **common)
    torch.testing.assert_close(load_file(str(art / "embeddings.safetensors")), load_file(str(full / "embeddings.safetensors")))


def test_eva_checkpoint_saved_in_half_precision_loads(pulid_files, tmp_path):
    """A published EVA file in fp16 carries its rotary tables rounded (up to 2.4e-4): it loads, with the weights
    the file holds; a table that is really another one is still refused at that precision."""
    from likeness.methods.peers.common import read_state_dict
    from likeness.methods.peers.pulid import load_eva

    half = {k: v.half() for k, v in read_state_dict(pulid_files["eva"]).items()}
    tower = load_eva(save_flat(half, tmp_path / "half.pt"))
    weight = "blocks.3.attn.qkv.weight" if "visual.blocks.3.attn.qkv.weight" in half else "blocks.3.mlp.w3.weight"
    assert torch.equal(tower.state_dict()[weight], half[f"visual.{weight}"].float())
    cos, _ = rope_tables(tower.config)
    assert (half["visual.rope.freqs_cos"].float() - cos).abs().max() > 1e-4  # the rounding the old check refused
    half["visual.rope.freqs_cos"] = half["visual.rope.freqs_cos"].flip(0)
    with pytest.raises(CheckpointError, match=r"visual\.rope\.freqs_cos differs from the rotary table"):
        load_eva(save_flat(half, tmp_path / "flipped.pt"))


def test_published_zero_tokens_and_eva_resize():
    """v1's "extremely style" mode (ortho v1) appends 16 zero tokens in the published demo, fidelity 8, v1.1 20;
    the EVA input is resized as PuLID's pinned torchvision 0.15.2 resizes a tensor: bicubic without antialias."""
    from likeness.methods.peers.pulid import IMAGE_MEAN, IMAGE_STD, default_num_zero, eva_pixels, num_zero

    assert [default_num_zero("v1", o) for o in ("v2", "v1", "off")] == [8, 16, 8]
    assert {default_num_zero("v1.1", o) for o in ("v2", "v1", "off")} == {20}
    assert num_zero({"version": "v1", "ortho": "v1", "num_zero": 3}) == 3
    assert num_zero({"version": "v1", "ortho": "v1", "num_zero": None}) == 16
    picture = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    for antialias in (False, True):
        resized = F.interpolate(picture, size=(24, 24), mode="bicubic", align_corners=False, antialias=antialias)
        torch.testing.assert_close(eva_pixels(picture, 24, antialias), (resized - mean) / std, rtol=0, atol=1e-6)
    assert torch.equal(eva_pixels(picture, 24), eva_pixels(picture, 24, False))
    assert (eva_pixels(picture, 24) - eva_pixels(picture, 24, True)).abs().max() > 0.05


def test_pulid_no_face_and_missing_face_model(tiny_models, pulid_files, arcface_dir, face_photos, tmp_path):
    common = _common(pulid_files, arcface_dir)
    _refused(tmp_path, "wall.png: no face found", error=NoFaceError, photo=face_photos["wall"], **common)
    _refused(tmp_path, "needs an ArcFace model folder.*face_model_dir", error=MissingFaceModelError, photo=face_photos["ann"],
             **{**common, "face_model_dir": None})
    _refused(tmp_path, "pulid needs the ArcFace embedding", error=ValueError, photo=face_photos["ann"],
             **{**common, "face_backend": "dlib"})


def test_pulid_artifact_needs_the_pulid_file_but_not_eva(tiny_models, pulid_files, arcface_dir, face_photos, tmp_path):
    import shutil

    from likeness.methods import ArtifactError

    folder = tmp_path / "w"
    folder.mkdir()
    for name in ("pulid_v1.bin", "EVA02_CLIP_L_336_psz14_s6B.pt"):
        shutil.copy(pulid_files["v1" if name.startswith("pulid") else "eva"], folder / name)
    art = personalize("pulid", {"ann": [face_photos["ann"]]}, tmp_path / "a", SDXL, weights=str(folder), eva_clip=str(folder),
                      face_model_dir=str(arcface_dir))  # both found by their published names in a folder
    before = _pixels(load_artifact(art).generate([PROMPT], [1], num_inference_steps=2)[0])
    (folder / "EVA02_CLIP_L_336_psz14_s6B.pt").unlink()  # only made the stored embeddings
    np.testing.assert_array_equal(before, _pixels(load_artifact(art).generate([PROMPT], [1], num_inference_steps=2)[0]))
    (folder / "pulid_v1.bin").unlink()
    with pytest.raises(ArtifactError, match="pulid_v1.bin, which no longer exists"):
        load_artifact(art)


def test_bench_runs_pulid_with_a_status_per_item(tiny_models, pulid_files, arcface_dir, tmp_path):
    from likeness.bench.leaderboard import run_methods
    from likeness.bench.plan import RunConfig

    people = tmp_path / "people"
    (people / "ann").mkdir(parents=True)
    Image.fromarray(face_image(0)).save(people / "ann" / "0.png")
    Image.new("RGB", (200, 200), (90, 90, 90)).save(people / "ann" / "1.png")  # no face: its items fail, with the reason
    config = RunConfig(method="pulid", base_model=SDXL, identities=str(people), prompt_limit=2, references=2, steps=2,
                       resolution=32, metrics=["ips"], method_options={})
    methods = {"pulid": _common(pulid_files, arcface_dir)}
    (summary,) = run_methods(config, methods, tmp_path / "run", progress=False)
    assert summary.counts == {"done": 2, "failed": 2}, summary.describe()
    assert all("no face found" in f["reason"] and "1.png" in f["reason"] for f in summary.failures)
    (again,) = run_methods(config, methods, tmp_path / "run", progress=False, report=False)  # resumes: nothing redone
    assert again.counts == summary.counts
