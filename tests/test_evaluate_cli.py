"""``likeness evaluate`` end to end on a small Stellar-layout folder built here from the astronaut photo."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from likeness.bench.store import ResultsStore
from likeness.cli import main
from likeness.data.stellar import CELEBA_ATTRIBUTES


def _labels(**overrides):
    labels = {name: -1 for name in CELEBA_ATTRIBUTES}
    labels.update(overrides)
    return labels


@pytest.fixture(scope="module")
def stellar_case(tmp_path_factory, astronaut_path):
    root = tmp_path_factory.mktemp("case")
    photo = Image.open(astronaut_path)
    people = root / "data" / "STELLAR"
    a, b, val = people / "000", people / "001", people / "201"
    for folder in (a, b, val):
        folder.mkdir(parents=True)
    photo.save(a / "0.jpg")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(a / "1.jpg")
    Image.new("P", (64, 64)).save(a / "0_bg.png")  # a parsing mask: must not count as a photo
    (a / "0_attributes.json").write_text(json.dumps({"attributes": _labels(Young=1, Big_Lips=1)}))
    # the other official spelling: a 40-long list in CelebA order
    (a / "1_attributes.json").write_text(json.dumps({"attributes": list(_labels(Young=1, Big_Lips=1).values())}))
    (a / "prompts_t.json").write_text(json.dumps([{"prompts": "{} on a couch", "detectables": ["couch"], "categories": []}]))
    photo.crop((100, 0, 400, 300)).resize((512, 512)).save(b / "0.jpg")
    (b / "0_attributes.json").write_text(json.dumps({"attributes": _labels(Male=1, Big_Nose=1)}))
    (b / "1_attributes.json").write_text("{not json")  # and 1.jpg is missing
    photo.save(val / "0.jpg")
    (val / "0_attributes.json").write_text(json.dumps({"attributes": _labels()}))

    out = root / "generated"
    out.mkdir()

    def put(name, image=None, meta=None, raw=None):
        if image is not None:
            image.save(out / f"{name}.png")
        if raw is not None:
            (out / f"{name}.json").write_text(raw)
        elif meta is not None:
            (out / f"{name}.json").write_text(json.dumps({"prompt": "x", "detectables": [], "save_name": name, **meta}))

    small = photo.resize((400, 400))
    put("000-0-00", small, {"image_path": "000/0.jpg"})
    put("000-1-01", Image.new("RGB", (256, 256), (200, 180, 160)), {"image_path": "000/1.jpg"})
    (out / "001-0-00.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    put("001-0-00", meta={"image_path": "001/0.jpg"})
    put("001-1-00", small, {"image_path": "001/1.jpg"})
    put("000-0-02", small, raw='{"prompt": "x", ')
    put("000-0-03", small)
    put("000-0-04", small.convert("L"), {"image_path": "000/0.jpg"})
    put("000-0-06", Image.new("RGB", (10, 10)), {"image_path": "000/0.jpg"})
    rgba = small.convert("RGBA")
    rgba.putalpha(200)
    put("000-1-05", rgba, {"image_path": "000/1.jpg"})
    return root


EXPECTED = {
    "000-0-00": "ok", "000-1-01": "no_face", "001-0-00": "unreadable", "001-1-00": "ref_missing",
    "000-0-02": "bad_sidecar", "000-0-03": "sidecar_missing", "000-0-04": "ok", "000-1-05": "ok", "000-0-06": "too_small",
}


def test_help_explains_inputs_and_outputs(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    for words in ("DATASET", "GENERATED", "SQLite", "no_face", "Stellar", "--store", "--csv", "copy-gap", "multi-id"):
        assert words in text
    assert "{mtcnn,hog,cnn}" in text and "(default: mtcnn)" in " ".join(text.split())


def test_evaluate_end_to_end_then_resume(stellar_case, capsys):
    store_path, csv_path = stellar_case / "results.sqlite", stellar_case / "rows.csv"
    args = ["evaluate", str(stellar_case / "data"), str(stellar_case / "generated"), "--store", str(store_path),
            "--csv", str(csv_path), "--split", "test", "--quiet", "--detector", "hog"]  # MTCNN (the default): test_identity_rows
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ips/v1+dlib-hog-r128-cal/v1" in out and "aps/probe-v2+dlib-hog-r128-cal/v1" in out
    assert "face protocol dlib-hog-r128-cal/v1" in out and "9 images: 9 scored now" in out
    assert "dataset problems (1):" in out and "001/1.jpg: photo missing (1_attributes.json is there)" in out

    with ResultsStore(store_path) as store:
        rows = store.scores()
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(rows) == 9 * 4  # ips, sis, aps, copy-gap
    # copy-gap: 000-1-05 (made from 1.jpg) is a resized copy of 0.jpg, the identity's only other photo.
    copies = {("copy-gap", "000-1-05"): "copy_of_other_photo"}
    for row in rows:
        assert row.status == copies.get((row.metric, row.item_id), EXPECTED[row.item_id]) or (
            row.metric == "sis" and row.status == "ref_partial"), row
        assert row.protocol["face"]["name"] == "dlib-hog-r128-cal/v1"
    by_key = {(r.item_id, r.metric): r for r in rows}
    assert by_key["000-0-00", "ips"].value > 0.9 and by_key["000-0-00", "ips"].n_faces >= 1
    assert by_key["000-1-01", "ips"].value == 0.0 and by_key["000-1-01", "aps"].value == 0.0
    assert by_key["001-1-00", "ips"].value is None and "001/1.jpg" in by_key["001-1-00", "ips"].detail["problem"]
    assert "malformed JSON" in by_key["000-0-02", "ips"].detail["problem"]
    assert "001-0-00.png" in by_key["001-0-00", "sis"].detail["problem"]
    with open(csv_path, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 36

    assert main(args) == 0  # a second run finds everything done
    assert "0 scored now, 9 already" in capsys.readouterr().out
    with ResultsStore(store_path) as store:
        assert len(store.scores()) == 36


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), str(tmp_path), "--store", str(tmp_path / "r.sqlite"), "--quiet"]) == 2
    assert "nope: dataset folder does not exist" in capsys.readouterr().err
