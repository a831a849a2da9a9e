"""A composed dataset benchmarked end to end: compose -> `likeness bench --compose-dataset` (trains
custom-diffusion on it) -> the report's CP-CLIP and TI-CLIP equal the metrics computed directly on the
same images, from the dataset's own concepts and the prompts' backgrounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from likeness.cli import main
from likeness.compose import ComposedDataset, compose_dataset
from likeness.compose.bench import BACKGROUNDS, bench_inputs
from test_compose_pipeline import make_concepts

pytestmark = pytest.mark.usefixtures("one_thread")
MODELS = ["--gen4gen-clip-model", "likeness/tiny-clip", "--gen4gen-owlvit-model", "likeness/tiny-owlvit"]


@pytest.fixture
def dataset(tmp_path, tiny_models):
    concepts = make_concepts(tmp_path / "concepts", {"mochi": ("dog", (50, 36)), "kettle": ("teapot", (30, 40))})
    compose_dataset(concepts, tmp_path / "trio", 3, canvas=(64, 64), seed=3, progress=False)
    return ComposedDataset(tmp_path / "trio")


def test_bench_inputs_from_a_composed_dataset(dataset, tmp_path):
    dataset.reject(["c000001"])
    inputs = bench_inputs(dataset, tmp_path / "in")
    assert inputs.name == "trio"
    assert sorted(p.name for p in (inputs.identities / "trio").iterdir()) == ["kettle-0.png", "kettle-1.png",
                                                                               "mochi-0.png", "mochi-1.png"]
    captioned = inputs.options["captioned"]
    assert [e[1] for e in captioned["examples"]] == [e.caption for e in dataset.entries()]  # the rejection honoured
    assert len(captioned["examples"]) == 2 and captioned["global_token"] == "<gen4gen>"
    entries = json.loads(inputs.prompts.read_text())["prompts"]
    assert len(entries) == len(BACKGROUNDS)
    first = entries[0]
    assert first["prompts"] == f"<gen4gen> a photo of {{}}, with {{}}, in the background {BACKGROUNDS[0]}"
    assert first["background"] == BACKGROUNDS[0] and first["detectables"] == ["dog", "teapot"]
    assert [(c["name"], c["label"], len(c["images"])) for c in first["concepts"]] == [("mochi", "dog", 2), ("kettle", "teapot", 2)]
    before = inputs.prompts.read_bytes()
    assert bench_inputs(dataset, tmp_path / "in").prompts.read_bytes() == before  # same bytes: same run digest


def test_compose_bench_reports_cp_clip_and_ti_clip(dataset, tmp_path, capsys):
    from likeness.bench.report import read_results
    from likeness.metrics import METRICS, Sample
    from likeness.models.vision_language import VisionModels

    run = tmp_path / "run"
    args = ["bench", "--method", "custom-diffusion", "--compose-dataset", str(dataset.root), "--out", str(run),
            "--limit", "2", "--train-steps", "2", "--method-option", "batch_size=1", "--quiet", *MODELS]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "2/2 items done, 0 failed" in out
    manifest = json.loads(next((run / "artifacts").glob("*/likeness.json")).read_text())
    assert manifest["identities"]["trio"]["subject"] == "<mochi> dog and <kettle> teapot"
    assert manifest["config"]["examples"] == 3
    assert manifest["identities"]["mochi"]["photos"] == ["0.png", "1.png"]  # names only, never local paths
    assert len(manifest["identities"]["mochi"]["photo_sha256"]) == 2

    results = read_results(run)
    images = sorted((run / "images" / "trio").glob("*.png"))
    assert len(images) == 2
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in images]
    assert [m["prompt"] for m in metas] == [
        f"<gen4gen> a photo of <mochi> dog and <kettle> teapot, with <mochi> dog and <kettle> teapot, in the background {b}"
        for b in BACKGROUNDS[:2]]

    # TI-CLIP by hand: CLIP image embedding . CLIP text embedding of the background alone.
    models = VisionModels({"gen4gen-clip": "likeness/tiny-clip", "gen4gen-owlvit": "likeness/tiny-owlvit"})
    clip = models.get("gen4gen-clip")
    img = clip.encode_images([Image.open(p).convert("RGB") for p in images])
    txt, _ = clip.encode_texts(list(BACKGROUNDS[:2]))
    ti = [float(np.dot(a, b)) for a, b in zip(img, txt)]
    assert results.totals["TI-CLIP"] == pytest.approx(np.mean(ti), abs=1e-5)

    # CP-CLIP directly with the metric, on samples whose concepts are the dataset's own photos.
    photos = {n: [p["path"] for p in c["photos"]] for n, c in dataset.concepts.items()}
    samples = [Sample(f"i{k}", p, None, None, {"concepts": [{"name": "mochi", "label": "dog", "images": photos["mochi"]},
                                                            {"name": "kettle", "label": "teapot", "images": photos["kettle"]}]})
               for k, p in enumerate(images)]
    direct = METRICS.get("cp-clip")(models=models).update(samples)
    assert all(s.status == "ok" for s in direct)
    assert results.totals["CP-CLIP"] == pytest.approx(np.mean([s.value for s in direct]), abs=1e-5)
    report = (run / "report" / "index.html").read_text()
    assert "CP-CLIP" in report and "TI-CLIP" in report
    assert f"{results.totals['CP-CLIP']:.3f}" in out and f"{results.totals['TI-CLIP']:.3f}" in out

    # The same command again: nothing to do, same digest (the inputs were rewritten byte for byte).
    assert main(args) == 0 and "2/2 items done" in capsys.readouterr().out


def test_compose_bench_with_several_methods_fills_the_leaderboard_columns(dataset, tmp_path, capsys):
    """custom-diffusion trains on the compositions; a photo method in the same list personalizes from the
    group's reference photo like any identity (a teapot has no face: its items fail with the reason)."""
    from likeness.bench.report import read_results

    run = tmp_path / "run"
    assert main(["bench", "--method", "custom-diffusion,textual-inversion", "--compose-dataset", str(dataset.root),
                 "--out", str(run), "--limit", "1", "--train-steps", "1", "--quiet", *MODELS]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("method "))
    # the metrics asked for (compose's default: cp-clip, ti-clip), not Stellar's five as columns of dashes
    assert header.split() == ["method", "CP-CLIP", "TI-CLIP", "images", "failed"]
    totals = read_results(run / "custom-diffusion").totals
    row = next(line for line in lines if line.startswith("custom-diffusion ")).split()
    assert row[1:] == [f"{totals['CP-CLIP']:.3f}", f"{totals['TI-CLIP']:.3f}", "1", "0"]
    ti = next(line for line in lines if line.startswith("textual-inversion ")).split()
    assert ti[1:] == ["—", "—", "0", "1"] and "NoFaceError" in "\n".join(lines)
    assert "<th>CP-CLIP</th><th>TI-CLIP</th>" in (run / "leaderboard.html").read_text()


