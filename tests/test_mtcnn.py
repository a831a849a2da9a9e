"""MTCNN in torch: each network equals a plain numpy forward of the package's weights; on real photos it finds
every face HOG finds, in the same place, with eyes where dlib puts them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from likeness.faces.mtcnn import MTCNN, MTCNNWeightsError, load_arrays, load_nets, mtcnn_weights_dir, nms

pytestmark = pytest.mark.usefixtures("one_thread")

PHOTOS = ["obama/0.jpg", "biden/1.jpg", "alex_lacamoire/1.jpg", "_edge/two_faces_obama_biden.jpg", "_edge/small_obama.jpg"]


# --- a plain numpy forward, written from the Keras layer definitions (NHWC, kernels HWIO) -----------------


def np_conv(x, kernel, bias):  # x (H, W, C), valid padding, stride 1
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))  # (H', W', C, kh, kw)
    return np.einsum("hwcij,ijco->hwo", windows, kernel, optimize=True) + bias


def np_prelu(x, alpha):
    return np.where(x > 0, x, x * alpha.reshape(-1))


def np_pool(x, k, s, same):
    h, w, c = x.shape
    if same:
        pads = []
        for size in (h, w):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, pads + [(0, 0)], constant_values=-np.inf)
    oh, ow = (x.shape[0] - k) // s + 1, (x.shape[1] - k) // s + 1
    return np.array([[x[i * s : i * s + k, j * s : j * s + k].max(axis=(0, 1)) for j in range(ow)] for i in range(oh)])


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_pnet(a, x):
    x = np_pool(np_prelu(np_conv(x, a[0], a[1]), a[2]), 2, 2, True)
    x = np_prelu(np_conv(x, a[3], a[4]), a[5])
    x = np_prelu(np_conv(x, a[6], a[7]), a[8])
    return np_conv(x, a[9], a[10]), np_softmax(np_conv(x, a[11], a[12]))[..., 1]


def np_rnet(a, x):
    x = np_pool(np_prelu(np_conv(x, a[0], a[1]), a[2]), 3, 2, True)
    x = np_pool(np_prelu(np_conv(x, a[3], a[4]), a[5]), 3, 2, False)
    x = np_prelu(np_conv(x, a[6], a[7]), a[8])
    x = np_prelu(x.transpose(1, 0, 2).reshape(-1) @ a[9] + a[10], a[11])  # Keras Permute((2, 1, 3)) + Flatten
    return x @ a[12] + a[13], np_softmax(x @ a[14] + a[15])[1]


def np_onet(a, x):
    x = np_pool(np_prelu(np_conv(x, a[0], a[1]), a[2]), 3, 2, True)
    x = np_pool(np_prelu(np_conv(x, a[3], a[4]), a[5]), 3, 2, False)
    x = np_pool(np_prelu(np_conv(x, a[6], a[7]), a[8]), 2, 2, True)
    x = np_prelu(np_conv(x, a[9], a[10]), a[11])
    x = np_prelu(x.transpose(1, 0, 2).reshape(-1) @ a[12] + a[13], a[14])
    return x @ a[15] + a[16], x @ a[17] + a[18], np_softmax(x @ a[19] + a[20])[1]


@pytest.fixture(scope="module")
def nets():
    return load_nets()


def _arrays(name):
    return [np.asarray(a, dtype=np.float64) for a in load_arrays(mtcnn_weights_dir() / f"{name}.lz4")]


def test_each_network_equals_a_numpy_forward(nets):
    pnet, rnet, onet = nets
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (37, 29, 3))
    with torch.no_grad():
        reg, prob = pnet(torch.from_numpy(x.transpose(2, 0, 1))[None].float())
    ref_reg, ref_prob = np_pnet(_arrays("pnet"), x)
    assert np.abs(reg[0].numpy().transpose(1, 2, 0) - ref_reg).max() < 1e-4
    assert np.abs(prob[0].numpy() - ref_prob).max() < 1e-4
    for net, reference, size in ((rnet, np_rnet, 24), (onet, np_onet, 48)):
        arrays = _arrays("rnet" if net is rnet else "onet")
        batch = rng.uniform(-1, 1, (3, size, size, 3))
        with torch.no_grad():
            outputs = net(torch.from_numpy(batch.transpose(0, 3, 1, 2)).float())
        for i in range(len(batch)):
            for ours, theirs in zip(outputs, reference(arrays, batch[i])):
                assert np.abs(ours[i].numpy() - theirs).max() < 1e-4


def test_bad_weight_files_are_refused(tmp_path):
    import joblib

    with pytest.raises(MTCNNWeightsError, match="pnet.lz4.*not found"):
        load_nets(tmp_path)
    (tmp_path / "pnet.lz4").write_bytes(b"not a joblib file")
    with pytest.raises(MTCNNWeightsError, match="pnet.lz4.*unreadable"):
        load_nets(tmp_path)
    arrays = load_arrays(mtcnn_weights_dir() / "pnet.lz4")
    arrays[3] = arrays[3][:, :, :, :8]  # conv2 with 8 filters instead of 16
    joblib.dump(arrays, tmp_path / "pnet.lz4")
    with pytest.raises(MTCNNWeightsError, match=r"pnet.lz4: array 3 has shape \(3, 3, 10, 8\)"):
        load_nets(tmp_path)
    joblib.dump(arrays[:5], tmp_path / "pnet.lz4")
    with pytest.raises(MTCNNWeightsError, match="expected 13 arrays, found 5"):
        load_nets(tmp_path)


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 4]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(0, 1) = 81 / 119 = 0.68; box 3 lies inside box 0: IoU 0.16, intersection over the smaller = 1.
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 0, 1, 2]
    # "min" with +1 pixel areas: box 3 (25 px) drops box 0 (25 / 25 = 1) but keeps box 1 (16 / 25 = 0.64).
    assert nms(boxes, scores, 0.7, "min").tolist() == [3, 1, 2]


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def mtcnn_backend():
    from likeness.faces import get_backend

    return get_backend("dlib", detector="mtcnn")


def test_mtcnn_finds_every_hog_face_in_the_same_place(faces_dir, dlib_backend, mtcnn_backend):
    for name in PHOTOS:
        image = Image.open(faces_dir / name).convert("RGB")
        image.thumbnail((900, 900))  # same faces, quicker passes
        image = np.asarray(image)
        hog, found = dlib_backend.detect(image), mtcnn_backend.detect(image)
        assert hog, name
        for face in hog:
            best = max(found, key=lambda f: _iou(f.box, face.box))
            assert _iou(best.box, face.box) > 0.5, name
            width = face.box[2] - face.box[0]
            # dlib's landmarks[:2] are the midpoints of its eye-corner pairs; MTCNN marks eye centres.
            assert np.linalg.norm(best.landmarks[:2] - face.landmarks[:2], axis=1).max() < 0.1 * width, name


def test_mtcnn_protocol_and_descriptor(faces_dir, dlib_backend, mtcnn_backend):
    assert mtcnn_backend.protocol.name == "dlib-mtcnn-r128-cal/v2" and "MTCNN" in mtcnn_backend.protocol.detector
    image = np.asarray(Image.open(faces_dir / "obama/1.jpg").convert("RGB"))
    ours = mtcnn_backend.analyze([image])[0][0]
    hog = dlib_backend.analyze([image])[0][0]
    assert ours.landmarks.shape == (5, 2) and ours.landmarks[0, 0] < ours.landmarks[1, 0]
    assert float(ours.embedding @ hog.embedding) > 0.98  # the same face, chips aligned from different points
    with pytest.raises(ValueError, match="'hog', 'mmod'"):
        from likeness.faces.dlib_backend import DlibBackend

        DlibBackend(detector="viola-jones")


def test_direct_cascade_on_a_blank_image_finds_nothing(nets):
    detector = MTCNN()
    boxes, scores, points = detector.detect(np.zeros((60, 80, 3), dtype=np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and points.shape == (0, 5, 2)
