"""The face stack: alignment maths, dlib on real photos, calibration, the cache, arcface on tiny ONNX models."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from likeness.faces import BACKENDS, FaceCache, analyze_path, get_backend, largest_face_crop
from likeness.faces.align import ARCFACE_TEMPLATE, apply_transform, similarity_transform, template
from likeness.faces.base import FaceBackend
from likeness.testing.tiny_arcface import POINT_OFFSETS, export_tiny_arcface, face_image

PEOPLE = ("obama", "biden", "alex_lacamoire")


# -- alignment --------------------------------------------------------------------------------------


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(30), 2.5, np.array([7.0, -3.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = ARCFACE_TEMPLATE @ (scale * rotation).T + shift
    matrix = similarity_transform(ARCFACE_TEMPLATE, dst)
    np.testing.assert_allclose(matrix, np.hstack([scale * rotation, shift[:, None]]), atol=1e-9)
    np.testing.assert_allclose(apply_transform(matrix, ARCFACE_TEMPLATE), dst, atol=1e-9)


def test_similarity_transform_never_mirrors():
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])
    matrix = similarity_transform(ARCFACE_TEMPLATE, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


# -- dlib on real photos ----------------------------------------------------------------------------


def test_unknown_backend_lists_known_ones():
    with pytest.raises(KeyError, match="arcface, arcface-torch, dlib"):
        get_backend("nope")


def test_dlib_protocol_names_every_part(dlib_backend):
    p = dlib_backend.protocol
    assert p.name.startswith("dlib-hog") and "/v" in p.name
    assert "5-point" in p.aligner and "128-d" in p.embedder and "0.815" in p.scale_note
    assert "68" not in p.aligner  # the non-commercial 68-point model is never used


def test_portrait_faces_and_landmarks_inside_the_box(face_cache, faces_dir, astronaut_path):
    for path in [faces_dir / p / "0.jpg" for p in PEOPLE] + [astronaut_path]:
        result = face_cache.get(path)
        # the astronaut's shoulder patch is a small HOG false positive: the real face is the largest
        assert result.status == "ok" and len(result.faces) == (2 if path == astronaut_path else 1), path
        face = result.faces[0]
        x0, y0, x1, y1 = face.box
        assert face.landmarks.shape == (5, 2) and face.embedding.shape == (128,)
        assert np.isclose(np.linalg.norm(face.embedding), 1.0, atol=1e-5)
        eyes, nose, mouth = face.landmarks[:2], face.landmarks[2], face.landmarks[3:]
        assert (x0 <= face.landmarks[:, 0]).all() and (face.landmarks[:, 0] <= x1).all()
        assert eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0]  # image-left point first
        assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()  # eyes above nose above mouth


def test_several_faces_come_largest_first(face_cache, faces_dir):
    result = face_cache.get(faces_dir / "_edge" / "two_faces_obama_biden.jpg")
    assert result.status == "ok" and len(result.faces) >= 2
    areas = [f.area for f in result.faces]
    assert areas == sorted(areas, reverse=True)


def test_no_face_and_unreadable_get_their_status(dlib_backend, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (120, 160, 200)).save(blank)
    assert analyze_path(dlib_backend, blank).status == "no_face"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    result = analyze_path(dlib_backend, broken)
    assert result.status == "unreadable" and str(broken) in result.problem
    assert analyze_path(dlib_backend, tmp_path / "absent.jpg").status == "missing"


def test_huge_image_is_downscaled_for_detection_and_boxes_map_back(dlib_backend, astronaut_path):
    photo = Image.open(astronaut_path).resize((1536, 1536))  # face ~270 px
    canvas = np.zeros((1600, 9000, 3), np.uint8)  # > 8k px wide: detection runs on a ~0.37x copy
    canvas[32:1568, 4000:5536] = np.asarray(photo)
    faces = dlib_backend.detect(canvas)
    reference = max(dlib_backend.detect(np.asarray(photo)), key=lambda f: f.score)
    assert len(faces) >= 1
    x0, y0, x1, _ = max(faces, key=lambda f: f.score).box
    # the same face, in full-resolution coordinates (to within a couple of HOG cells of the copy)
    assert abs(x0 - 4000 - reference.box[0]) < 40 and abs(y0 - 32 - reference.box[1]) < 40
    assert abs((x1 - x0) - (reference.box[2] - reference.box[0])) < 60


def test_one_backend_shared_by_threads_gives_the_single_thread_answer(dlib_backend, astronaut_path):
    """The demo checks two visitors' uploads at once with one backend; unserialised dlib calls segfaulted
    (dlib's detector resizes shared scratch buffers per image size, hence several sizes)."""
    photo = Image.open(astronaut_path)
    images = [np.asarray(photo.resize((side, side))) for side in (320, 256, 384, 288)]
    expected = [dlib_backend.embed(image, dlib_backend.detect(image)) for image in images]
    results, errors = {}, []

    def analyse(worker):
        try:
            for round_ in range(3):
                for k, image in enumerate(images):
                    results[worker, round_, k] = dlib_backend.embed(image, dlib_backend.detect(image))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=analyse, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4 * 3 * len(images)
    for (_, _, k), faces in results.items():
        assert [f.box for f in faces] == [f.box for f in expected[k]]
        np.testing.assert_array_equal(faces[0].embedding, expected[k][0].embedding)


def test_largest_face_crop_aligns_to_the_template(dlib_backend, astronaut_path):
    crop = largest_face_crop(Image.open(astronaut_path), dlib_backend, size=224)
    assert crop.aligned.size == (224, 224) and crop.aligned.mode == "RGB"
    mapped = apply_transform(crop.matrix, crop.landmarks)
    np.testing.assert_allclose(mapped[:2], template(224)[:2], atol=6)  # eyes land on the template eyes
    assert largest_face_crop(Image.new("RGB", (120, 120)), dlib_backend) is None


def test_calibration_puts_strangers_near_zero_and_same_person_high(face_cache, dlib_backend, faces_dir, astronaut_path):
    embeddings = {}
    for person in PEOPLE:
        for photo in sorted((faces_dir / person).glob("*.jpg")):
            embeddings[(person, photo.name)] = face_cache.get(photo).faces[0].embedding
    embeddings[("astronaut", "0")] = face_cache.get(astronaut_path).faces[0].embedding
    keys = list(embeddings)
    same, strangers = [], []
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            cosine = float(embeddings[a] @ embeddings[b])
            (same if a[0] == b[0] else strangers).append(cosine)
    strangers, same = np.array(strangers), np.array(same)
    assert strangers.min() > 0.7  # the raw dlib cosine is compressed...
    calibrated_strangers, calibrated_same = dlib_backend.calibrate(strangers), dlib_backend.calibrate(same)
    assert abs(calibrated_strangers.mean()) < 0.1  # ...calibrated, strangers sit near 0
    assert calibrated_same.min() > 0.6 and calibrated_same.min() > calibrated_strangers.max() + 0.3
    assert dlib_backend.calibrate(1.0) == pytest.approx(1.0)


# -- the cache ---------------------------------------------------------------------------------------


class CountingBackend(FaceBackend):
    """Wraps a backend and counts face passes."""

    def __init__(self, inner):
        self.inner, self.protocol, self.passes = inner, inner.protocol, 0

    def detect(self, image):
        self.passes += 1
        return self.inner.detect(image)

    def embed(self, image, faces):
        return self.inner.embed(image, faces)


def test_cache_keys_on_content_and_persists(dlib_backend, astronaut_path, tmp_path):
    counting = CountingBackend(dlib_backend)
    cache = FaceCache(counting, tmp_path / "cache")
    copy = tmp_path / "same_bytes.jpg"
    copy.write_bytes(astronaut_path.read_bytes())
    first = cache.get(astronaut_path)
    assert cache.get(astronaut_path) is first and cache.get(copy) is first
    assert counting.passes == 1 and cache.hits == 2
    fresh = FaceCache(counting, tmp_path / "cache")  # a new process, same cache folder
    again = fresh.get(astronaut_path)
    assert counting.passes == 1
    np.testing.assert_allclose(again.faces[0].embedding, first.faces[0].embedding)
    np.testing.assert_allclose(again.faces[0].landmarks, first.faces[0].landmarks)
    for entry in (tmp_path / "cache").rglob("*.npz"):  # a damaged entry is recomputed, not trusted
        entry.write_bytes(b"garbage")
    assert FaceCache(counting, tmp_path / "cache").get(astronaut_path).status == "ok" and counting.passes == 2


# -- arcface on tiny ONNX models with the real signatures ------------------------------------------------

@pytest.fixture(scope="module")
def arcface_backend(tmp_path_factory):
    return BACKENDS.create("arcface", model_dir=export_tiny_arcface(tmp_path_factory.mktemp("arcface")))


def test_arcface_finds_models_by_signature_and_describes_itself(arcface_backend):
    assert arcface_backend.embedding_dim == 16
    assert arcface_backend.protocol.name == "arcface-det_tiny-w_tiny/v1"
    assert "ArcFace 112x112" in arcface_backend.protocol.aligner


@pytest.mark.parametrize("batched", [False, True])
def test_arcface_detection_matches_hand_decoding(arcface_backend, batched, tmp_path):
    backend = arcface_backend
    if batched:  # detector outputs with a leading batch dimension, as some SCRFD exports have
        backend = BACKENDS.create("arcface", model_dir=export_tiny_arcface(tmp_path / "batched", batch_dim=True))
        assert len(backend.detector.get_outputs()[0].shape) == 3
    faces = backend.detect(face_image(0))
    assert len(faces) == 1  # two anchors on one cell: NMS keeps one
    # canvas scale 2: anchor centre (320, 192) at 640 px -> (160, 96); box = centre -+ 32 px -> -+ 16 px
    np.testing.assert_allclose(faces[0].box, (144, 80, 176, 112), atol=1e-4)
    np.testing.assert_allclose(faces[0].landmarks, np.array([160, 96]) + POINT_OFFSETS * 16, atol=1e-4)
    assert backend.detect(np.zeros((320, 320, 3), np.uint8)) == []


def test_arcface_end_to_end_identity_score(arcface_backend, tmp_path):
    from likeness.metrics import METRICS, Sample

    paths = []
    for seed in (0, 0, 1):
        paths.append(tmp_path / f"img{len(paths)}.png")
        Image.fromarray(face_image(seed)).save(paths[-1])
    result = analyze_path(arcface_backend, paths[0])
    assert result.status == "ok" and np.isclose(np.linalg.norm(result.faces[0].embedding), 1.0, atol=1e-5)
    ips = METRICS.create("ips", backend=arcface_backend)
    same, other = ips.update([Sample("a", paths[1], None, paths[0]), Sample("b", paths[2], None, paths[0])])
    assert same.status == "ok" and same.value == pytest.approx(1.0, abs=1e-5)
    assert other.value < same.value and other.detail["raw_cosine"] == pytest.approx(other.value)
    assert same.protocol["face"]["name"] == "arcface-det_tiny-w_tiny/v1"


def test_arcface_folder_without_models_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no detector"):
        BACKENDS.create("arcface", model_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BACKENDS.create("arcface", model_dir=tmp_path / "absent")


def test_mmod_cnn_detector_agrees_with_hog(dlib_backend):
    from skimage.data import astronaut

    cnn = get_backend("dlib", detector="cnn", upsample=0)
    assert cnn.protocol.name == "dlib-cnn-r128-cal/v1" and "MMOD" in cnn.protocol.detector
    image = astronaut()
    (by_cnn,) = cnn.analyze([image])[0]
    by_hog = dlib_backend.analyze([image])[0][0]  # the largest HOG face is the real one
    x0, y0 = max(by_cnn.box[0], by_hog.box[0]), max(by_cnn.box[1], by_hog.box[1])
    x1, y1 = min(by_cnn.box[2], by_hog.box[2]), min(by_cnn.box[3], by_hog.box[3])
    overlap = max(0, x1 - x0) * max(0, y1 - y0)
    assert overlap / (by_cnn.area + by_hog.area - overlap) > 0.5
    assert float(by_cnn.embedding @ by_hog.embedding) > 0.98  # same 5 points -> same aligned chip
