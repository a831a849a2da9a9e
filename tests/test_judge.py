"""The open multimodal judge: its rubric and parser on known answers (malformed ones included), and a tiny
Qwen2.5-VL built from its config, saved with save_pretrained and loaded back by folder: its random answers are
``parse_failed``, never a guessed score; answers are cached per (image content, question, rubric, model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from likeness.data.identities import Identity
from likeness.metrics import METRICS, Sample
from likeness.metrics.features import FeatureExtractor, JudgeFeature, judge_answer
from likeness.metrics.rubric import IDENTITY, RUBRIC_VERSION, parse_answer, question
from likeness.models.judge import AnswerCache, JudgeRequest, image_hash
from likeness.models.tiny_judge import build_tiny_qwen_vl
from likeness.models.vision_language import VisionModels

NAMES = ("judge-identity", "judge-prompt", "judge-overall")


@pytest.mark.parametrize("answer, status, score", [
    ("Reason: the same face, jaw and eyes.\nScore: 4", "ok", 4),
    ("Reason: nose differs slightly\nScore: 3", "ok", 3),
    ("**Reason:** a look-alike\n**Score:** 2", "ok", 2),
    ("Score = 0. There is no person in the image.", "ok", 0),
    ("Reason: partly right\nScore: 1/4", "ok", 1),
    ("The score is 3 out of 4 because the bicycle is missing.", "ok", 3),
    ("Reason: same\nScore: 3\nScore: 3", "ok", 3),  # repeated, not ambiguous
    ("Reason: looks similar", "parse_failed", None),  # no score line
    ("Score: three", "parse_failed", None),
    ("Reason: hard to say\nScore: 2\nOn reflection, Score: 3", "parse_failed", None),  # two different scores
    ("", "parse_failed", None),
    ("Reason: perfect\nScore: 5", "out_of_range", None),
    ("Reason: good\nScore: 7/10", "out_of_range", None),  # another scale
    ("Score: 2.5", "out_of_range", None),  # not a whole point
    ("Score: -1", "out_of_range", None),
    ("I'm sorry, but I can't help with identifying people in images.", "refused", None),
    ("As an AI, I cannot compare faces.", "refused", None),
])
def test_parser_on_known_answers(answer, status, score):
    parsed = parse_answer(answer)
    assert (parsed.status, parsed.score) == (status, score)
    assert (parsed.problem == "") == (status == "ok")


def test_parser_keeps_the_reason():
    assert parse_answer("Reason: same jaw line, different hair.\nScore: 3").reason == "same jaw line, different hair."
    assert parse_answer("Reason: fine. Score: 4").reason == "fine."
    assert parse_answer("3").status == "parse_failed"  # a bare number is not read as a score


def test_rubric_questions_as_documented():
    assert RUBRIC_VERSION == "rubric-v1"
    assert question("identity") == IDENTITY and "Image 1 is a reference photo" in IDENTITY
    text = question("prompt", "a person  riding a\nbicycle")
    assert '"a person riding a bicycle"' in text  # whitespace folded, quoted
    for q in (IDENTITY, text):
        assert q.rstrip().endswith("Score: <0, 1, 2, 3 or 4>") and "4 - " in q and "0 - " in q
    with pytest.raises(ValueError, match="unknown judge aspect"):
        question("style")


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen-vl") / "model")
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge-case")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(4):
        paths.append(root / f"img{k}.png")
        Image.fromarray(rng.integers(0, 255, (72 + 8 * k, 64, 3), dtype=np.uint8)).save(paths[-1])
    person = Identity("ann", paths[2:])
    samples = [Sample("a", paths[0], person, paths[2], {"prompt_template": "{} riding a bicycle on the moon"}),
               Sample("b", paths[1], person, paths[3], {"prompt_template": "{} playing a violin"})]
    return root, samples


def _run(models, samples, names=NAMES):
    metrics = [METRICS.create(n, models=models) for n in names]
    features = FeatureExtractor(models).extract(samples, [f for m in metrics for f in m.features])
    return metrics, {m.name: m.update_features(samples, features) for m in metrics}


def test_tiny_judge_random_answers_are_parse_failed_and_cached(judge_folder, case, tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_JUDGE_CACHE", str(tmp_path / "answers.sqlite"))
    root, samples = case
    models = VisionModels({"judge": str(judge_folder)}, device="cpu", batch_size=2, dtype="fp32")
    metrics, rows = _run(models, samples)
    judge = models.get("judge")
    assert type(judge.model).__name__ == "Qwen2_5_VLForConditionalGeneration"  # loaded by folder, the real class
    # judge-overall shares the two answers: 2 images x 2 questions generated, in batches of 2.
    assert (judge.generated, judge.generate_calls) == (4, 2)
    for name, scores in rows.items():
        for s in scores:
            assert s.value is None and s.status == "parse_failed", (name, s)  # random weights: garbage text, no guess
    first = rows["judge-identity"][0]
    assert first.detail["answer"] and first.detail["cached"] is False and first.detail["score"] is None
    proto = metrics[0].protocol
    assert proto["name"] == f"judge-identity/rubric-v1+{judge_folder}"
    assert proto["judge"]["rubric"] == "rubric-v1" and proto["judge"]["revision"].startswith("sha256:")
    assert proto["judge"]["decoding"] == {"do_sample": False, "max_new_tokens": 128} and proto["judge"]["dtype"] == "float32"
    assert len(AnswerCache(tmp_path / "answers.sqlite")) == 4
    # A rerun (new models, new extractor, e.g. another store): every answer read back, nothing generated.
    models2 = VisionModels({"judge": str(judge_folder)}, device="cpu", batch_size=2, dtype="fp32")
    _, rows2 = _run(models2, samples)
    assert models2.get("judge").generated == 0
    again = rows2["judge-identity"] + rows2["judge-prompt"]
    for a, b in zip(rows["judge-identity"] + rows["judge-prompt"], again):
        assert (b.status, b.detail["answer"], b.detail["cached"]) == (a.status, a.detail["answer"], True)


def test_prompt_tokens_match_the_image_grid(judge_folder, case, tmp_path):
    root, samples = case
    models = VisionModels({"judge": str(judge_folder)}, device="cpu")
    judge = models.get("judge")
    images = [Image.open(samples[0].image).convert("RGB"), Image.open(samples[1].image).convert("RGB")]
    text = judge.prompt(JudgeRequest(images, question("identity"), RUBRIC_VERSION))
    assert text.count(judge.image_token) == 2 and text.index(judge.image_token) < text.index("Image 1 is a reference")
    assert text.endswith("<|im_start|>assistant\n")
    grid = judge.image_processor(images=images, size={"shortest_edge": 3136, "longest_edge": judge.max_pixels},
                                 return_tensors="pt")["image_grid_thw"]
    assert grid.shape == (2, 3)


def test_a_batch_scores_each_request_as_alone(judge_folder, case):
    """Left padding, the expanded image tokens and their rotary positions: the next-token logits of each request in a
    mixed batch (two images + rubric, one image + prompt: different lengths) match the request run alone. Bound
    1e-4: padding changes the shapes of the batched products, whose rounding differs across CPUs."""
    root, samples = case
    judge = VisionModels({"judge": str(judge_folder)}, device="cpu", dtype="fp32").get("judge")
    images = [Image.open(p).convert("RGB") for p in (samples[0].reference, samples[0].image, samples[1].image)]
    requests = [JudgeRequest(images[:2], question("identity"), RUBRIC_VERSION),
                JudgeRequest(images[2:], question("prompt", "a person playing a violin"), RUBRIC_VERSION)]
    with torch.no_grad():
        batch = judge.inputs(requests)
        assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()  # the shorter one, left-padded
        grid = batch["image_grid_thw"]
        assert int(batch["mm_token_type_ids"].sum()) == int(grid.prod(dim=-1).sum()) // 4  # merge 2x2 patches per token
        together = judge.model(**batch).logits[:, -1]
        for k, request in enumerate(requests):
            alone = judge.model(**judge.inputs([request])).logits[0, -1]
            assert torch.allclose(together[k], alone, atol=1e-4), float((together[k] - alone).abs().max())
        # The bound is meaningful: without the image-token marks (so wrong rotary positions) the logits move far more.
        wrong = dict(judge.inputs(requests[:1]))
        wrong.pop("mm_token_type_ids")
        assert (judge.model(**wrong).logits[0, -1] - together[0]).abs().max() > 1e-2


def test_known_answers_through_the_cache_give_scores_and_reasons(judge_folder, case, tmp_path, monkeypatch):
    """Answers stored under the keys the judge computes (its real lookup path) score like a model that gave them."""
    from likeness.data.images import load_image

    monkeypatch.setenv("LIKENESS_JUDGE_CACHE", str(tmp_path / "known.sqlite"))
    root, samples = case
    models = VisionModels({"judge": str(judge_folder)}, device="cpu", dtype="fp32")
    judge = models.get("judge")
    answers = {("a", "identity"): "Reason: same eyes and jaw.\nScore: 3", ("a", "prompt"): "Reason: bicycle, no moon.\nScore: 2",
               ("b", "identity"): "I'm sorry, I can't compare people.", ("b", "prompt"): "Reason: violin shown.\nScore: 4"}
    rows = []
    for s in samples:
        image = load_image(s.image)
        for aspect, request in (("identity", JudgeRequest([load_image(s.reference), image], question("identity"), RUBRIC_VERSION)),
                                ("prompt", JudgeRequest([image], question("prompt", s.meta["prompt_template"].replace("{}", "a person")),
                                                        RUBRIC_VERSION))):
            rows.append((judge.key(request), judge.model_id, judge.revision, RUBRIC_VERSION, answers[(s.item_id, aspect)]))
    judge.cache.put(rows)
    _, scored = _run(models, samples)
    assert judge.generated == 0
    ident, prompt, overall = (scored[n] for n in NAMES)
    assert (ident[0].value, ident[0].detail["score"], ident[0].detail["reason"]) == (0.75, 3, "same eyes and jaw.")
    assert (ident[1].value, ident[1].status) == (None, "refused")
    assert (prompt[0].value, prompt[1].value) == (0.5, 1.0)
    assert overall[0].value == pytest.approx(0.75 * 0.5) and overall[0].detail["prompt"]["reason"] == "bicycle, no moon."
    assert (overall[1].value, overall[1].status) == (None, "refused")  # either side unreadable -> unscored, its status


def test_bad_inputs_have_named_statuses(judge_folder, case, tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_JUDGE_CACHE", str(tmp_path / "bad.sqlite"))
    root, samples = case
    missing = root / "missing.png"
    bad = [Sample("noref", samples[0].image, None, None, {"prompt_template": "{} singing"}),
           Sample("noprompt", samples[0].image, None, samples[0].reference, {}),
           Sample("gone", missing, None, samples[0].reference, {"prompt_template": "{} singing"})]
    models = VisionModels({"judge": str(judge_folder)}, device="cpu", dtype="fp32")
    _, rows = _run(models, bad, ("judge-identity", "judge-prompt"))
    assert [s.status for s in rows["judge-identity"]][:1] == ["ref_missing"]
    assert rows["judge-prompt"][1].status == "no_prompt"
    assert rows["judge-identity"][2].status == rows["judge-prompt"][2].status == "missing"
    nothing = VisionModels({"judge": str(tmp_path / "no-such-model")}, device="cpu")
    _, rows = _run(nothing, samples[:1], ("judge-prompt",))
    assert rows["judge-prompt"][0].status == "model_missing" and "--judge-model" in rows["judge-prompt"][0].detail["problem"]


def test_image_hash_is_content_and_judge_not_a_default_metric(judge_folder, case, tmp_path):
    from likeness.cli.bench import default_metrics

    root, samples = case
    image = Image.open(samples[0].image).convert("RGB")
    image.save(tmp_path / "same.bmp")
    assert image_hash(image) == image_hash(Image.open(tmp_path / "same.bmp").convert("RGB"))
    chosen, _ = default_metrics(VisionModels({"judge": str(judge_folder)}))
    assert not set(NAMES) & set(chosen)
    assert judge_answer("identity") in METRICS.get("judge-overall").features
    assert isinstance(JudgeFeature("prompt", RUBRIC_VERSION, "x", False).answer, str)


def test_chat_template_beside_the_processor_only(judge_folder, tmp_path):
    """Some Qwen-VL repos keep the chat template in the processor's chat_template.json only."""
    import json
    import shutil

    from likeness.models.judge import load_judge

    folder = tmp_path / "model"
    shutil.copytree(judge_folder, folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    judge = load_judge("judge", str(folder), device="cpu", cache_path=tmp_path / "c.sqlite")
    assert judge.tokenizer.chat_template == template
    (folder / "chat_template.json").unlink()
    with pytest.raises(Exception, match="no chat template"):
        load_judge("judge", str(folder), device="cpu", cache_path=tmp_path / "c.sqlite")


def test_evaluator_with_the_tiny_id_stores_rows_and_protocol(case, tmp_path, monkeypatch):
    """`likeness evaluate --metrics judge-prompt,judge-overall --judge-model likeness/tiny-qwen-vl` in code."""
    from likeness.bench.evaluate import format_summary, score_items
    from likeness.bench.store import ResultsStore
    from likeness.data.layout import GeneratedItem

    monkeypatch.setenv("LIKENESS_CACHE", str(tmp_path / "cache"))  # the tiny id is built here
    monkeypatch.setenv("LIKENESS_JUDGE_CACHE", str(tmp_path / "answers.sqlite"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, samples = case
    items = [GeneratedItem(s.item_id, s.image, "ann", s.reference, s.meta) for s in samples]
    models = VisionModels({"judge": "likeness/tiny-qwen-vl"}, device="cpu", batch_size=2)
    report = score_items(items, [samples[0].identity], tmp_path / "r.sqlite", ["judge-prompt", "judge-overall"],
                         progress=False, models=models)
    summary = {s["metric"]: s for s in report.summaries}
    assert summary["judge-prompt"]["statuses"] == {"parse_failed": 2} and summary["judge-prompt"]["count"] == 0
    assert "judge-prompt/rubric-v1+likeness/tiny-qwen-vl" in format_summary(report)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        row = store.scores("judge-overall")[0]
    assert row.protocol["judge"]["revision"] == "tiny-v1" and row.detail["prompt"]["reason"] == ""
    assert models.get("judge").generated == 4  # 2 images x (prompt, identity): the prompt answer asked once for both metrics