def test_compose_bench_refuses_other_methods(dataset, tmp_path, capsys):
    assert main(["bench", "--method", "textual-inversion", "--compose-dataset", str(dataset.root),
                 "--out", str(tmp_path / "r")]) == 2
    assert "trains custom-diffusion" in capsys.readouterr().err
    assert main(["bench", "--method", "custom-diffusion", "--compose-dataset", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r")]) == 2
    assert "not a composed dataset" in capsys.readouterr().err
    dataset.reject([e.id for e in dataset.entries()])
    assert main(["bench", "--method", "custom-diffusion", "--compose-dataset", str(dataset.root),
                 "--out", str(tmp_path / "r")]) == 2
    assert "no kept composition" in capsys.readouterr().err


def test_open_prompts_carry_their_scene_for_ti_clip(tmp_path, astronaut_path):
    from likeness.data.prompts import PromptError, load_prompts, open_prompts
    from likeness.metrics import METRICS, Sample
    from likeness.models.vision_language import VisionModels

    by_id = {p.prompt_id: p for p in open_prompts()}
    assert by_id["t0000"].background == "a castle" and by_id["t0002"].background == "the moon"
    assert by_id["t0007"].background == ""  # "feeding an orange to a turtle": no place, no TI-CLIP
    models = VisionModels({"gen4gen-clip": "likeness/tiny-clip"})
    samples = [Sample(i, astronaut_path, None, None, by_id[i].sidecar_fields()) for i in ("t0000", "t0007")]
    ti, none = METRICS.get("ti-clip")(models=models).update(samples)
    clip = models.get("gen4gen-clip")
    img = clip.encode_images([Image.open(astronaut_path).convert("RGB")])[0]
    assert ti.status == "ok" and ti.value == pytest.approx(float(img @ clip.encode_texts(["a castle"])[0][0]), abs=1e-5)
    assert none.status == "no_background" and none.value is None

    bad = tmp_path / "bad.json"
    for entry, problem in [({"prompts": "{} x", "background": 3}, "'background' must be a string"),
                           ({"prompts": "{} x", "concepts": [{"label": "dog"}]}, "needs a 'name'"),
                           ({"prompts": "{} x", "concepts": {"name": "a"}}, "'concepts' must be a list")]:
        bad.write_text(json.dumps([entry]))
        with pytest.raises(PromptError, match=f"bad.json: entry 0: .*{problem}"):
            load_prompts(bad)
