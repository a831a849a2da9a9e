"""A weights folder as a user fills it, with tiny random files in the published layouts (for the discovery and demo
tests): h94/IP-Adapter's layout for the SD 1.x plus-face adapter and its image encoder, the InstantX/InstantID
repository (``ip-adapter.bin`` + ``ControlNetModel/``) for SDXL, and an InsightFace-style ArcFace pack; and a
repository's snapshot in a local hub cache as a download leaves it (:func:`hub_snapshot`)."""

from __future__ import annotations

from pathlib import Path

from likeness.testing.peer_layouts import clip_vision_encoder, identitynet, ip_adapter_state, save_published

IP_ADAPTER_FILE = "IP-Adapter/models/ip-adapter-plus-face_sd15.safetensors"
IMAGE_ENCODER = "IP-Adapter/models/image_encoder"
INSTANTID = "InstantID"
ARCFACE_PACK = "antelopev2"


def hub_snapshot(cache: str | Path, repo: str, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """The snapshot folder of hub repository ``repo`` in the hub cache ``cache``, laid out as ``hf download`` leaves it
    (``models--<owner>--<name>/snapshots/<commit>/``, ``refs/main`` naming the commit); write the files under it."""
    folder = Path(cache) / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def write_weights_folder(root: str | Path, *, arcface: bool = True) -> Path:
    """Write the folder (see the module docstring) under ``root`` for the tiny SD 1.x and SDXL bases; returns ``root``.
    ``arcface``: also the tiny ArcFace pack (InstantID needs one)."""
    from likeness.methods.peers.common import empty_unet

    root = Path(root)
    clip_vision_encoder(root / IMAGE_ENCODER)
    save_published(ip_adapter_state(empty_unet("likeness/tiny-sd"), "resampler", embed=32, seed=1), root / IP_ADAPTER_FILE)
    # The tiny SDXL VAE halves the image: the keypoint encoder has one stride-2 step (see identitynet).
    identitynet("likeness/tiny-sdxl", root / INSTANTID / "ControlNetModel", conditioning_channels=(16, 32))
    save_published(ip_adapter_state(empty_unet("likeness/tiny-sdxl"), "resampler", embed=16, queries=16, seed=5),
                   root / INSTANTID / "ip-adapter.bin")
    if arcface:
        from likeness.testing.tiny_arcface import export_tiny_arcface

        export_tiny_arcface(root / ARCFACE_PACK)
    return root
