"""HPSv2 and ImageReward from checkpoints in their PUBLISHED key layouts (tiny shapes, saved with torch.save as the
published files are), loaded by likeness' converters, checked against independent reference forwards written
plainly here (open_clip-style towers and BLIP's ViT + BERT on nn.MultiheadAttention with the same tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from likeness.data.identities import Identity
from likeness.metrics import METRICS, Sample
from likeness.models.tiny_vision import build_tiny_hps, build_tiny_imagereward
from likeness.models.vision_language import VisionModels


@pytest.fixture(autouse=True)
def _setup(one_thread, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    return {"hps": build_tiny_hps(root / "hps"), "ir": build_tiny_imagereward(root / "ir")}


def _image(seed=0, size=(60, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _ln(x, sd, key, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[key + ".weight"], sd[key + ".bias"], eps)


def _mha(w, heads, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, kdim=None):
    attn = torch.nn.MultiheadAttention(w, heads, batch_first=True, kdim=kdim, vdim=kdim)
    with torch.no_grad():
        if attn._qkv_same_embed_dim:  # one packed in_proj_weight (kdim == vdim == w)
            attn.in_proj_weight.copy_(torch.cat([q_w, k_w, v_w]))
        else:
            attn.q_proj_weight.copy_(q_w), attn.k_proj_weight.copy_(k_w), attn.v_proj_weight.copy_(v_w)
        attn.in_proj_bias.copy_(torch.cat([q_b, k_b, v_b]))
        attn.out_proj.weight.copy_(o_w), attn.out_proj.bias.copy_(o_b)
    return attn.eval()


def _openclip_tower(x, sd, prefix, heads, mask=None):
    w = x.shape[-1]
    for i in range(len({k.split(".")[3 if prefix else 2] for k in sd if k.startswith(prefix + "transformer.resblocks.")})):
        p = f"{prefix}transformer.resblocks.{i}."
        qw, kw, vw = sd[p + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = sd[p + "attn.in_proj_bias"].chunk(3)
        attn = _mha(w, heads, qw, qb, kw, kb, vw, vb, sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"])
        h = _ln(x, sd, p + "ln_1", 1e-5)
        x = x + attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = _ln(x, sd, p + "ln_2", 1e-5)
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])), sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return x


@torch.no_grad()
def reference_hps(sd, pixels, ids, heads=2):
    """open_clip's CLIP forward: class token + positions, ln_pre, towers, ln_post on the class token, x @ proj;
    text: causal tower, ln_final, the EOT token (argmax id) @ text_projection; both normalised; their dot."""
    sd = {k: v.float() for k, v in sd.items()}
    patch = sd["visual.conv1.weight"].shape[-1]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=patch).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = _openclip_tower(_ln(x, sd, "visual.ln_pre", 1e-5), sd, "visual.", heads)
    image = _ln(x[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    n = ids.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    t = _ln(_openclip_tower(t, sd, "", heads, mask), sd, "ln_final", 1e-5)
    text = t[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return (image * text).sum(-1)


def _hps_pixels(image, size=32):
    """ResizeMaxSize: longer side to size, black padding around the centred image, CLIP mean/std."""
    w, h = image.size
    nw, nh = round(w * size / max(w, h)), round(h * size / max(w, h))
    arr = np.zeros((size, size, 3), np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    arr[top:top + nh, left:left + nw] = np.asarray(image.resize((nw, nh), Image.BICUBIC), np.float32)
    arr = (arr / 255 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    return torch.tensor(arr.transpose(2, 0, 1), dtype=torch.float32)[None]


def _sample(tmp_path, image, prompt, name="i0"):
    path = tmp_path / f"{name}.png"
    image.save(path)
    meta = {} if prompt is None else {"prompt_template": prompt}
    return Sample(name, path, Identity("ann", []), None, meta)


def test_hps_equals_open_clip_reference_forward(built, tmp_path):
    from transformers import AutoTokenizer

    models = VisionModels({"hps": str(built["hps"])}, device="cpu")
    image = _image()
    samples = [_sample(tmp_path, image, "{} riding a horse on the beach"), _sample(tmp_path, _image(1, (32, 32)), "a dog", "i1")]
    rows = METRICS.create("hpsv2", models=models).update(samples)
    sd = torch.load(built["hps"] / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    tok = AutoTokenizer.from_pretrained(built["hps"])
    for row, sample, im in zip(rows, samples, [image, _image(1, (32, 32))]):
        text = sample.meta["prompt_template"].replace("{}", "a person")
        ids = tok(text)["input_ids"]
        ids = torch.tensor([ids + [0] * (77 - len(ids))])  # open_clip pads with 0
        expected = float(reference_hps(sd, _hps_pixels(im), ids)[0])
        assert row.status == "ok" and row.value == pytest.approx(expected, abs=1e-5)
    assert rows[0].protocol["name"].startswith(f"hpsv2/v1+{built['hps']}+")
    assert abs(rows[0].value - rows[1].value) > 1e-3  # not a constant


def test_hps_layout_errors_name_the_keys(built, tmp_path):
    sd = torch.load(built["hps"] / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    cases = {"missing": ({k: v for k, v in sd.items() if k != "visual.transformer.resblocks.1.attn.in_proj_weight"},
                         "visual.transformer.resblocks.1.attn.in_proj_weight"),
             "unexpected": ({**sd, "visual.attn_pool.weight": torch.zeros(2)}, "visual.attn_pool.weight"),
             "shape": ({**sd, "visual.proj": sd["visual.proj"].t().contiguous()}, "visual.proj")}
    for name, (state, key) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        torch.save({"state_dict": state}, folder / "HPS_v2.1_compressed.pt")
        models = VisionModels({"hps": str(folder), "hps-tokenizer": str(built["hps"])}, device="cpu")
        (row,) = METRICS.create("hpsv2", models=models).update([_sample(tmp_path, _image(), "a dog", name)])
        assert row.status == "model_missing" and key in row.detail["problem"] and "--hps-model" in row.detail["problem"]
    # NaN weights -> a named status, the run goes on.
    folder = tmp_path / "nan"
    folder.mkdir()
    torch.save({"state_dict": {**sd, "visual.proj": torch.full_like(sd["visual.proj"], float("nan"))}}, folder / "HPS_v2.1_compressed.pt")
    models = VisionModels({"hps": str(folder), "hps-tokenizer": str(built["hps"])}, device="cpu")
    (row,) = METRICS.create("hpsv2", models=models).update([_sample(tmp_path, _image(), "a dog", "nan")])
    assert row.status == "nan_output" and row.value is None


def test_missing_checkpoints_offline_say_how_to_give_them(tmp_path):
    from likeness.cli.bench import default_metrics

    models = VisionModels({"hps": "nobody/none:HPS_v2.1_compressed.pt", "imagereward": "nobody/nothing"}, device="cpu")
    for name, flag in (("hpsv2", "--hps-model"), ("imagereward", "--imagereward-model")):
        (row,) = METRICS.create(name, models=models).update([_sample(tmp_path, _image(), "a dog")])
        assert row.status == "model_missing" and flag in row.detail["problem"] and "hf download nobody/" in row.detail["problem"]
    chosen, skipped = default_metrics(models)
    assert "hpsv2" not in chosen and any(s.startswith("hpsv2 (not available locally") for s in skipped)


# --------------------------------------------------------------------------------------------------------
# ImageReward
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_imagereward(sd, pixels, ids, mask, heads=2):
    """BLIP's ViT (pre-LN blocks, eps 1e-6, final norm on every token) + BERT (post-LN, eps 1e-12) with
    cross-attention to all image tokens; the head on position 0; (raw - mean) / std."""
    sd = {k: v.float() for k, v in sd.items()}
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    w = sd[v + "cls_token"].shape[-1]
    patch = sd[v + "patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[v + "pos_embed"]
    for i in range(2):
        p = f"{v}blocks.{i}."
        qw, kw, vw = sd[p + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = sd[p + "attn.qkv.bias"].chunk(3)
        attn = _mha(w, heads, qw, qb, kw, kb, vw, vb, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = _ln(x, sd, p + "norm1", 1e-6)
        x = x + attn(h, h, h, need_weights=False)[0]
        h = _ln(x, sd, p + "norm2", 1e-6)
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    image = _ln(x, sd, v + "norm", 1e-6)
    e = t + "embeddings."
    y = _ln(sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][: ids.shape[1]], sd, e + "LayerNorm", 1e-12)
    hidden = y.shape[-1]
    for i in range(2):
        p = f"{t}encoder.layer.{i}."
        for part, memory, kdim, pad in (("attention", None, None, mask == 0), ("crossattention", image, w, None)):
            s = f"{p}{part}.self."
            attn = _mha(hidden, heads, sd[s + "query.weight"], sd[s + "query.bias"], sd[s + "key.weight"], sd[s + "key.bias"],
                        sd[s + "value.weight"], sd[s + "value.bias"], sd[f"{p}{part}.output.dense.weight"],
                        sd[f"{p}{part}.output.dense.bias"], kdim=kdim)
            kv = y if memory is None else memory
            y = _ln(y + attn(y, kv, kv, key_padding_mask=pad, need_weights=False)[0], sd, f"{p}{part}.output.LayerNorm", 1e-12)
        inner = F.gelu(F.linear(y, sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"]))
        y = _ln(y + F.linear(inner, sd[p + "output.dense.weight"], sd[p + "output.dense.bias"]), sd, p + "output.LayerNorm", 1e-12)
    z = y[:, 0]
    for k in (0, 2, 4, 6, 7):
        z = F.linear(z, sd[f"mlp.layers.{k}.weight"], sd[f"mlp.layers.{k}.bias"])
    return (z[:, 0] - 0.16717362830052426) / 1.0333394966054072


def _ir_pixels(image, size=32):
    w, h = image.size
    s = min(w, h)
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    arr = np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255
    arr = (arr - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array([0.26862954, 0.26130258, 0.27577711])
    assert s > 0
    return torch.tensor(arr.transpose(2, 0, 1), dtype=torch.float32)[None]


def test_imagereward_equals_blip_reference_and_statuses(built, tmp_path):
    from transformers import AutoTokenizer

    models = VisionModels({"imagereward": str(built["ir"])}, device="cpu", batch_size=2)
    long_prompt = "{} " + " ".join(["eating an apple in a library"] * 8)
    images = [_image(0), _image(1, (40, 64)), _image(2)]
    samples = [_sample(tmp_path, images[0], "{} riding a horse on the beach", "a"),
               _sample(tmp_path, images[1], "a dog in a library", "b"),
               _sample(tmp_path, images[2], long_prompt, "c"),
               _sample(tmp_path, _image(3), "", "d"), _sample(tmp_path, _image(4), None, "e")]
    (tmp_path / "f.png").write_bytes(b"not a png")
    samples.append(Sample("f", tmp_path / "f.png", Identity("ann", []), None, {"prompt_template": "a dog"}))
    rows = {r.item_id: r for r in METRICS.create("imagereward", models=models).update(samples)}
    sd = torch.load(built["ir"] / "ImageReward.pt", weights_only=True)
    tok = AutoTokenizer.from_pretrained(built["ir"])
    for name, im in zip("abc", images):
        text = next(s for s in samples if s.item_id == name).meta["prompt_template"].replace("{}", "a person")
        enc = tok(text, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        expected = float(reference_imagereward(sd, _ir_pixels(im), enc["input_ids"], enc["attention_mask"])[0])
        assert rows[name].value == pytest.approx(expected, abs=1e-5)
        assert rows[name].detail["raw"] == pytest.approx(expected * 1.0333394966054072 + 0.16717362830052426, abs=1e-5)
    assert rows["a"].status == rows["b"].status == "ok" and rows["c"].status == "truncated" and rows["c"].detail["tokens"] > 35
    assert rows["d"].status == "empty_prompt" and rows["e"].status == "no_prompt" and rows["f"].value is None
    assert rows["f"].status not in ("ok", "model_missing")
    # Batched (2 a batch) equals one image at a time.
    one = VisionModels({"imagereward": str(built["ir"])}, device="cpu", batch_size=1)
    single = {r.item_id: r for r in METRICS.create("imagereward", models=one).update(samples[:3])}
    assert all(single[n].value == pytest.approx(rows[n].value, abs=1e-6) for n in "abc")


def test_imagereward_layout_errors_name_the_keys(built, tmp_path):
    sd = torch.load(built["ir"] / "ImageReward.pt", weights_only=True)
    cases = {"head": ({k: v for k, v in sd.items() if k != "mlp.layers.7.weight"}, "mlp.layers.7.weight"),
             "vit": ({k: v for k, v in sd.items() if k != "blip.visual_encoder.blocks.0.attn.qkv.bias"}, "blip.visual_encoder.blocks.0.attn.qkv.bias"),
             "bert": ({**sd, "blip.text_encoder.embeddings.token_type_embeddings.weight": torch.zeros(2, 128)}, "token_type_embeddings")}
    for name, (state, key) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(state, path)
        models = VisionModels({"imagereward": str(path), "imagereward-tokenizer": str(built["ir"])}, device="cpu")
        (row,) = METRICS.create("imagereward", models=models).update([_sample(tmp_path, _image(), "a dog", name)])
        assert row.status == "model_missing" and key in row.detail["problem"] and "--imagereward-model" in row.detail["problem"]
