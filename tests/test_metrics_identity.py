"""IPS / SIS / APS: real photos order people correctly, values match hand computation, bad input is recorded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from likeness.bench.store import ResultsStore
from likeness.data.identities import Identity
from likeness.faces import FaceCache
from likeness.faces.base import Face, FaceBackend, FaceProtocol
from likeness.metrics import METRICS, Sample
from likeness.metrics.aps import AgeGenderAPS, ProbeAPS, balanced_accuracy

PEOPLE = ("obama", "biden", "alex_lacamoire")


# -- real photos ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_identities(faces_dir, astronaut_path):
    people = [Identity(p, sorted((faces_dir / p).glob("*.jpg"))) for p in PEOPLE]
    return people + [Identity("astronaut", [astronaut_path])]


@pytest.fixture(scope="module")
def real_scores(real_identities, face_cache):
    """IPS and SIS of every photo, used as a 'generated' image, against every other photo as reference."""
    ips = METRICS.create("ips", cache=face_cache)
    sis = METRICS.create("sis", cache=face_cache)
    rows = []
    for generated_identity in real_identities:
        for generated in generated_identity.photos:
            for identity in real_identities:
                for reference in identity.photos:
                    if reference == generated:
                        continue
                    sample = Sample(f"{generated.name}-{reference.name}", generated, identity, reference)
                    faces = face_cache.get(generated)
                    (i,), (s,) = ips.update([sample], [faces]), sis.update([sample], [faces])
                    rows.append((generated_identity.name == identity.name, i, s))
    return rows


def test_same_person_scores_higher_than_any_other_pair(real_scores):
    same = [i.value for is_same, i, _ in real_scores if is_same]
    different = [i.value for is_same, i, _ in real_scores if not is_same]
    assert len(same) == 10 and len(different) == 46  # ordered pairs of 8 photos of 4 people
    assert min(same) > max(different)
    assert min(same) > 0.6 and abs(np.mean(different)) < 0.15  # the calibrated scale of the dlib protocol


def test_sis_never_exceeds_ips_and_is_the_min_over_photos(real_scores):
    for _, ips, sis in real_scores:
        assert ips.status == sis.status == "ok"
        # sis/v2 floors each photo's score at 0 (the no-face level), so SIS <= max(IPS, 0).
        assert sis.value <= max(ips.value, 0.0) + 1e-9
        assert sis.value == pytest.approx(min(sis.detail["per_photo"].values()))
        assert sis.value == pytest.approx(max(0.0, min(sis.detail["per_photo_unfloored"].values())))


def test_raw_cosine_is_kept_next_to_the_calibrated_value(real_scores, dlib_backend):
    _, ips, _ = real_scores[0]
    assert ips.value == pytest.approx(float(dlib_backend.calibrate(ips.detail["raw_cosine"])))
    assert ips.protocol["name"] == "ips/v1+dlib-hog-r128-cal/v1" and ips.n_faces == 1


def test_several_faces_take_the_best_pair(face_cache, faces_dir, dlib_backend):
    group = faces_dir / "_edge" / "two_faces_obama_biden.jpg"
    reference = faces_dir / "obama" / "0.jpg"
    (score,) = METRICS.create("ips", cache=face_cache).update([Sample("g", group, None, reference)])
    cosines = face_cache.get(group).embeddings() @ face_cache.get(reference).embeddings().T
    assert score.n_faces == len(face_cache.get(group).faces) >= 2
    assert score.value == pytest.approx(float(dlib_backend.calibrate(cosines.max())))
    assert score.value > 0.5  # Obama is in the group photo


def test_no_face_either_side_scores_zero_and_bad_files_are_unscored(face_cache, faces_dir, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (160, 160), (90, 90, 90)).save(blank)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    photo = faces_dir / "obama" / "0.jpg"
    person = Identity("obama", [photo, tmp_path / "gone.jpg"])
    ips, sis = METRICS.create("ips", cache=face_cache), METRICS.create("sis", cache=face_cache)
    cases = {
        "generated has no face": (Sample("a", blank, person, photo), 0.0, "no_face"),
        "reference has no face": (Sample("b", photo, person, blank), 0.0, "no_face"),
        "generated corrupt": (Sample("c", corrupt, person, photo), None, "unreadable"),
        "reference missing": (Sample("d", photo, person, tmp_path / "gone.jpg"), None, "ref_missing"),
        "no reference recorded": (Sample("e", photo, person, None), None, "ref_missing"),
    }
    for case, (sample, value, status) in cases.items():
        (score,) = ips.update([sample])
        assert (score.value, score.status) == (value, status), case
        assert score.detail.get("problem") or score.detail.get("reference") is None, case
    assert ips.update([cases["generated corrupt"][0]])[0].detail["problem"].startswith(str(corrupt))
    # SIS: the missing photo of the identity is skipped and named, not fatal
    (score,) = sis.update([Sample("f", faces_dir / "obama" / "1.jpg", person, photo)])
    assert score.status == "ref_partial" and str(tmp_path / "gone.jpg") in score.detail["skipped"]
    summary = ips.compute()
    assert summary["no_face"] == 2 and summary["unscored"] == 4 and summary["count"] == 2


def test_age_gender_aps_is_a_separate_protocol(face_cache, faces_dir, tmp_path):
    person = Identity("obama", [faces_dir / "obama" / "0.jpg"])
    aps = METRICS.create("aps", cache=face_cache, identities=[person])
    assert isinstance(aps, AgeGenderAPS) and "agegender" in aps.protocol["name"]
    blank = tmp_path / "blank.png"
    Image.new("RGB", (100, 100)).save(blank)
    ok, no_face = aps.update([Sample("a", faces_dir / "obama" / "1.jpg", person, person.photos[0]),
                              Sample("b", blank, person, person.photos[0])])
    assert ok.status == "ok" and 0.0 <= ok.value <= 1.0 and ok.detail["gender_agrees"] == 1.0
    assert ok.value == pytest.approx((1.0 + ok.detail["age_agreement"]) / 2)
    assert (no_face.value, no_face.status) == (0.0, "no_face")


# -- hand-computed values on synthetic embeddings ----------------------------------------------------


class ColourBackend(FaceBackend):
    """A test double: one 'face' whose embedding is the image's mean colour minus grey; black = no face."""

    protocol = FaceProtocol(name="colour/test", detector="mean > 10", aligner="none", embedder="mean colour - 128")
    embedding_dim = 3

    def detect(self, image):
        return [Face(box=(0, 0, image.shape[1], image.shape[0]), score=1.0)] if image.mean() > 10 else []

    def embed(self, image, faces):
        for face in faces:
            vector = image.reshape(-1, 3).mean(0) - 128.0
            face.embedding = (vector / np.linalg.norm(vector)).astype(np.float32)
        return faces


