"""Every input of an evaluation is accounted for: each file yields a row (a score or a named status),
ids come from file names, common formats decode, and the summary counts statuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from likeness.bench.evaluate import evaluate, format_summary
from likeness.data.identities import load_identities
from likeness.data.images import load_image
from likeness.data.layout import read_generated


def _meta(identity, item_id, reference="0.jpg"):
    return {"item_id": item_id, "identity": identity, "reference": reference, "prompt": "a person", "seed": 1}


@pytest.fixture(scope="module")
def case(tmp_path_factory, astronaut_path):
    root = tmp_path_factory.mktemp("inputs")
    photo = Image.open(astronaut_path).convert("RGB")
    (root / "people" / "alice").mkdir(parents=True)
    photo.save(root / "people" / "alice" / "0.jpg")
    gen = root / "gen" / "alice"
    gen.mkdir(parents=True)
    face = photo.resize((256, 256))

    def put(stem, suffix, image=None, meta=True, **save):
        if image is not None:
            image.save(gen / f"{stem}{suffix}", **save)
        if meta:
            (gen / f"{stem}.json").write_text(json.dumps(_meta("alice", stem) if meta is True else meta))

    put("a-png", ".png", face)
    put("b-jpeg", ".jpg", face, quality=90)
    put("c-webp", ".webp", face, quality=90)
    frames = [face, Image.new("RGB", face.size, (0, 0, 0))]
    frames[0].save(gen / "d-gif.gif", save_all=True, append_images=frames[1:], duration=100)
    put("d-gif", "", None)
    deep = (np.asarray(face.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(deep).save(gen / "e-16bit.png")
    put("e-16bit", "", None)
    put("f-cmyk", ".jpg", face.convert("CMYK"), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    face.rotate(90, expand=True).crop((0, 0, 256, 200)).save(gen / "g-exif.jpg", exif=exif)
    put("g-exif", "", None)
    put("h-nosidecar", ".png", face, meta=False)
    put("i-noimage", "", None)  # a sidecar alone
    put("a-png", ".jpg", face)  # same stem as a-png.png: a duplicate id
    (gen / "notes.txt").write_text("not an image")
    put("j-renamed", ".png", face, meta=_meta("alice", "something-else"))
    (gen / "k-partial.png.tmp").write_bytes(b"half")  # a killed writer's temp file: not an input
    return root


def test_every_file_yields_one_row_with_a_status(case):
    people = load_identities(case / "people")
    items = {i.item_id: i for i in read_generated(case / "gen", people)}
    expected = {
        "a-png": "ok", "b-jpeg": "ok", "c-webp": "ok", "d-gif": "ok", "e-16bit": "ok", "f-cmyk": "ok", "g-exif": "ok",
        "j-renamed": "ok", "h-nosidecar": "sidecar_missing", "i-noimage": "image_missing",
        "alice/a-png.jpg": "duplicate_id", "alice/notes.txt": "unsupported_format",
    }
    assert {k: v.status for k, v in items.items()} == expected
    assert "a-png.png" in items["alice/a-png.jpg"].problem
    assert "i-noimage.png: generated image missing" in items["i-noimage"].problem
    assert items["j-renamed"].warnings and "'something-else'" in items["j-renamed"].warnings[0]
    assert items["d-gif"].image.suffix == ".gif" and items["b-jpeg"].reference == case / "people" / "alice" / "0.jpg"


def test_formats_decode_to_upright_rgb(case):
    gen = case / "gen" / "alice"
    for name in ("a-png.png", "b-jpeg.jpg", "c-webp.webp", "d-gif.gif", "e-16bit.png", "f-cmyk.jpg"):
        image = load_image(gen / name)
        assert image.mode == "RGB" and image.size == (256, 256), name
    gif = np.asarray(load_image(gen / "d-gif.gif"), dtype=np.float64)
    assert gif.mean() > 40  # the first frame (the face), not the black second one
    deep = np.asarray(load_image(gen / "e-16bit.png"), dtype=np.float64)
    assert 40 < deep.mean() < 220  # rescaled from 16 bits, not clipped to white
    cmyk = np.asarray(load_image(gen / "f-cmyk.jpg"), dtype=np.float64)
    assert np.abs(cmyk - np.asarray(Image.open(gen / "a-png.png"), dtype=np.float64)).mean() < 12
    assert load_image(gen / "g-exif.jpg").size == (200, 256)  # EXIF orientation applied


def test_evaluate_scores_what_it_can_and_counts_the_rest(case, tmp_path):
    hog = {"detector": "hog"}  # about input accounting, not detectors: the faster one (MTCNN: test_identity_rows)
    report = evaluate(case / "people", case / "gen", tmp_path / "r.sqlite", metrics=["ips"], progress=False,
                      backend_options=hog)
    assert report.n_items == 12 and sum(report.status_counts.values()) == 12
    assert report.status_counts["sidecar_missing"] == 1 and report.status_counts["duplicate_id"] == 1
    assert report.status_counts["unsupported_format"] == 1 and report.status_counts["image_missing"] == 1
    assert report.status_counts.get("ok", 0) + report.status_counts.get("no_face", 0) == 8
    text = format_summary(report)
    assert "inputs by status: ok" in text and "duplicate_id 1" in text and "unsupported_format 1" in text
    assert "warnings (1):" in text and "something-else" in text
    # A second run reports the same statuses from the store.
    again = evaluate(case / "people", case / "gen", tmp_path / "r.sqlite", metrics=["ips"], progress=False,
                     backend_options=hog)
    assert again.n_skipped == 12 and again.status_counts == report.status_counts


def test_flat_sidecars_sharing_a_save_name_stay_two_rows(tmp_path, astronaut_path):
    root = tmp_path / "data" / "STELLAR" / "000"
    root.mkdir(parents=True)
    Image.open(astronaut_path).save(root / "0.jpg")
    (root / "0_attributes.json").write_text(json.dumps({"attributes": {}}))  # a file with no labels
    flat = tmp_path / "flat"
    flat.mkdir()
    for stem in ("000-0-00", "000-0-01"):
        Image.open(astronaut_path).resize((200, 200)).save(flat / f"{stem}.png")
        (flat / f"{stem}.json").write_text(json.dumps({"prompt": "x", "image_path": "000/0.jpg", "save_name": "000-0-00"}))
    items = read_generated(flat, load_identities(tmp_path / "data"))
    assert [i.item_id for i in items] == ["000-0-00", "000-0-01"] and [i.status for i in items] == ["ok", "ok"]
    assert not items[0].warnings and "save_name '000-0-00'" in items[1].warnings[0]
    report = evaluate(tmp_path / "data", flat, tmp_path / "r.sqlite", metrics=["aps"], progress=False,
                      backend_options={"detector": "hog"})
    assert report.summaries[0]["protocol"].startswith("aps/agegender")  # label-free fallback, not no_labels
    assert report.summaries[0]["count"] == 2
    text = format_summary(report)
    assert text.count("falls back to the label-free protocol aps/agegender") == 1
