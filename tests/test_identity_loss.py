"""Face identity in torch: the dlib descriptor port equals dlib, and the differentiable identity loss trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from likeness.faces.dlib_resnet import DlibFormatError, _structure, default_dat_path, load_dlib_resnet, read_dat
from likeness.faces.identity_loss import FaceRegionError, build_identity_loss, similarity_matrices

PHOTOS = ["obama/0.jpg", "obama/1.jpg", "obama/2.jpg", "biden/0.jpg", "biden/1.jpg", "alex_lacamoire/0.jpg",
          "alex_lacamoire/1.jpg", "_edge/two_faces_obama_biden.jpg"]


@pytest.fixture(scope="module")
def dlib_models():
    import dlib

    from likeness.faces.dlib_backend import dlib_model_dir

    models = dlib_model_dir()
    return (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat")))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    import os

    os.environ.setdefault("LIKENESS_CACHE", str(tmp_path_factory.mktemp("likeness-cache")))
    return load_dlib_resnet()


def _rgb(path) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


def test_torch_descriptor_equals_dlib_on_the_same_chips(faces_dir, astronaut_path, dlib_models, net):
    import dlib

    detector, shapes, encoder = dlib_models
    chips, expected = [], []
    for path in [faces_dir / p for p in PHOTOS] + [astronaut_path]:
        image = _rgb(path)
        for rect in detector(image, 0):
            chip = dlib.get_face_chip(image, shapes(image, rect), size=150, padding=0.25)
            chips.append(chip)
            expected.append(np.asarray(encoder.compute_face_descriptor(chip), dtype=np.float32))
    assert len(chips) >= len(PHOTOS) + 1  # every photo has a face, the two-face photo has two
    batch = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ours = net(batch).numpy()
    assert ours.shape == (len(chips), 128)
    assert np.abs(ours - np.stack(expected)).max() <= 1e-4
    # A batch gives the same rows as one chip at a time.
    with torch.no_grad():
        single = net(batch[:1]).numpy()
    assert np.abs(single - ours[:1]).max() <= 1e-5


def test_cached_weights_equal_a_fresh_conversion(net, tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_CACHE", str(tmp_path))
    first = load_dlib_resnet()
    files = list((tmp_path / "dlib").glob("resnet-*.safetensors"))
    assert len(files) == 1
    again = load_dlib_resnet()
    x = torch.rand(2, 3, 150, 150) * 255
    with torch.no_grad():
        assert torch.equal(first(x), again(x)) and torch.allclose(first(x), net(x), atol=1e-6)


def test_missing_truncated_and_wrong_dat_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.dat"):
        load_dlib_resnet(tmp_path / "nothing.dat")
    data = default_dat_path().read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="truncated.dat.*truncated"):
        load_dlib_resnet(truncated, cache=False)
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(b"\x01\x01\x01\x0bnot_a_loss!" + data[30:2000])
    with pytest.raises(DlibFormatError, match="garbage.dat"):
        read_dat(garbage)
    other = tmp_path / "shape_predictor.dat"  # a real dlib file, but not a face descriptor network
    from likeness.faces.dlib_backend import dlib_model_dir

    other.write_bytes((dlib_model_dir() / "shape_predictor_5_face_landmarks.dat").read_bytes())
    with pytest.raises(DlibFormatError, match="shape_predictor.dat"):
        read_dat(other)


def test_weights_of_the_wrong_shape_are_refused():
    fields, layers = read_dat(default_dat_path())
    layers[7] = {**layers[7], "weight": layers[7]["weight"][:16]}  # a block conv with half its filters
    with pytest.raises(DlibFormatError, match="layer 4.*do not chain"):
        _structure(Path("edited.dat"), fields, layers)
    fields, layers = read_dat(default_dat_path())
    with pytest.raises(DlibFormatError, match="head"):
        _structure(Path("edited.dat"), fields, layers[:-1])


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = torch.from_numpy(rng.uniform(0, 100, (3, 5, 2)))
    angle, scale, shift = 0.3, 1.7, np.array([4.0, -9.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    dst = src[0].numpy() @ rot.T + shift
    m = similarity_matrices(src[:1], torch.from_numpy(dst))[0].numpy()
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], shift, atol=1e-8)


@pytest.fixture(scope="module")
def id_loss(net):
    return build_identity_loss("dlib")


def _face(faces_dir, name, dlib_backend):
    image = _rgb(faces_dir / name)
    face = dlib_backend.embed(image, dlib_backend.detect(image))[0]
    pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    return pixels, torch.from_numpy(face.landmarks)[None], torch.from_numpy(face.embedding)


def test_identity_crop_embedding_agrees_with_dlib(faces_dir, dlib_backend, id_loss):
    """The differentiable crop (grid_sample from the 5 points) sees the face dlib sees."""
    for name in ("obama/0.jpg", "biden/0.jpg"):
        pixels, points, dlib_embedding = _face(faces_dir, name, dlib_backend)
        with torch.no_grad():
            cosine = float(id_loss.embed(pixels, points)[0] @ dlib_embedding)
        assert cosine > 0.99  # dlib's own scale: strangers sit at 0.75-0.87


def test_identity_loss_falls_as_the_image_moves_toward_the_reference(faces_dir, dlib_backend, id_loss):
    biden, points, _ = _face(faces_dir, "biden/0.jpg", dlib_backend)
    obama, obama_points, obama_embedding = _face(faces_dir, "obama/1.jpg", dlib_backend)
    # Obama's face warped into Biden's face position, then blended in: t = 0 is Biden, t = 1 Obama.
    to_obama = similarity_matrices(points, obama_points[0])[0]
    h, w = biden.shape[-2:]
    full = torch.cat([to_obama, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    src = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ full[:2].T
    oh, ow = obama.shape[-2:]
    grid = torch.stack([(2 * src[..., 0] + 1) / ow - 1, (2 * src[..., 1] + 1) / oh - 1], -1)[None].float()
    warped = torch.nn.functional.grid_sample(obama, grid, align_corners=False)
    with torch.no_grad():
        losses = [float(id_loss((1 - t) * biden + t * warped, points, obama_embedding)[0]) for t in (0.0, 0.5, 1.0)]
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.1 < losses[0]  # dlib scale: same person cos > 0.9, strangers < 0.9


def test_identity_loss_gradient_trains_what_made_the_image(faces_dir, dlib_backend, id_loss, one_thread):
    biden, points, _ = _face(faces_dir, "biden/0.jpg", dlib_backend)
    *_, reference = _face(faces_dir, "obama/0.jpg", dlib_backend)
    delta = torch.nn.Parameter(torch.zeros_like(biden))  # what "trains": an additive image correction
    assert not any(p.requires_grad for p in id_loss.parameters())  # the embedder stays frozen
    optimizer = torch.optim.Adam([delta], lr=0.02)
    history = []
    for _ in range(6):
        loss = id_loss((biden + delta).clamp(-1, 1), points, reference).mean()
        optimizer.zero_grad()
        loss.backward()
        assert delta.grad is not None and float(delta.grad.abs().sum()) > 0
        optimizer.step()
        history.append(float(loss.detach()))
    assert history[-1] < history[0] - 0.02
    # Only the face region receives gradient: a far corner of the image gets none.
    assert float(delta.grad[..., :5, :5].abs().sum()) == 0.0


def test_no_usable_face_region_is_an_error(id_loss):
    image = torch.zeros(2, 3, 64, 64)
    good = torch.tensor([[20.0, 25], [44, 25], [32, 35], [23, 46], [41, 46]])
    outside = good + torch.tensor([50.0, 0.0])
    with pytest.raises(FaceRegionError, match="sample 1.*outside"):
        id_loss(image, torch.stack([good, outside]), torch.ones(128))
    tiny = good * 0.1
    with pytest.raises(FaceRegionError, match="too small"):
        id_loss(image[:1], tiny[None], torch.ones(128))
    with pytest.raises(FaceRegionError, match="not finite"):
        id_loss(image[:1], torch.full((1, 5, 2), float("nan")), torch.ones(128))
    with pytest.raises(ValueError, match="unknown identity loss"):
        build_identity_loss("facenet")
    with pytest.raises(ValueError, match="weights="):
        build_identity_loss("arcface")


def test_training_identity_term_reaches_the_trainable_token(tiny_models, astronaut_path, one_thread, tmp_path):
    """Textual Inversion on the tiny model: the identity term on the decoded predicted x0 sends gradient to the
    new token's embedding row, and the points follow flips and shrink-and-paste augmentation."""
    from diffusers import DDPMScheduler

    from likeness.methods import get_method
    from likeness.methods.preparation import Augmentation, photo_batches, prepare_identities
    from likeness.methods.training import build_identity_term, diffusion_loss, step_generator
    from likeness.models import load_pipeline

    method = get_method("textual-inversion")
    pipe = load_pipeline("likeness/tiny-sd")
    prepared, _ = prepare_identities([("astro", [astronaut_path])], size=64, framing="face")
    photo = prepared["astro"][0]
    assert photo.landmarks is not None and photo.landmarks.shape == (5, 2)
    # Points in the crop match a fresh detection on the crop (face framing: the face fills half of it).
    setup = method.setup(pipe, ["astro"], {**method.defaults, "out_dir": tmp_path})
    make_batch = photo_batches(prepared, {"astro": setup.identities["astro"].subject}, batch_size=2,
                               aug=Augmentation(flip=True))
    term = build_identity_term(prepared, weight=1.0)
    assert set(term.references) == {"astro"}
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    row = setup.trainable["clip_l.token_embedding"]
    grads = []
    for identity in (None, term):
        row.grad = None
        batch = make_batch(0, 0, np.random.default_rng(3))
        assert batch.points.shape == (2, 5, 2) and batch.identities == ["astro", "astro"]
        loss = diffusion_loss(pipe, scheduler, batch, step_generator(0, 0, 0, 1), identity=identity)
        loss.backward()
        grads.append(row.grad.detach().clone())
    assert term.used == 2 and term.skipped == 0 and len(term.values) == 1
    assert float((grads[1] - grads[0]).abs().sum()) > 0  # the identity term adds gradient to the token row


