"""``likeness compose run | review | reject | train`` end to end on tiny inputs."""

from __future__ import annotations

import json

import pytest

from likeness.cli import main
from test_compose_pipeline import make_concepts

pytestmark = pytest.mark.usefixtures("one_thread")


def test_compose_cli_end_to_end(tmp_path, tiny_models, capsys):
    make_concepts(tmp_path / "c", {"mochi": ("dog", (40, 30)), "kettle": ("teapot", (30, 40))})
    ds = tmp_path / "ds"
    args = ["compose", "run", "--concept", f"mochi={tmp_path / 'c' / 'mochi'}:dog", "--concept",
            f"{tmp_path / 'c' / 'kettle'}", "--out", str(ds), "--count", "3", "--canvas", "64",
            "--repaint-model", "likeness/tiny-sd-inpaint", "--steps", "2", "--background", "a snowy park"]
    assert main(args) == 0
    assert "3 new, 0 already there, 0 skipped" in capsys.readouterr().out
    assert main(args) == 0 and "0 new, 3 already there" in capsys.readouterr().out
    records = [json.loads(line) for line in (ds / "compositions.jsonl").read_text().splitlines()]
    assert all(r["background"] == "a snowy park" and r["class_nouns"]["kettle"] == "teapot" for r in records)
    assert main(["compose", "review", str(ds)]) == 0 and (ds / "review.html").is_file()
    assert main(["compose", "reject", str(ds), "--id", "c000002"]) == 0
    assert main(["compose", "reject", str(ds), "--id", "nope"]) == 2
    assert "no composition(s) nope" in capsys.readouterr().err
    assert main(["compose", "train", str(ds), "--out", str(tmp_path / "art"), "--steps", "2", "--batch-size", "1"]) == 0
    manifest = json.loads((tmp_path / "art" / "likeness.json").read_text())
    assert manifest["method"] == "custom-diffusion" and manifest["config"]["examples"] == 2
    assert main(["compose", "train", str(ds), "--out", str(tmp_path / "prior"), "--steps", "1", "--batch-size", "1",
                 "--prior", "--class-images", "1", "--class-dir", f"dog={tmp_path / 'c' / 'mochi'}", "--prior-weight", "0.5"]) == 0
    options = json.loads((tmp_path / "prior" / "likeness.json").read_text())["config"]["options"]
    assert options["with_prior_preservation"] is True and options["prior_loss_weight"] == 0.5
    assert options["class_data_dir"] == {"dog": str(tmp_path / "c" / "mochi")}
    assert sorted(q.name for q in (tmp_path / "prior" / "class_images").iterdir()) == ["teapot"]  # dog: the real ones
    assert main(["compose", "train", str(tmp_path / "missing"), "--out", str(tmp_path / "a2")]) == 2
    assert "not a composed dataset" in capsys.readouterr().err


def test_compose_run_reports_bad_concepts(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compose", "run", "--concept", str(tmp_path / "empty"), "--out", str(tmp_path / "ds")]) == 2
    assert "no image files" in capsys.readouterr().err