def _colour(path, rgb):
    Image.new("RGB", (32, 32), rgb).save(path)
    return path


class CalibratedColour(ColourBackend):
    """The colour double on a calibrated scale like dlib's (cosine 0.5 -> 0, so weak matches are below 0)."""

    protocol = FaceProtocol(name="colour-cal/test", detector="mean > 10", aligner="none", embedder="mean colour - 128")

    def calibrate(self, cosine):
        return (np.asarray(cosine, dtype=np.float64) - 0.5) / 0.5


def test_balanced_accuracy_by_hand():
    assert balanced_accuracy([1, 1, -1, -1, -1], [1, 1, 1, 1, -1]) == pytest.approx((1 + 1 / 3) / 2)
    assert balanced_accuracy([1, 1, 1], [1, -1, 1]) == pytest.approx(2 / 3)  # one class present: its recall


def test_probe_aps_matches_hand_computation(tmp_path):
    colours = {"A": (220, 220, 128), "B": (40, 220, 128), "C": (220, 40, 128), "D": (40, 40, 128)}
    labels = {"A": (1, 1), "B": (-1, 1), "C": (1, -1), "D": (-1, -1)}  # (Male, Young) = (sign r, sign g)
    people = {}
    for name, rgb in colours.items():
        photos = [_colour(tmp_path / f"{name}{k}.png", rgb) for k in range(2)]
        male, young = labels[name]
        people[name] = Identity(name, photos, {p: {"Male": male, "Young": young} for p in photos}, layout="stellar")
    backend = ColourBackend()
    aps = METRICS.create("aps", backend=backend, cache=FaceCache(backend), identities=list(people.values()))
    assert isinstance(aps, ProbeAPS) and "probe" in aps.protocol["name"]
    black = _colour(tmp_path / "black.png", (0, 0, 0))
    samples = [
        Sample("g1", _colour(tmp_path / "g1.png", colours["A"]), people["A"], people["A"].photos[0]),  # right, right
        Sample("g2", _colour(tmp_path / "g2.png", colours["A"]), people["B"], people["B"].photos[0]),  # Male wrong
        Sample("g3", _colour(tmp_path / "g3.png", colours["C"]), people["C"], people["C"].photos[0]),  # right, right
        Sample("g4", black, people["D"], people["D"].photos[0]),  # no face: both wrong
        Sample("g5", _colour(tmp_path / "g5.png", colours["D"]), people["D"], people["D"].photos[1]),  # right, right
    ]
    scores = aps.update(samples)
    assert [s.value for s in scores] == [1.0, 0.5, 1.0, 0.0, 1.0]
    assert scores[3].status == "no_face" and scores[3].detail["pred"] == {"Male": 1, "Young": 1}
    # Male: truth + - + - -, pred + + + + -  -> (1 + 1/3) / 2;  Young: truth + + - - -, pred + + - + - -> (1 + 2/3) / 2
    summary = aps.compute()
    assert summary["per_attribute"] == pytest.approx({"Young": 5 / 6, "Male": 2 / 3})
    assert summary["value"] == pytest.approx(0.75) and summary["mean"] == pytest.approx(0.7)
    assert aps.probe.n_train == {a: (8 if a in ("Male", "Young") else 0) for a in aps.probe.attributes}
    # the same summary from rows read back out of the store (what a resumed run reports)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(scores)
        assert aps.summarize(store.scores("aps"))["value"] == pytest.approx(0.75)


