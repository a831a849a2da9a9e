"""Text-image metrics on tiny CLIP / OWL-ViT / BLIP VQA models built from configs and saved with save_pretrained:
each metric equals a hand computation from the same embeddings and logits; bad input gives a named status."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from likeness.bench.evaluate import format_summary, score_items
from likeness.bench.store import ResultsStore
from likeness.data.identities import Identity
from likeness.data.layout import GeneratedItem
from likeness.metrics import METRICS, Sample
from likeness.metrics.cp_clip import cp_clip_value
from likeness.metrics.features import FeatureExtractor, is_role_word, relation_question
from likeness.metrics.goa import goa_value
from likeness.metrics.penalty import follows_prompt, penalised_rows
from likeness.metrics.base import Score
from likeness.models.tiny_vision import build_tiny_aesthetic, build_tiny_blip_vqa, build_tiny_clip, build_tiny_owlvit
from likeness.models.vision_language import VisionModelError, VisionModels


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on a hub
    root = tmp_path_factory.mktemp("tiny-vl")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    built = {"clip": build_tiny_clip(root / "clip"), "owlvit": build_tiny_owlvit(root / "owlvit"),
             "vlm": build_tiny_blip_vqa(root / "blip"), "aesthetic": build_tiny_aesthetic(root / "aesthetic"),
             "clip2": build_tiny_clip(root / "clip2", seed=1)}
    torch.set_num_threads(threads)
    yield built
    mp.undo()


@pytest.fixture(scope="module")
def models(folders):
    return VisionModels({"clip": str(folders["clip"]), "owlvit": str(folders["owlvit"]), "vlm": str(folders["vlm"]),
                         "gen4gen-clip": str(folders["clip2"]), "gen4gen-owlvit": str(folders["owlvit"]),
                         "pickscore": str(folders["clip2"]), "aesthetic-clip": str(folders["clip"]),
                         "aesthetic": str(folders["aesthetic"])}, device="cpu", batch_size=3)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """An identity with two photos and five generated images (random pixels) with prompts and metadata."""
    root = tmp_path_factory.mktemp("case")
    rng = np.random.default_rng(0)

    def image(name, size=(48, 40)):
        path = root / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        return path

    photos = [image("photo0"), image("photo1", (60, 60))]
    person = Identity("ann", photos)
    long_prompt = "{} " + " ".join(["eating an apple in a library"] * 20)
    metas = [
        {"prompt_template": "{} eating an apple in a library", "detectables": ["apple", "library"],
         "relations": [["person", "eating", "apple"], ["person", "in", "library"]], "background": "a library"},
        {"prompt_template": "{} dressed as a clown in a space suit", "detectables": ["clown", "space suit"],
         "relations": [["person", "wearing", "space suit"]]},
        {"prompt_template": long_prompt, "detectables": ["astronaut"], "relations": []},
        {"prompt_template": "", "detectables": []},
        {"prompt_template": "{} holding a dog", "detectables": ["dog"], "relations": [["person", "holding", "dog"]],
         "concepts": [{"name": "rex", "label": "dog", "images": [str(photos[1])]},
                      {"name": "ann", "label": "person", "images": [str(p) for p in photos]}]},
    ]
    samples = [Sample(f"i{k}", image(f"gen{k}"), person, photos[k % 2], meta) for k, meta in enumerate(metas)]
    return root, person, samples


def _hand_clip(folder, images=None, texts=None):
    """CLIP embeddings computed directly with transformers, independent of likeness' wrapper."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        if images is not None:
            out = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        else:
            tokens = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
            out = model.get_text_features(**tokens).pooler_output
        scale = float(model.logit_scale.exp())
    return (out / out.norm(dim=-1, keepdim=True)).numpy(), scale


def _metric(name, models):
    return METRICS.create(name, models=models)


def _scores(names, models, samples):
    extractor = FeatureExtractor(models)
    metrics = [_metric(n, models) for n in names]
    features = extractor.extract(samples, [f for m in metrics for f in m.features])
    return {m.name: {s.item_id: s for s in m.update_features(samples, features)} for m in metrics}, extractor


