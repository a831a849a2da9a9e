"""Person/face masks: the segmenter interface, its backends and what bad masks do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stellarnet_helpers import build_tiny_segformer, colour_mask

from likeness.faces.base import Face
from likeness.segmentation import (
    SEGMENTERS,
    MaskError,
    MaskMissingError,
    NoPersonError,
    check_mask,
    get_segmenter,
)
from likeness.segmentation.celebamask import LABELS, PALETTE, read_label_map
from likeness.segmentation.heuristic import heuristic_masks
from likeness.segmentation.transformers_backend import SegmentationModelError


def test_registry_lists_the_backends():
    assert {"auto", "celebamask", "heuristic", "transformers"} <= set(SEGMENTERS.names())
    with pytest.raises(KeyError, match="unknown segmenter 'nope'"):
        get_segmenter("nope")


def test_heuristic_ellipses_follow_the_face_box_and_the_eye_line():
    face = Face(box=(40, 40, 60, 60), score=1.0)  # 20 px face, centre (50, 50)
    masks = heuristic_masks((100, 120), face)
    ys, xs = np.nonzero(masks.face)
    # Face ellipse: half-width 10, from 50 - 1.35 * 10 = 36.5 to 60 vertically.
    assert xs.min() == pytest.approx(40, abs=1) and xs.max() == pytest.approx(60, abs=1)
    assert ys.min() == pytest.approx(36.5, abs=1) and ys.max() == pytest.approx(60, abs=1)
    assert masks.person.shape == (120, 100) and masks.person.sum() > 4 * masks.face.sum()
    assert np.all(masks.person[masks.face > 0] == 1)
    # Eyes on a 90-degree line: the shoulders move to the side, not below the chin.
    tilted = Face(box=(40, 40, 60, 60), score=1.0, landmarks=np.array([[50, 45], [50, 55], [0, 0], [0, 0], [0, 0]]))
    sideways = heuristic_masks((120, 120), tilted)
    below, left = sideways.person[85:, 40:60].sum(), sideways.person[40:60, :20].sum()
    assert left > 100 and below < left


def test_celebamask_colour_mask_is_resized_and_split_into_person_and_face(tmp_path):
    photo = tmp_path / "0.jpg"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(photo)
    mask = colour_mask(32)
    mask.save(tmp_path / "0_bg.png")
    masks = get_segmenter("celebamask").segment(Image.open(photo), path=photo)
    assert masks.source == "celebamask:0_bg.png" and masks.person.shape == (64, 64)
    labels = read_label_map(tmp_path / "0_bg.png")
    # Hand check at the mask's own resolution: person = every labelled pixel, face = skin + nose.
    rgb = np.asarray(mask).astype(int)
    background = np.all(rgb == 0, axis=-1)
    assert np.array_equal(labels > 0, ~background)
    big = np.kron(~background, np.ones((2, 2), dtype=bool))  # nearest x2 upscale
    assert np.array_equal(masks.person > 0, big)
    skin_or_nose = np.isin(labels, [LABELS.index("skin"), LABELS.index("nose")])
    assert np.array_equal(masks.face > 0, np.kron(skin_or_nose, np.ones((2, 2), dtype=bool)))


def test_palette_index_and_binary_masks_and_part_files(tmp_path):
    ids = np.zeros((16, 16), np.uint8)
    ids[4:12, 4:12] = LABELS.index("skin")
    ids[0:4, :] = LABELS.index("hair")
    indexed = Image.fromarray(ids, mode="L").convert("P")
    indexed.save(tmp_path / "a_bg.png")
    assert np.array_equal(read_label_map(tmp_path / "a_bg.png"), ids)
    Image.fromarray(((ids > 0) * 255).astype(np.uint8)).save(tmp_path / "b_bg.png")  # 0/255 binary person mask
    assert np.array_equal(read_label_map(tmp_path / "b_bg.png") > 0, ids > 0)

    # CelebAMask-HQ-mask-anno part files for CelebA-HQ-img/3.jpg.
    (tmp_path / "hq" / "CelebA-HQ-img").mkdir(parents=True)
    anno = tmp_path / "hq" / "CelebAMask-HQ-mask-anno" / "0"
    anno.mkdir(parents=True)
    photo = tmp_path / "hq" / "CelebA-HQ-img" / "3.jpg"
    Image.new("RGB", (32, 32)).save(photo)
    Image.fromarray(((ids == LABELS.index("skin")) * 255).astype(np.uint8)).save(anno / "00003_skin.png")
    Image.fromarray(((ids == LABELS.index("hair")) * 255).astype(np.uint8)).save(anno / "00003_hair.png")
    masks = get_segmenter("celebamask").segment(Image.open(photo), path=photo)
    assert masks.person.shape == (32, 32) and masks.person.sum() == (ids > 0).sum() * 4
    assert masks.face.sum() == (ids == LABELS.index("skin")).sum() * 4
    assert "CelebAMask-HQ-mask-anno/0/00003_*" in masks.source


def test_bad_dataset_masks_are_clear_errors(tmp_path):
    seg = get_segmenter("celebamask")
    photo = tmp_path / "0.jpg"
    Image.new("RGB", (64, 64)).save(photo)
    with pytest.raises(MaskMissingError, match="0.jpg: no CelebAMask-HQ mask"):
        seg.segment(Image.open(photo), path=photo)
    colour_mask(32).resize((32, 16), Image.Resampling.NEAREST).save(tmp_path / "0_bg.png")
    with pytest.raises(MaskError, match=r"0_bg.png: mask is 32x16 px but the photo is 64x64 px") as info:
        seg.segment(Image.open(photo), path=photo)
    assert info.value.status == "mask_size"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "0_bg.png")  # a photo, not a mask
    with pytest.raises(MaskError, match="not CelebAMask-HQ label colours"):
        seg.segment(Image.open(photo), path=photo)
    (tmp_path / "0_bg.png").write_bytes(b"garbage")
    with pytest.raises(MaskError, match="cannot read mask image"):
        seg.segment(Image.open(photo), path=photo)
    Image.fromarray(np.full((64, 64), 77, np.uint8)).save(tmp_path / "0_bg.png")
    with pytest.raises(MaskError, match="not CelebAMask-HQ label ids"):
        seg.segment(Image.open(photo), path=photo)


def test_check_mask_refuses_wrong_size_and_type():
    good = np.zeros((8, 10), np.uint8)
    good[2:4, 3:6] = 255
    assert check_mask(good, (10, 8), "m").sum() == 6
    assert check_mask(good.astype(bool), (10, 8), "m").sum() == 6
    with pytest.raises(MaskError, match="mask is 10x8 px but the photo is 8x10 px"):
        check_mask(good, (8, 10), "m.png")
    with pytest.raises(MaskError, match="expected .height, width."):
        check_mask(np.zeros((8, 10, 3)), (10, 8), "m")
    with pytest.raises(MaskError, match="lie in \\[0, 1\\]"):
        check_mask(np.full((8, 10), 2.0), (10, 8), "m")
    with pytest.raises(MaskError, match="mode RGB"):
        check_mask(Image.new("RGB", (10, 8)), (10, 8), "m")
    with pytest.raises(MaskError, match="not list"):
        check_mask([[0, 1]], (2, 1), "m")


def test_auto_uses_dataset_masks_when_present_else_the_heuristic(tmp_path, astronaut_path):
    from likeness.methods.preparation import prepare_photo

    plain = prepare_photo(astronaut_path, size=64)
    assert plain.mask_source == "heuristic"
    photo = tmp_path / "astro.jpg"
    photo.write_bytes(astronaut_path.read_bytes())
    ids = np.zeros((256, 256), np.uint8)
    ids[:, :128] = LABELS.index("skin")  # left half of the photo is "face"
    Image.fromarray(PALETTE[ids].astype(np.uint8)).save(tmp_path / "astro_bg.png")
    masked = prepare_photo(photo, size=64)
    assert masked.mask_source == "celebamask:astro_bg.png"
    assert not np.array_equal(masked.person_mask, plain.person_mask)
    assert np.array_equal(masked.person_mask, masked.face_mask)  # only skin is labelled
    assert 0 < masked.person_mask.mean() < 1  # warped with the crop: part of the crop is the left half


@pytest.fixture(scope="module")
def segformer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    return {
        "random": build_tiny_segformer(root / "random"),
        "hair": build_tiny_segformer(root / "hair", bias=[0.0, 0.0, 5.0, 0.0]),
        "skin": build_tiny_segformer(root / "skin", bias=[0.0, 5.0, 0.0, 0.0]),
        "nobody": build_tiny_segformer(root / "nobody", bias=[5.0, 0.0, 0.0, 0.0]),
        "unlabelled": build_tiny_segformer(root / "unl", labels=("a", "b", "c")),
        "scene": build_tiny_segformer(root / "scene", labels=("wall", "person", "tree"), bias=[0.0, 5.0, 0.0]),
    }


def test_transformers_backend_reads_labels_from_the_model(segformer_dirs, one_thread):
    image = Image.new("RGB", (48, 40), (128, 100, 90))
    hair = get_segmenter(f"transformers:{segformer_dirs['hair']}").segment(image)
    assert hair.person.shape == (40, 48) and hair.person.min() == 1 and hair.face.max() == 0  # hair: person, not face
    skin = get_segmenter("transformers", model=str(segformer_dirs["skin"]))
    masks = skin.segment_person(image)
    assert masks.person.min() == 1 and masks.face.min() == 1
    assert skin.describe()["person_labels"] == ["skin", "hair", "cloth"] and skin.describe()["face_labels"] == ["skin"]
    assert masks.source == f"transformers:{segformer_dirs['skin']}"
    scene = get_segmenter(str(segformer_dirs["scene"]))  # a bare folder path means the transformers backend
    assert scene.describe()["person_labels"] == ["person"] and scene.segment(image).person.min() == 1
    with pytest.raises(NoPersonError, match="no person found"):
        get_segmenter(f"transformers:{segformer_dirs['nobody']}").segment_person(image, path="x.jpg")


def test_transformers_backend_equals_the_models_own_argmax(segformer_dirs, one_thread):
    from transformers import SegformerForSemanticSegmentation

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    seg = get_segmenter(f"transformers:{segformer_dirs['random']}")
    labels = seg.label_map(image)
    # By hand: normalise as the processor says, run the model, upsample the logits bilinearly, argmax.
    model = SegformerForSemanticSegmentation.from_pretrained(segformer_dirs["random"]).eval()
    x = torch.from_numpy(np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0)
    x = ((x - torch.tensor(seg.processor.image_mean)) / torch.tensor(seg.processor.image_std)).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    expected = torch.nn.functional.interpolate(logits, size=(40, 48), mode="bilinear", align_corners=False).argmax(1)[0]
    assert (labels == expected.numpy()).mean() > 0.98  # resampling filters differ at a few boundary pixels
    masks = seg.segment(image)
    assert np.array_equal(masks.person > 0, labels != 0)
    assert np.array_equal(masks.face > 0, labels == 1)


def test_transformers_backend_label_errors(segformer_dirs, tmp_path):
    with pytest.raises(SegmentationModelError, match="cannot tell which labels are a person"):
        get_segmenter(f"transformers:{segformer_dirs['unlabelled']}")
    with pytest.raises(SegmentationModelError, match="'torso' is not among the model's labels"):
        get_segmenter("transformers", model=str(segformer_dirs["random"]), person_labels=["torso"])
    assert get_segmenter("transformers", model=str(segformer_dirs["unlabelled"]), person_labels=[1, "c"]).person_ids == [1, 2]
    with pytest.raises(SegmentationModelError, match="could not be loaded"):
        get_segmenter("transformers", model=str(tmp_path / "missing-model"))


def test_every_trained_artifact_names_the_masks_it_used(ti_artifact, astronaut_path):
    import json

    masks = json.loads((ti_artifact / "likeness.json").read_text())["config"]["masks"]
    assert masks["segmenter"] == "auto" and [b["segmenter"] for b in masks["chain"]] == ["celebamask", "heuristic"]
    # keyed by file name: artifacts hold no local paths (issue 8)
    assert masks["sources"] == {astronaut_path.name: "heuristic"}


def test_a_backend_returning_masks_of_the_wrong_size_is_caught():
    from likeness.segmentation import Masks, Segmenter

    class Broken(Segmenter):
        name = "broken"

        def segment(self, image, *, face=None, path=None):
            return Masks(np.ones((10, 10), np.float32), np.zeros((10, 10), np.float32), "broken")

    with pytest.raises(MaskError, match="broken mask of p.jpg: mask is 10x10 px but the photo is 20x12 px"):
        Broken().segment_person(Image.new("RGB", (20, 12)), path="p.jpg")
    assert Broken().segment_person(Image.new("RGB", (10, 10))).person.sum() == 100
