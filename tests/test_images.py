"""load_image: every awkward file becomes upright 8-bit RGB, or an ImageError naming the file and problem."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from likeness.data.images import ImageError, load_image


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


def _error(path, **kw) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(path, **kw)
    assert str(path) in str(info.value)  # the message names the file
    return info.value


def test_missing_file(tmp_path):
    err = _error(tmp_path / "nope.jpg")
    assert err.status == "missing" and "does not exist" in err.problem


def test_empty_and_corrupt_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert _error(empty).status == "unreadable"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    err = _error(corrupt)
    assert err.status == "unreadable" and "not a recognised image" in err.problem


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buffer, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    err = _error(truncated)
    assert err.status == "unreadable" and "decode" in err.problem


def test_grayscale_becomes_rgb(tmp_path):
    path = _save(tmp_path / "gray.png", Image.fromarray(np.full((20, 30), 77, np.uint8)))
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.asarray(img)[0, 0].tolist() == [77, 77, 77]


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half, opaque on the right
    rgba[:, 10:, 3] = 255
    img = np.asarray(load_image(_save(tmp_path / "rgba.png", Image.fromarray(rgba))))
    assert img[0, 0].tolist() == [255, 255, 255] and img[0, 15].tolist() == [255, 0, 0]


def test_16bit_is_rescaled_not_clipped(tmp_path):
    arr = np.zeros((20, 20), np.uint16)
    arr[:, :10] = 65535
    arr[:, 10:] = 32768
    img = np.asarray(load_image(_save(tmp_path / "deep.png", Image.fromarray(arr))))
    assert img[0, 0].tolist() == [255] * 3 and img[0, 15].tolist() == [128] * 3


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path / "rotated.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=100)
    img = np.asarray(load_image(path))
    assert img.shape[:2] == (40, 20)  # upright: portrait
    assert img[2, 10].mean() > 200 and img[-3, 10].mean() < 50  # the white half is now on top


def test_huge_images_load_or_are_refused_by_the_pixel_limit(tmp_path):
    path = _save(tmp_path / "wide.png", Image.new("RGB", (9000, 40), (10, 20, 30)))
    assert load_image(path).size == (9000, 40)  # > 8k px wide is fine within the pixel budget
    err = _error(path, max_pixels=9000 * 40 - 1)
    assert err.status == "too_large" and "9000x40" in err.problem


def test_tiny_image_is_too_small(tmp_path):
    err = _error(_save(tmp_path / "tiny.png", Image.new("RGB", (8, 8))))
    assert err.status == "too_small" and "8x8" in err.problem