def test_clip_t_i_n_equal_hand_computation_and_encode_each_image_once(models, folders, case):
    _, person, samples = case
    clip = models.get("clip")
    before = clip.images_encoded
    scores, _ = _scores(["clip-t", "clip-i", "clip-n", "pickscore"], models, samples)
    # 5 generated images + 2 reference photos, each encoded once for all three CLIP metrics.
    assert clip.images_encoded - before == 7
    images = [Image.open(s.image).convert("RGB") for s in samples]
    refs = [Image.open(p).convert("RGB") for p in person.photos]
    texts = [s.meta["prompt_template"].replace("{}", "a person") for s in samples[:3]] + ["", samples[4].meta["prompt_template"].replace("{}", "a person")]
    img, _ = _hand_clip(folders["clip"], images=images)
    ref, _ = _hand_clip(folders["clip"], images=refs)
    txt, _ = _hand_clip(folders["clip"], texts=texts)
    for k, s in enumerate(samples):
        if k == 3:
            continue
        assert scores["clip-t"][s.item_id].value == pytest.approx(float(img[k] @ txt[k]), abs=1e-5)
        assert scores["clip-n"][s.item_id].value == pytest.approx(float(ref[k % 2] @ txt[k]), abs=1e-5)
        assert scores["clip-i"][s.item_id].value == pytest.approx(float(img[k] @ ref[k % 2]), abs=1e-5)
    assert scores["clip-t"]["i0"].detail["text"] == "a person eating an apple in a library"
    long_row = scores["clip-t"]["i2"]
    assert long_row.status == "truncated" and long_row.detail["truncated"] and long_row.detail["tokens"] > 77
    assert scores["clip-t"]["i0"].status == "ok" and not scores["clip-t"]["i0"].detail["truncated"]
    assert scores["clip-t"]["i3"].status == "empty_prompt" and scores["clip-t"]["i3"].value is None
    assert scores["clip-i"]["i3"].status == "ok"  # the empty prompt does not matter to CLIP-I
    # PickScore = logit_scale * cosine under its own model.
    img2, scale = _hand_clip(folders["clip2"], images=images[:1])
    txt2, _ = _hand_clip(folders["clip2"], texts=texts[:1])
    assert scores["pickscore"]["i0"].value == pytest.approx(scale * float(img2[0] @ txt2[0]), rel=1e-5)
    assert scores["clip-t"]["i0"].protocol["name"] == f"clip-t/v1+{folders['clip']}"


def test_batched_equals_one_at_a_time(models, case):
    _, _, samples = case
    names = ["clip-t", "goa", "rfs", "cp-clip"]
    batched, _ = _scores(names, models, samples)
    for s in samples:
        single, _ = _scores(names, models, [s])
        for name in names:
            a, b = batched[name][s.item_id].value, single[name][s.item_id].value
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-5)


def test_goa_role_words_exclusion_and_hand_computation(models, folders, case):
    from transformers import OwlViTForObjectDetection, OwlViTProcessor

    _, _, samples = case
    # Stellar's official 24 words, matched exactly as the official code does (case-sensitive, no article stripping).
    assert is_role_word("clown") and is_role_word("astronaut") and is_role_word("Pope") and is_role_word("sumo fighter")
    assert not is_role_word("space suit") and not is_role_word("guitar") and not is_role_word("chef")
    assert not is_role_word("man") and not is_role_word("pope") and not is_role_word("an astronaut")
    scores, _ = _scores(["goa"], models, samples)
    goa = scores["goa"]
    assert goa["i1"].detail["dropped_role_words"] == ["clown"] and list(goa["i1"].detail["objects"]) == ["space suit"]
    assert goa["i2"].status == "no_detectables" and goa["i2"].value is None  # only a role word: excluded
    assert goa["i3"].status == "no_detectables"
    summary = _metric("goa", models).summarize(list(goa.values()))
    assert summary["excluded_no_detectables"] == 2 and summary["count"] == 3

    model, processor = OwlViTForObjectDetection.from_pretrained(folders["owlvit"]).eval(), OwlViTProcessor.from_pretrained(folders["owlvit"])
    image = Image.open(samples[0].image).convert("RGB")
    with torch.no_grad():
        logits = model(**processor(text=[["apple", "library"]], images=image, return_tensors="pt")).logits[0]
    probs = torch.sigmoid(logits).numpy()
    best = probs.argmax(axis=1)
    expected = [probs[best == q, q].max() if (best == q).any() else 0.0 for q in range(2)]
    assert goa["i0"].value == pytest.approx(float(np.mean(expected)), abs=1e-5)
    # The rule itself, on a designed matrix: box 2's best query is object 0 (0.9), no box prefers object 2.
    value, per_object = goa_value(np.array([[0.2, 0.6, 0.5], [0.1, 0.3, 0.2], [0.9, 0.95, 0.1], [0.7, 0.1, 0.65]]))
    assert per_object == [0.7, 0.95, 0.0] and value == pytest.approx((0.7 + 0.95 + 0.0) / 3)


