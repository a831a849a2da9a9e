"""The personalize / generate commands: canonical layout, resumable generation, clear errors."""

from __future__ import annotations

import pytest

import json

from likeness.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_personalize_then_generate_writes_canonical_layout(tiny_models, astronaut_path, tmp_path, capsys):
    artifact = tmp_path / "art"
    assert main(["personalize", "--method", "textual-inversion", "--identity", str(astronaut_path), "--name", "astro",
                 "--out", str(artifact), "--steps", "2", "--grad-accum", "1"]) == 0
    assert (artifact / "likeness.json").exists() and (artifact / "astro.safetensors").exists()
    out = tmp_path / "images"
    args = ["generate", "--artifact", str(artifact), "--prompt", "{} reading a book", "-n", "2", "--seed", "10",
            "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    images = sorted(p.name for p in (out / "astro").glob("*.png"))
    assert images == ["astro-astronaut-u0000-s10.png", "astro-astronaut-u0000-s11.png"]
    meta = json.loads((out / "astro" / "astro-astronaut-u0000-s10.json").read_text())
    assert meta["prompt"] == "<astro> reading a book" and meta["prompt_template"] == "{} reading a book"
    assert meta["seed"] == 10 and meta["method"] == "textual-inversion" and meta["base_model"] == "likeness/tiny-sd"
    assert meta["reference"].endswith("astronaut.jpg") and meta["item_id"] == "astro-astronaut-u0000-s10"
    first = (out / "astro" / images[0]).stat().st_mtime_ns
    assert main(args) == 0  # rerun: existing images are kept, not regenerated
    assert (out / "astro" / images[0]).stat().st_mtime_ns == first


def test_generate_errors_are_clear(ti_artifact, tmp_path, capsys):
    assert main(["generate", "--artifact", str(ti_artifact), "--prompt", "a person", "--out", str(tmp_path)]) == 2
    assert "has no '{}' placeholder" in capsys.readouterr().err
    assert main(["generate", "--artifact", str(tmp_path / "none"), "--prompt", "{}", "--out", str(tmp_path)]) == 2
    assert "artifact folder does not exist" in capsys.readouterr().err


def test_personalize_errors_are_clear(tiny_models, astronaut_path, tmp_path, capsys):
    assert main(["personalize", "--method", "nope", "--identity", str(astronaut_path), "--out", str(tmp_path / "a")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["personalize", "--method", "textual-inversion", "--identity", str(tmp_path / "missing.jpg"),
                 "--out", str(tmp_path / "a")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert main(["personalize", "--method", "textual-inversion", "--base-model", "someone/absent", "--identity",
                 str(astronaut_path), "--out", str(tmp_path / "b")]) == 2
    assert "someone/absent" in capsys.readouterr().err