def test_augmented_points_follow_the_face(astronaut_path):
    from likeness.methods.preparation import Augmentation, augment, prepare_identities

    prepared, _ = prepare_identities([("astro", [astronaut_path])], size=128, framing="face")
    photo = prepared["astro"][0]
    rng = np.random.default_rng(0)
    for _ in range(6):
        *_, face_mask, _, points = augment(photo, rng, Augmentation(flip=True, scale_range=(0.5, 1.0)), with_points=True)
        # Eye on the image's left stays first, and every point lies on the (moved) face mask's rows/columns.
        assert points[0, 0] < points[1, 0]
        ys, xs = np.nonzero(face_mask)
        assert xs.min() - 2 <= points[:, 0].min() and points[:, 0].max() <= xs.max() + 2
        assert ys.min() - 2 <= points[:, 1].min() and points[:, 1].max() <= ys.max() + 2


@pytest.mark.parametrize("method", ["textual-inversion", "dreambooth-lora", "celeb-basis"])
def test_methods_accept_id_loss_weight(method, tiny_models, astronaut_path, one_thread, tmp_path):
    """``--option id_loss_weight=...`` runs end to end and the manifest says how the identity term went."""
    from likeness.methods import personalize
    from likeness.methods.base import Manifest

    extra = {"gradient_accumulation_steps": 1} if method == "textual-inversion" else {}
    if method == "celeb-basis":
        extra = {"scale_range": (0.5, 1.0)}
    out = personalize(method, {"astro": [astronaut_path]}, tmp_path / "artifact", "likeness/tiny-sd", progress=False,
                      max_steps=1, id_loss_weight=0.5, **extra)
    manifest = Manifest.load(out)
    assert manifest.config["options"]["id_loss_weight"] == 0.5
    assert any(n.startswith("identity loss (dlib-r128, weight 0.5)") for n in manifest.config["notes"])
    with pytest.raises(ValueError, match="id_loss_weight must be a positive"):
        personalize(method, {"astro": [astronaut_path]}, tmp_path / "bad", "likeness/tiny-sd", progress=False,
                    max_steps=1, id_loss_weight=-1, **extra)