def test_ips_value_is_the_cosine_by_hand_and_summary_counts(tmp_path):
    backend = ColourBackend()
    ips = METRICS.create("ips", backend=backend)
    reference = _colour(tmp_path / "ref.png", (40, 220, 128))
    generated = _colour(tmp_path / "gen.png", (220, 220, 128))
    black = _colour(tmp_path / "black.png", (0, 0, 0))
    a, b = np.array([-88.0, 92.0, 0.0]), np.array([92.0, 92.0, 0.0])
    (score,) = ips.update([Sample("x", generated, None, reference)])
    assert score.value == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-6)
    ips.update([Sample("y", black, None, reference)])
    summary = ips.compute()
    assert summary["count"] == 2 and summary["no_face"] == 1
    assert summary["mean"] == pytest.approx(score.value / 2) and summary["std"] == pytest.approx(score.value / 2 ** 0.5)  # sample std (ddof 1) of (v, 0)


def test_sis_floors_each_photo_at_the_no_face_level(tmp_path):
    """SIS (sis/v2) on a calibrated scale: each photo floored at 0, the no-face level, so SIS is the worst photo as in
    Stellar (a faceless photo makes SIS 0); the unfloored values are kept in detail."""
    backend = CalibratedColour()
    sis = METRICS.create("sis", backend=backend, cache=FaceCache(backend))
    assert sis.protocol["name"].startswith("sis/v2+")
    near = _colour(tmp_path / "near.png", (220, 200, 128))  # cosine with the image ~0.99: calibrated ~0.98
    far = _colour(tmp_path / "far.png", (40, 220, 128))  # cosine ~0.05: calibrated ~-0.9
    faceless = _colour(tmp_path / "faceless.png", (0, 0, 0))
    image = _colour(tmp_path / "gen.png", (220, 220, 128))

    # 1. A photo with no face: SIS is 0 (Stellar's value), not the weak match below 0 (sis/v1 gave ~-0.9).
    person = Identity("ann", [near, far, faceless])
    (row,) = sis.update([Sample("a", image, person, near)])
    assert (row.value, row.status) == (0.0, "no_face") and row.detail["worst_photo"] == str(faceless)
    assert row.detail["per_photo_unfloored"][str(far)] < -0.5 and row.detail["per_photo"][str(far)] == 0.0
    assert row.detail["floored"] is True

    # 2. Faces everywhere, one weak match below 0: SIS is 0 (the floor decided), the raw values are kept.
    (row,) = sis.update([Sample("b", image, Identity("bob", [near, far]), near)])
    assert (row.value, row.status) == (0.0, "ok") and row.detail["worst_photo"] == str(far)
    cosine = float(row.detail["raw_cosine"])
    assert row.detail["per_photo_unfloored"][str(far)] == pytest.approx((cosine - 0.5) / 0.5)

    # 3. Every photo above 0: SIS is the worst photo's score, untouched by the floor.
    (row,) = sis.update([Sample("c", image, Identity("cy", [near, image]), near)])
    assert row.value == pytest.approx(min(row.detail["per_photo_unfloored"].values())) and row.value > 0.9
    assert row.detail["floored"] is False and row.status == "ok"
