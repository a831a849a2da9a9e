"""Where a portrait dataset keeps a photo's masks (CelebAMask-HQ, Stellar): file lookup only.

Reading the masks is :mod:`likeness.segmentation.celebamask`'s job; this lives in ``data`` so that
dataset loaders (:mod:`likeness.data.portraits`) can skip photos without masks without importing
the segmentation layer.
"""

from __future__ import annotations

from pathlib import Path

ANNO_FOLDER = "CelebAMask-HQ-mask-anno"


def part_files(photo: Path) -> list[Path]:
    """The CelebAMask-HQ-mask-anno part files of ``CelebA-HQ-img/<idx>.jpg`` (empty when there are none)."""
    if not photo.stem.isdigit():
        return []
    idx = int(photo.stem)
    for root in (photo.parent.parent, photo.parent):
        folder = root / ANNO_FOLDER / str(idx // 2000)
        if folder.is_dir():
            return sorted(folder.glob(f"{idx:05d}_*.png"))
    return []


def mask_file_for(photo: Path) -> Path | None:
    """The colour-palette label map beside ``photo`` (``<stem>_bg.png``, or ``<stem>_mask.png``), if any."""
    for suffix in ("_bg.png", "_mask.png"):
        candidate = photo.with_name(photo.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def has_masks(photo: str | Path) -> bool:
    photo = Path(photo)
    return mask_file_for(photo) is not None or bool(part_files(photo))
