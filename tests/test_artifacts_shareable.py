"""Artifacts can be shared: no local paths inside, a model card beside the weights, and a copy
moved to another folder (another machine's path) loads and makes the same pixels."""

from __future__ import annotations

import json
import shutil

import numpy as np
import yaml

from likeness.methods import load_artifact


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_has_front_matter_and_plain_diffusers_usage(ti_artifact, lora_artifact):
    for artifact, method in ((ti_artifact, "textual-inversion"), (lora_artifact, "dreambooth-lora")):
        text = (artifact / "README.md").read_text(encoding="utf-8")
        meta = _front_matter(text)
        assert meta["base_model"] == "likeness/tiny-sd" and meta["library_name"] == "diffusers"
        assert method in meta["tags"] and "text-to-image" in meta["tags"] and meta["license"]
        assert meta["likeness"]["method"] == method and meta["likeness"]["hyperparameters"]["max_steps"] == 4
        assert meta["instance_prompt"] == json.loads((artifact / "likeness.json").read_text())["identities"]["astro"]["subject"]
        assert "DiffusionPipeline.from_pretrained" in text and "astronaut.jpg" in text
    assert 'load_textual_inversion(f"{ARTIFACT}/astro.safetensors", token="<astro>")' in (ti_artifact / "README.md").read_text()
    assert "load_lora_weights(ARTIFACT" in (lora_artifact / "README.md").read_text()


def test_moved_artifact_loads_and_makes_the_same_pixels(ti_artifact, lora_artifact, tmp_path, astronaut_path, one_thread):
    for artifact in (ti_artifact, lora_artifact):
        for name in ("likeness.json", "README.md"):
            text = (artifact / name).read_text(encoding="utf-8")
            assert str(artifact.parent) not in text and str(astronaut_path.parent) not in text, name
        moved = tmp_path / "elsewhere" / "deeper" / artifact.parent.name
        shutil.copytree(artifact, moved)
        args = dict(num_inference_steps=2, height=32, width=32)
        here = load_artifact(artifact).generate(["{} at the beach"], [7], **args)[0]
        there = load_artifact(moved).generate(["{} at the beach"], [7], **args)[0]
        assert np.array_equal(np.asarray(here), np.asarray(there))
