"""The batched identity engine gives the dlib backend's numbers: same faces, same rows, same protocol name."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from likeness.faces import get_backend


@pytest.fixture(scope="module")
def engine():
    backend = get_backend("dlib-torch", workers=2, batch_size=4, device="cpu")
    yield backend
    backend.close()


def _generated(faces_dir, tmp_path):
    """A small generated folder in the canonical layout: face crops of real photos, and one image without a face."""
    from likeness.data.identities import load_identities
    from likeness.data.layout import canonical_item_id, read_generated, write_sidecar

    for person in ("obama", "biden", "alex_lacamoire"):  # the reference photos at most 700 px: quicker HOG passes
        for photo in sorted((faces_dir / person).glob("*.jpg"))[:2]:
            image = Image.open(photo).convert("RGB")
            image.thumbnail((700, 700))
            (tmp_path / "people" / person).mkdir(parents=True, exist_ok=True)
            image.save(tmp_path / "people" / person / photo.name, quality=95)
    identities = load_identities(tmp_path / "people")
    by_name = {i.name: i for i in identities}
    jobs = [("obama", 0, (170, 30, 440, 300)), ("biden", 1, (200, 110, 590, 500)), ("alex_lacamoire", 0, (100, 60, 400, 360)),
            ("obama", 1, None)]
    for k, (name, photo_index, box) in enumerate(jobs):
        photo = by_name[name].photos[photo_index]
        image = Image.open(photo).convert("RGB")
        image = image.crop(box).resize((320, 320)) if box else Image.new("RGB", (256, 256), (90, 120, 150))
        item_id = canonical_item_id(name, photo, f"t{k}", k)
        path = tmp_path / "generated" / name / f"{item_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        write_sidecar(path, {"item_id": item_id, "identity": name, "reference": str(photo), "prompt": "a photo",
                             "prompt_template": "{}", "prompt_id": f"t{k}", "detectables": [], "categories": [],
                             "relations": [], "seed": k, "method": "test-crops", "base_model": "none"})
    return identities, read_generated(tmp_path / "generated", identities)


def test_engine_faces_equal_the_dlib_backend(faces_dir, dlib_backend, engine):
    def small(path):  # at most 800 px wide: the same faces, a quicker HOG pass
        image = Image.open(faces_dir / path).convert("RGB")
        image.thumbnail((800, 800))
        return np.asarray(image)

    images = [small(p) for p in ("_edge/two_faces_obama_biden.jpg", "_edge/small_obama.jpg")]
    ours, theirs = engine.analyze(images), dlib_backend.analyze(images)
    assert [len(f) for f in ours] == [len(f) for f in theirs] == [3, 1]
    for a_faces, b_faces in zip(ours, theirs):
        for a, b in zip(a_faces, b_faces):
            assert a.box == b.box and np.array_equal(a.landmarks, b.landmarks)
            assert np.abs(a.embedding - b.embedding).max() <= 1e-4


def test_engine_gives_the_same_rows_as_the_dlib_backend(faces_dir, tmp_path, engine):
    from likeness.bench.evaluate import score_items
    from likeness.bench.store import ResultsStore

    identities, items = _generated(faces_dir, tmp_path)
    reports = {}
    for name, cache in (("dlib", None), ("dlib-torch", None)):
        from likeness.faces import FaceCache

        backend = engine if name == "dlib-torch" else get_backend("dlib")
        reports[name] = score_items(items, identities, tmp_path / f"{name}.sqlite", ["ips", "sis"], progress=False,
                                    cache=FaceCache(backend))
    rows = {}
    for name in reports:
        with ResultsStore(tmp_path / f"{name}.sqlite") as store:
            rows[name] = {(s.item_id, s.metric): s for m in ("ips", "sis") for s in store.scores(m)}
    assert rows["dlib"].keys() == rows["dlib-torch"].keys() and len(rows["dlib"]) == 8
    for key, a in rows["dlib"].items():
        b = rows["dlib-torch"][key]
        assert (a.status, a.n_faces, a.protocol["name"]) == (b.status, b.n_faces, b.protocol["name"])
        assert (a.value is None) == (b.value is None)
        if a.value is not None:
            assert abs(a.value - b.value) < 1e-3  # calibrated scale: dlib cosine differences x 5.4
    assert any(s.status == "no_face" for s in rows["dlib"].values())
    assert "batched engine" in next(iter(rows["dlib-torch"].values())).protocol["face"]["engine"]


def test_engine_statuses_for_bad_files(tmp_path, engine):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    results = engine.analyze_paths([bad, tmp_path / "missing.png"])
    assert [r.status for r in results][0] in ("unreadable", "corrupt") and results[1].status == "missing"
