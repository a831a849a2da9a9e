"""``arcface-torch``: the ``arcface`` backend's detection and alignment with the recogniser in torch, on tiny ONNX
models the tests build. Its rows equal onnxruntime's (1e-4) on the shared faces and the astronaut; bad weights are
refused by file name; ``likeness evaluate --backend arcface-torch`` gives the onnxruntime backend's scores."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from likeness.faces import BACKENDS, analyze_path
from likeness.faces.iresnet import ArcFaceWeightsError
from likeness.testing.tiny_arcface import export_iresnet_onnx, export_tiny_arcface, face_image, random_iresnet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``tiny``: det_tiny + w_tiny (conv / avg-pool / gemm); ``iresnet``: det_tiny + a random iresnet exported as
    InsightFace exports theirs; ``det_only``: the detector alone; ``pth``: the same iresnet as a state dict."""
    root = tmp_path_factory.mktemp("arcface-torch")
    tiny = export_tiny_arcface(root / "tiny")
    net = random_iresnet(layers=(1, 2, 1, 1), embedding=24, widths=(8, 16, 16, 32), seed=3)
    iresnet = root / "iresnet"
    iresnet.mkdir()
    shutil.copy(tiny / "det_tiny.onnx", iresnet / "det_tiny.onnx")
    export_iresnet_onnx(iresnet / "w_ir.onnx", net)
    det_only = root / "det_only"
    det_only.mkdir()
    shutil.copy(tiny / "det_tiny.onnx", det_only / "det_tiny.onnx")
    torch.save(net.state_dict(), root / "ir_backbone.pth")
    return {"tiny": tiny, "iresnet": iresnet, "det_only": det_only, "pth": root / "ir_backbone.pth"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, faces_dir, astronaut_path):
    """The shared photos and the astronaut as they are, plus copies with a bright patch the tiny detector fires on."""
    folder = tmp_path_factory.mktemp("photos")
    paths = sorted(p for p in faces_dir.rglob("*") if p.suffix.lower() in (".jpg", ".png")) + [astronaut_path]
    for i, path in enumerate(list(paths)):
        array = np.asarray(Image.open(path).convert("RGB")).copy()
        h, w = array.shape[:2]
        size = max(64, min(h, w) // 6)
        array[h // 3 : h // 3 + size, w // 2 : w // 2 + size] = 255
        paths.append(folder / f"patched_{i}.png")
        Image.fromarray(array).save(paths[-1])
    Image.fromarray(face_image(0)).save(folder / "block.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return paths + [folder / "block.png", folder / "broken.jpg"]


def _assert_same_faces(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.box, b.box, atol=1e-4)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-4)
        assert np.abs(a.embedding - b.embedding).max() <= 1e-4
        assert np.abs(a.raw_embedding - b.raw_embedding).max() <= 1e-4 * max(1.0, float(np.abs(b.raw_embedding).max()))


@pytest.mark.parametrize("recogniser", ["tiny", "iresnet"])
def test_rows_equal_onnxruntime_on_shared_faces_and_astronaut(folders, photos, recogniser):
    reference = BACKENDS.create("arcface", model_dir=folders[recogniser])
    ours = BACKENDS.create("arcface-torch", model_dir=folders[recogniser], batch_size=3, device="cpu")
    expected = [analyze_path(reference, p) for p in photos]
    rows = ours.analyze_paths(photos)  # batched across files
    assert [r.status for r in rows] == [r.status for r in expected]
    assert sum(r.status == "ok" for r in rows) >= len(photos) // 2 and rows[-1].status == "unreadable"
    for row, want in zip(rows, expected):
        assert row.size == want.size
        _assert_same_faces(row.faces, want.faces)
    for path in photos[:3]:  # the one-file path (analyze_path -> analyze) gives the same rows
        _assert_same_faces(analyze_path(ours, path).faces, analyze_path(reference, path).faces)
    assert ours.protocol.name == reference.protocol.name  # same recogniser file, same numbers
    assert "torch" in ours.protocol.engine and "batches of 3 on cpu" in ours.protocol.engine
    assert ours.embedding_dim == reference.embedding_dim == {"tiny": 16, "iresnet": 24}[recogniser]


def test_real_face_crops_embed_alike(folders, face_cache, faces_dir, astronaut_path):
    """On real faces (dlib's 5 points, ArcFace alignment) the torch iresnet gives onnxruntime's embeddings."""
    reference = BACKENDS.create("arcface", model_dir=folders["iresnet"])
    ours = BACKENDS.create("arcface-torch", model_dir=folders["iresnet"], device="cpu")
    n = 0
    for path in [faces_dir / "obama" / "0.jpg", faces_dir / "_edge" / "two_faces_obama_biden.jpg", astronaut_path]:
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = face_cache.get(path).faces
        copies = [type(f)(box=f.box, score=f.score, landmarks=f.landmarks) for f in faces]
        _assert_same_faces(ours.embed(image, copies), reference.embed(image, [type(f)(box=f.box, score=f.score,
                                                                                   landmarks=f.landmarks) for f in faces]))
        n += len(faces)
    assert n >= 4


def test_pth_weights_give_their_own_protocol_and_the_same_numbers(folders, photos):
    onnx_backend = BACKENDS.create("arcface-torch", model_dir=folders["iresnet"], device="cpu")
    pth_backend = BACKENDS.create("arcface-torch", model_dir=folders["det_only"], weights=folders["pth"], device="cpu")
    assert pth_backend.protocol.name == "arcface-det_tiny-ir_backbone/v1"
    assert "ir_backbone.pth" in pth_backend.protocol.embedder and "iresnet" in pth_backend.protocol.engine
    for ours, theirs in zip(pth_backend.analyze_paths(photos[-3:]), onnx_backend.analyze_paths(photos[-3:])):
        assert ours.status == theirs.status
        _assert_same_faces(ours.faces, theirs.faces)
    # weights= an ONNX file overrides the folder's own recogniser
    override = BACKENDS.create("arcface-torch", model_dir=folders["tiny"], weights=folders["iresnet"] / "w_ir.onnx")
    assert override.embedding_dim == 24 and override.protocol.name == "arcface-det_tiny-w_ir/v1"


def test_bad_weights_are_clear_errors_naming_the_file(folders, tmp_path):
    det = folders["det_only"]
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        BACKENDS.create("arcface-torch", model_dir=det, weights=tmp_path / "absent.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a torch file")
    with pytest.raises(ArcFaceWeightsError, match="corrupt.pth"):
        BACKENDS.create("arcface-torch", model_dir=det, weights=tmp_path / "corrupt.pth")
    state = random_iresnet(layers=(1, 2, 1, 1), embedding=24, widths=(8, 16, 16, 32)).state_dict()
    state["layer2.1.conv2.weight"] = torch.zeros(16, 16, 1, 1)
    torch.save(state, tmp_path / "wrong_shape.pth")
    with pytest.raises(ArcFaceWeightsError, match=r"wrong_shape.pth.*layer2.1.conv2.weight: \(16, 16, 1, 1\)"):
        BACKENDS.create("arcface-torch", model_dir=det, weights=tmp_path / "wrong_shape.pth")
    with pytest.raises(ValueError, match="no recogniser"):
        BACKENDS.create("arcface-torch", model_dir=det)
    broken = tmp_path / "broken_folder"
    shutil.copytree(det, broken)
    (broken / "w600k_r50.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ValueError, match="w600k_r50.onnx"):
        BACKENDS.create("arcface-torch", model_dir=broken)


def test_evaluate_cli_with_arcface_torch_scores_like_onnxruntime(folders, tmp_path, capsys):
    from likeness.bench.store import ResultsStore
    from likeness.cli import main

    people = tmp_path / "data" / "STELLAR"
    generated = tmp_path / "generated"
    generated.mkdir()
    for k, person in enumerate(("000", "001")):
        (people / person).mkdir(parents=True)
        for photo in (0, 1):
            Image.fromarray(face_image(10 * k + photo)).save(people / person / f"{photo}.jpg", quality=98)
            (people / person / f"{photo}_attributes.json").write_text('{"attributes": {}}')
        for g in range(2):
            name = f"{person}-0-0{g}"
            image = face_image(100 + 10 * k + g) if g == 0 else np.zeros((320, 320, 3), np.uint8)
            Image.fromarray(image).save(generated / f"{name}.png")
            (generated / f"{name}.json").write_text(f'{{"prompt": "x", "detectables": [], "save_name": "{name}", '
                                                    f'"image_path": "{person}/0.jpg"}}')
    scores = {}
    for backend in ("arcface", "arcface-torch"):
        store = tmp_path / f"{backend}.sqlite"
        assert main(["evaluate", str(tmp_path / "data"), str(generated), "--store", str(store), "--metrics", "ips,sis",
                     "--backend", backend, "--model-dir", str(folders["iresnet"]), "--quiet"]) == 0
        assert "face protocol arcface-det_tiny-w_ir/v1" in capsys.readouterr().out
        with ResultsStore(store) as results:
            scores[backend] = {(r.item_id, r.metric): (r.status, r.value, r.protocol["face"]) for r in results.scores()}
    assert scores["arcface"].keys() == scores["arcface-torch"].keys() and len(scores["arcface"]) == 8
    for key, (status, value, face) in scores["arcface-torch"].items():
        want_status, want_value, want_face = scores["arcface"][key]
        assert status == want_status and value == pytest.approx(want_value, abs=1e-4), key
        assert face["name"] == want_face["name"] and "torch" in face["engine"] and not want_face["engine"]
    assert scores["arcface-torch"]["000-0-00", "ips"][1] > 0 and scores["arcface-torch"]["000-0-01", "ips"][0] == "no_face"
    assert main(["evaluate", str(tmp_path / "data"), str(generated), "--store", str(tmp_path / "x.sqlite"), "--quiet",
                 "--backend", "arcface", "--model-dir", str(folders["iresnet"]), "--face-weights", str(folders["pth"])]) == 2
    assert "--face-weights needs --backend arcface-torch" in capsys.readouterr().err