def test_cp_clip_per_box_matching_division_and_ti_clip(models, folders, case):
    # Hand rule: box 0 best matches concept 1 (0.8), box 1 concept 0 (mean of 0.6 and 0.2 = 0.4);
    # three concepts requested, so the missing one costs: (0.8 + 0.4) / 3.
    crops = np.eye(3)[:2]
    refs = [np.array([[0.0, 0.6, 0.8], [0.0, 0.2, 0.98]]), np.array([[0.8, 0.3, 0.52]]), np.array([[0.0, 0.0, 1.0]])]
    value, best, per_box = cp_clip_value(crops, refs)
    assert best == [1, 0] and per_box == pytest.approx([0.8, 0.4]) and value == pytest.approx(1.2 / 3)

    _, person, samples = case
    models.get("gen4gen-owlvit")
    extractor = FeatureExtractor(models, min_box_score=0.0)  # random tiny detector: keep every best box
    metric = _metric("cp-clip", models)
    feats = extractor.extract(samples, metric.features)
    rows = metric.update_features(samples, feats)
    concept = feats[4][metric.features[0]]
    assert concept.labels == ["dog", "person"] and len(concept.box_labels) == 2
    # Recompute from the same crops and references by hand.
    crop_embs = concept.crops
    sims = np.array([[np.mean(c @ r.T) for r in concept.references] for c in crop_embs])
    assert rows[4].value == pytest.approx(sims.max(axis=1).sum() / 2, abs=1e-6)
    # The crop embeddings are CLIP's of the box crops.
    image = Image.open(samples[4].image).convert("RGB")
    x0, y0, x1, y1 = concept.boxes[0]
    crop = image.crop((int(x0), int(y0), max(int(x0) + 1, int(np.ceil(x1))), max(int(y0) + 1, int(np.ceil(y1)))))
    hand, _ = _hand_clip(folders["clip2"], images=[crop])
    assert np.allclose(hand[0], crop_embs[0], atol=1e-5)
    assert rows[0].detail["concepts"] == ["ann"]  # no concepts listed: the identity itself, label "person"

    scores, _ = _scores(["ti-clip"], models, samples)
    assert scores["ti-clip"]["i1"].status == "no_background"
    img, _ = _hand_clip(folders["clip2"], images=[Image.open(samples[0].image).convert("RGB")])
    txt, _ = _hand_clip(folders["clip2"], texts=["a library"])
    assert scores["ti-clip"]["i0"].value == pytest.approx(float(img[0] @ txt[0]), abs=1e-5)


def test_rfs_yes_probability_equals_hand_computation(models, folders, case):
    from transformers import BlipForQuestionAnswering, BlipProcessor

    _, _, samples = case
    assert relation_question(["person", "riding", "bicycle"]) == "is the person riding the bicycle?"
    scores, _ = _scores(["rfs"], models, samples)
    rfs = scores["rfs"]
    assert rfs["i2"].status == "no_relations" and rfs["i3"].status == "no_relations" and rfs["i2"].value is None
    assert rfs["i0"].protocol["name"].startswith("rfs/open-vqa-v1+")
    model, processor = BlipForQuestionAnswering.from_pretrained(folders["vlm"]).eval(), BlipProcessor.from_pretrained(folders["vlm"])
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    image = Image.open(samples[0].image).convert("RGB")
    probs = []
    with torch.no_grad():
        for question in ("is the person eating the apple?", "is the person in the library?"):
            inputs = processor(images=image, text=question, return_tensors="pt")
            vision = model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
            q = model.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   encoder_hidden_states=vision)[0]
            logits = model.text_decoder(input_ids=torch.tensor([[model.config.text_config.bos_token_id]]),
                                        encoder_hidden_states=q).logits[0, 0]
            probs.append(float(torch.softmax(logits[[yes, no]], dim=0)[0]))
    assert rfs["i0"].value == pytest.approx(np.mean(probs), abs=1e-4)
    assert list(rfs["i0"].detail["questions"]) == ["is the person eating the apple?", "is the person in the library?"]


def test_aesthetic_head_on_clip_embedding(models, folders, case):
    from safetensors.torch import load_file

    _, _, samples = case
    scores, _ = _scores(["aesthetic"], models, samples[:1])
    state = load_file(str(folders["aesthetic"] / "aesthetic.safetensors"))
    emb, _ = _hand_clip(folders["clip"], images=[Image.open(samples[0].image).convert("RGB")])
    x = torch.tensor(emb[0])
    for k in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{k}.weight"].T + state[f"layers.{k}.bias"]
    assert scores["aesthetic"]["i0"].value == pytest.approx(float(x[0]), abs=1e-5)


