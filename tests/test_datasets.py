"""Datasets and generated-image layouts: auto-detection, Stellar labels and splits, sidecars, conversion."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from likeness.data.identities import DatasetError, load_identities
from likeness.data.layout import canonical_item_id, read_generated, to_stellar_flat, write_sidecar
from likeness.data.stellar import CELEBA_ATTRIBUTES, parse_attributes


def _photo(path, colour=(128, 100, 90)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return path


def test_plain_folders_skip_underscore_folders_and_sort_naturally(tmp_path):
    for name in ("2.jpg", "10.jpg", "1.png"):
        _photo(tmp_path / "ann" / name)
    _photo(tmp_path / "_edge" / "x.jpg")
    (tmp_path / "ann" / "notes.txt").write_text("not a photo")
    (ann,) = load_identities(tmp_path)
    assert ann.layout == "folders" and [p.name for p in ann.photos] == ["1.png", "2.jpg", "10.jpg"]
    assert ann.attributes is None and ann.labels(ann.photos[0]) is None


def test_empty_or_missing_dataset_names_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="no identity folders"):
        load_identities(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_identities(tmp_path / "absent")


def test_stellar_layout_labels_splits_and_problems(tmp_path):
    root = tmp_path / "STELLAR"
    for ident in ("000", "001", "250"):
        _photo(root / ident / "0.jpg")
        _photo(root / ident / "1.jpg")
        (root / ident / "0_attributes.json").write_text(json.dumps({"attributes": {"Male": 1, "Young": -1}}))
    _photo(root / "000" / "0_bg.png")
    (root / "001" / "1_attributes.json").write_text('{"attributes": {"Male": 7}}')  # a bad value
    (root / "000" / "prompts_t.json").write_text("[]")
    people = load_identities(tmp_path, split="test")
    assert [p.name for p in people] == ["000", "001"]
    first, second = people
    assert first.layout == "stellar" and [p.name for p in first.photos] == ["0.jpg", "1.jpg"]
    assert first.labels(first.photos[0]) == {"Male": 1, "Young": -1} and first.labels(first.photos[1]) is None
    assert "prompts_t.json" in str(first.prompt_files["t"])
    assert any("1_attributes.json" in p and "Male" in p for p in second.problems)
    assert [p.name for p in load_identities(tmp_path, split="val")] == ["250"]


def test_attribute_file_forms_and_errors(tmp_path):
    as_list = tmp_path / "a.json"
    as_list.write_text(json.dumps({"attributes": [1 if n == "Male" else -1 for n in CELEBA_ATTRIBUTES]}))
    parsed = parse_attributes(as_list)
    assert parsed["Male"] == 1 and parsed["Young"] == -1 and len(parsed) == 40
    bad = tmp_path / "b.json"
    bad.write_text("{oops")
    with pytest.raises(DatasetError, match=r"b\.json: malformed JSON"):
        parse_attributes(bad)


def _meta(identity, reference, prompt_id="t0007", seed=1234):
    return {"item_id": canonical_item_id(identity, reference, prompt_id, seed), "identity": identity,
            "reference": str(reference), "prompt": "a person on a couch", "prompt_template": "{} on a couch",
            "prompt_id": prompt_id, "detectables": ["couch"], "categories": ["objects"], "relations": [],
            "seed": seed, "method": "test", "base_model": "tiny"}


def test_canonical_round_trip_and_conversion_to_stellar_flat(tmp_path):
    photo = _photo(tmp_path / "people" / "obama" / "0.jpg")
    people = load_identities(tmp_path / "people")
    meta = _meta("obama", photo)
    assert meta["item_id"] == "obama-0-t0007-s1234"
    image = _photo(tmp_path / "gen" / "obama" / f"{meta['item_id']}.png")
    write_sidecar(image, meta)
    with pytest.raises(ValueError, match="lacks keys: seed"):
        write_sidecar(image, {k: v for k, v in meta.items() if k != "seed"})
    (item,) = read_generated(tmp_path / "gen", people)
    assert item.status == "ok" and item.reference == photo and item.meta["likeness_version"]
    # a second seed of the same prompt must not overwrite the first in the flat layout
    second = _photo(tmp_path / "gen" / "obama" / "obama-0-t0007-s99.png")
    write_sidecar(second, _meta("obama", photo, seed=99))
    written = to_stellar_flat(tmp_path / "gen", tmp_path / "flat", people)
    assert sorted(p.name for p in written) == ["obama-0-07-s99.png", "obama-0-07.png"]
    record = json.loads((tmp_path / "flat" / "obama-0-07.json").read_text())
    assert record["image_path"] == "obama/0.jpg" and record["detectables"] == ["couch"]
    flat = {i.item_id: i for i in read_generated(tmp_path / "flat", people)}
    assert flat["obama-0-07"].status == "ok" and flat["obama-0-07"].reference == photo


def test_generated_items_with_bad_metadata_get_a_status(tmp_path):
    photo = _photo(tmp_path / "people" / "ann" / "0.jpg")
    people = load_identities(tmp_path / "people")
    gen = tmp_path / "gen" / "ann"
    _photo(gen / "nosidecar.png")
    _photo(gen / "broken.png")
    (gen / "broken.json").write_text("[1, 2")
    _photo(gen / "stranger.png")
    write_sidecar(gen / "stranger.png", {**_meta("bob", photo), "item_id": "stranger"})
    statuses = {i.item_id: (i.status, i.problem) for i in read_generated(tmp_path / "gen", people)}
    assert statuses["nosidecar"][0] == "sidecar_missing" and "nosidecar.json" in statuses["nosidecar"][1]
    assert statuses["broken"][0] == "bad_sidecar" and "broken.json: malformed JSON" in statuses["broken"][1]
    assert statuses["stranger"][0] == "unknown_identity" and "'bob'" in statuses["stranger"][1]
