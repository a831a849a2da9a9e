"""Portrait training sets: CelebAMask-HQ layout, exclusions, counted skips."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from likeness.data.identities import DatasetError
from likeness.data.portraits import load_portraits, read_exclusions


@pytest.fixture
def celebamask_hq(tmp_path):
    root = tmp_path / "CelebAMask-HQ"
    (root / "CelebA-HQ-img").mkdir(parents=True)
    anno = root / "CelebAMask-HQ-mask-anno" / "0"
    anno.mkdir(parents=True)
    for idx in range(4):
        Image.new("RGB", (32, 32), (idx * 40, 80, 90)).save(root / "CelebA-HQ-img" / f"{idx}.jpg")
        if idx != 2:  # photo 2 has no mask
            Image.new("L", (16, 16), 255).save(anno / f"{idx:05d}_skin.png")
    (root / "CelebA-HQ-img" / "4.jpg").write_bytes(b"\xff\xd8 truncated")  # unreadable
    Image.new("L", (16, 16), 255).save(anno / "00004_skin.png")
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text(
        "5\nMale Young\n0.jpg 1 -1\n1.jpg -1 1\n2.jpg 1 1\n3.jpg -1 -1\n4.jpg 1 1\n")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx orig_idx orig_file\n0 119 000120.jpg\n1 200 000201.jpg\n2 300 000301.jpg\n3 400 000401.jpg\n4 500 000501.jpg\n")
    (root / "identity_CelebA.txt").write_text("000120.jpg 7\n000201.jpg 8\n000301.jpg 9\n000401.jpg 7\n000501.jpg 10\n")
    return root


def test_celebamask_hq_layout_with_identities_attributes_and_exclusions(celebamask_hq):
    portraits = load_portraits(celebamask_hq, require_masks=True)
    assert portraits.layout == "celebamask-hq"
    assert [p.photo.name for p in portraits.items] == ["0.jpg", "1.jpg", "3.jpg"]
    assert [p.identity for p in portraits.items] == ["7", "8", "7"]
    assert portraits.items[1].attributes == {"Male": -1, "Young": 1}
    assert portraits.skipped == {"missing_mask": 1, "unreadable": 1}
    assert portraits.examples["missing_mask"].endswith("2.jpg")
    # Identity 7 has two photos: both go; original CelebA file names work as well.
    kept = load_portraits(celebamask_hq, require_masks=True, exclude=["7"])
    assert [p.photo.name for p in kept.items] == ["1.jpg"] and kept.excluded == 2
    assert [p.photo.name for p in load_portraits(celebamask_hq, exclude="000201.jpg,9").items] == ["0.jpg", "3.jpg"]
    assert load_portraits(celebamask_hq, limit=2).summary()["photos"] == 2


def test_exclusions_from_a_stellar_folder_or_a_file(tmp_path):
    stellar = tmp_path / "STELLAR" / "000"
    stellar.mkdir(parents=True)
    (stellar / "0_attributes.json").write_text(json.dumps({"identity": 7, "original_filename": "000120.jpg"}))
    assert read_exclusions(tmp_path / "STELLAR") == {"7", "000120.jpg"}
    listing = tmp_path / "exclude.txt"
    listing.write_text("# Stellar test people\n12\n000777.jpg  # a comment\n\n")
    assert read_exclusions(listing) == {"12", "000777.jpg"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no \\*_attributes.json"):
        read_exclusions(tmp_path / "empty")


def test_folder_layout_and_unusable_sets(tmp_path):
    (tmp_path / "ann").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "ann" / "a.png")
    Image.new("L", (20, 20)).save(tmp_path / "ann" / "a_mask.png")  # a mask, not a photo
    portraits = load_portraits(tmp_path)
    assert portraits.layout == "folder" and [(p.photo.name, p.identity) for p in portraits.items] == [("a.png", "ann")]
    Image.new("RGB", (20, 20)).save(tmp_path / "ann" / "b.png")
    masked = load_portraits(tmp_path, require_masks=True)  # a.png has its a_mask.png, b.png has none
    assert [p.photo.name for p in masked.items] == ["a.png"] and masked.skipped == {"missing_mask": 1}
    (tmp_path / "ann" / "a_mask.png").unlink()
    with pytest.raises(DatasetError, match="no usable portraits .*'missing_mask': 2"):
        load_portraits(tmp_path, require_masks=True)
    with pytest.raises(DatasetError, match="does not exist"):
        load_portraits(tmp_path / "nope")