def test_penalty_zeroes_exactly_the_images_that_do_not_follow_the_prompt():
    clip_n = {"a": 0.20, "b": 0.30, "c": 0.25, "d": 0.25}
    clip_t = {"a": 0.40, "b": 0.31, "c": 0.30, "d": None}
    follows, std = follows_prompt(clip_t, clip_n)
    assert std == pytest.approx(np.std([0.20, 0.30, 0.25, 0.25], ddof=1))  # sample std, as the official code
    assert follows == {"a": 0.40 > 0.20 + 2 * std, "b": False, "c": 0.30 > 0.25 + 2 * std}
    assert follows["a"] and not follows["c"]
    raw = [Score(i, "ips", v, "ok" if v else "no_face", 1, {"name": "ips/v1"}, {}) for i, v in
           [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6), ("e", 0.0)]]
    rows = {r.item_id: r for r in penalised_rows(raw, follows, std, "clip-t/v1")}
    assert [rows[i].value for i in "abcde"] == [0.9, 0.0, 0.0, 0.6, 0.0]
    assert [rows[i].status for i in "abcde"] == ["ok", "zeroed", "zeroed", "unjudged", "unjudged"]
    assert rows["b"].detail["raw_value"] == 0.8 and rows["b"].metric == "ips-penalised"


def _items(samples):
    return [GeneratedItem(s.item_id, s.image, "ann", s.reference, s.meta) for s in samples]


def test_evaluator_penalty_statuses_and_store(models, case, tmp_path, face_cache):
    _, person, samples = case
    items = _items(samples) + [GeneratedItem("bad", tmp_path / "nothing.png", "ann", person.photos[0], {"prompt_template": "{}"}),
                               GeneratedItem("sidecar", tmp_path / "x.png", "ann", None, {}, "bad_sidecar", "x.json: malformed")]
    store = tmp_path / "r.sqlite"
    report = score_items(items, [person], store, ["clip-t", "clip-n", "ips", "goa"], progress=False, models=models,
                         cache=face_cache, batch_size=3)
    with ResultsStore(store) as results:
        rows = {(s.item_id, s.metric): s for s in results.scores()}
    assert rows[("bad", "clip-t")].status == "missing" and rows[("sidecar", "goa")].status == "bad_sidecar"
    assert {m for (i, m) in rows if i == "i0"} == {"clip-t", "clip-n", "ips", "goa", "ips-penalised"}
    t = {i: rows[(i, "clip-t")].value for i in ("i0", "i1", "i2", "i4")}
    n = {i: rows[(i, "clip-n")].value for i in ("i0", "i1", "i2", "i4")}
    std = np.std(list(n.values()), ddof=1)
    for i in t:
        pen = rows[(i, "ips-penalised")]
        follows = t[i] > n[i] + 2 * std
        assert pen.status == ("zeroed" if not follows else rows[(i, "ips")].status)
        assert pen.value == (rows[(i, "ips")].value if follows else 0.0)
    assert rows[("i3", "ips-penalised")].status == "unjudged"  # empty prompt: no CLIP-T
    summary = {s["metric"]: s for s in report.summaries}
    assert summary["ips-penalised"]["zeroed"] == sum(t[i] <= n[i] + 2 * std for i in t)
    assert summary["goa"]["excluded_no_detectables"] == 3  # i2 (only a role word), i3, and "bad"
    lo, hi = summary["clip-t"]["ci95"]
    assert lo <= summary["clip-t"]["mean"] <= hi
    text = format_summary(report)
    assert "exploitation penalty on IPS" in text and "images zeroed" in text and "clip-t/v1+" in text
    # Re-running skips everything already stored.
    again = score_items(items, [person], store, ["clip-t", "clip-n", "ips", "goa"], progress=False, models=models,
                        cache=face_cache)
    assert again.n_scored_now == 0


def test_missing_model_offline_is_one_clear_error_and_a_status(tmp_path, case, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, person, samples = case
    models = VisionModels({"clip": "someone/not-a-real-clip"})
    with pytest.raises(VisionModelError) as info:
        models.get("clip")
    message = str(info.value)
    assert "someone/not-a-real-clip" in message and "--clip-model" in message and "LIKENESS_CLIP_MODEL" in message
    report = score_items(_items(samples[:2]), [person], tmp_path / "m.sqlite", ["clip-t"], progress=False, models=models)
    assert report.model_errors == [message]
    with ResultsStore(tmp_path / "m.sqlite") as results:
        assert {s.status for s in results.scores("clip-t")} == {"model_missing"}
        assert results.done_items("clip-t") == set()  # retried once the model is provided
    assert not VisionModels({"clip": str(tmp_path / "nope")}).available("clip")
    with pytest.raises(VisionModelError, match="no config.json"):
        VisionModels({"clip": str(tmp_path)}).get("clip")


def test_nan_output_and_unreadable_image_are_named_statuses(models, case, tmp_path):
    _, person, samples = case
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    metric = _metric("clip-t", models)
    (row,) = metric.update([Sample("b", broken, person, person.photos[0], samples[0].meta)])
    assert row.status == "unreadable" and str(broken) in row.detail["problem"]
    assert metric._row(samples[0], float("nan")).status == "nan_output"
    clip = models.get("clip")
    original = clip.encode_images
    clip.encode_images = lambda images: np.full((len(images), 16), np.nan, np.float32)
    try:
        (row,) = _metric("clip-i", models).update([samples[0]])
    finally:
        clip.encode_images = original
    assert row.status == "nan_output" and row.value is None


def test_cli_evaluate_text_metrics_and_missing_model(folders, case, tmp_path, capsys, monkeypatch):
    from likeness.cli import main

    root, person, samples = case
    dataset = tmp_path / "people" / "ann"
    dataset.mkdir(parents=True)
    for k, photo in enumerate(person.photos):
        Image.open(photo).save(dataset / f"{k}.png")
    out = tmp_path / "generated" / "ann"
    out.mkdir(parents=True)
    for k, s in enumerate(samples):
        Image.open(s.image).save(out / f"{s.item_id}.png")
        (out / f"{s.item_id}.json").write_text(json.dumps({**s.meta, "item_id": s.item_id, "identity": "ann", "reference": f"{k % 2}.png"}))
    args = ["evaluate", str(tmp_path / "people"), str(tmp_path / "generated"), "--store", str(tmp_path / "s.sqlite"),
            "--metrics", "clip-t,clip-i,goa", "--clip-model", str(folders["clip"]), "--owlvit-model", str(folders["owlvit"]), "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "clip-t/v1+" in text and "goa/v2+" in text and "95% CI" in text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(args[:5] + ["--metrics", "rfs", "--vlm-model", "nobody/no-vqa", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "nobody/no-vqa" in captured.err and "--vlm-model" in captured.err and "Traceback" not in captured.err


def test_bench_default_metrics_are_those_whose_models_are_here(case, monkeypatch):
    """HPSv2 / ImageReward checkpoints are not cached here: bench leaves them out and says why."""
    from likeness.cli.bench import default_metrics

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chosen, skipped = default_metrics(VisionModels({"clip": "likeness/tiny-clip", "owlvit": "likeness/tiny-owlvit"}))
    assert {"ips", "sis", "aps", "clip-t", "clip-i", "clip-n", "goa"} <= set(chosen)
    assert any(s.startswith("rfs (not available locally") for s in skipped) or "rfs" in chosen
    for name in ("imagereward", "hpsv2"):
        assert name not in chosen and any(s.startswith(f"{name} (not available locally") for s in skipped)


def test_owlv2_loads_and_boxes_scale_to_its_padded_square(tmp_path):
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from likeness.models.tiny_vision import _clip_tokenizer, _small

    folder = tmp_path / "owlv2"
    tok = _clip_tokenizer(folder / "_tok", 16)
    config = Owlv2Config(text_config=_small(vocab_size=len(tok), max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                         vision_config=_small(image_size=32, patch_size=8), projection_dim=32)
    torch.manual_seed(0)
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(folder)
    models = VisionModels({"owlvit": str(folder)}, device="cpu")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 80, 3), dtype=np.uint8))
    (det,) = models.get("owlvit").detect([image], [["dog", "bench"]])
    model, processor = Owlv2ForObjectDetection.from_pretrained(folder).eval(), Owlv2Processor.from_pretrained(folder)
    with torch.no_grad():
        out = model(**processor(text=[["dog", "bench"]], images=image, return_tensors="pt"))
    assert np.allclose(det.scores, torch.sigmoid(out.logits[0]).numpy(), atol=1e-6)
    cx, cy, w, h = out.pred_boxes[0].numpy().T
    side = 80  # OWLv2 pads the 80x40 image to an 80x80 square
    expected = np.clip(np.stack([(cx - w / 2) * side, (cy - h / 2) * side, (cx + w / 2) * side, (cy + h / 2) * side], 1), 0, [80, 40, 80, 40])
    assert np.allclose(det.boxes, expected, atol=1e-3)
