"""Compositing, repainting on tiny inpainting pipelines, the dataset on disk, resume, review, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from likeness.compose import (
    ComposedDataset,
    DatasetError,
    LLMPlanner,
    Repainter,
    compose_dataset,
    composite,
    concept_from_folder,
    repaint_mask,
)
from likeness.compose.composite import paste_back
from likeness.compose.dataset import ENTRIES_FILE, rejections_from_file
from likeness.compose.layout import Box, Layout

pytestmark = pytest.mark.usefixtures("one_thread")

COLORS = {"mochi": (200, 40, 40), "kettle": (40, 200, 40), "anna": (40, 40, 200)}


def make_concepts(root, shapes=None):
    shapes = shapes or {"mochi": ("dog", (60, 40)), "kettle": ("teapot", (30, 44)), "anna": ("person", (28, 70))}
    concepts = []
    for name, (noun, (w, h)) in shapes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(2):
            img = Image.new("RGBA", (90, 90), (0, 0, 0, 0))
            ImageDraw.Draw(img).rectangle((45 - w // 2, 45 - h // 2, 45 - w // 2 + w - 1, 45 - h // 2 + h - 1),
                                          fill=COLORS.get(name, (9, 9, 9)) + (255,))
            img.save(folder / f"{k}.png")
        (folder / "class.txt").write_text(noun)
        concepts.append(concept_from_folder(folder))
    return concepts


@pytest.fixture(scope="module")
def repainter(tiny_models):
    return Repainter("likeness/tiny-sd-inpaint", num_inference_steps=2)


def test_composite_keeps_aspect_and_puts_pixels_in_the_boxes():
    cut_a = Image.new("RGBA", (40, 20), (255, 0, 0, 255))  # aspect 2
    cut_b = Image.new("RGBA", (10, 30), (0, 0, 255, 255))  # aspect 1/3
    layout = Layout((128, 96), {"a": Box(10, 10, 50, 30), "b": Box(80, 20, 120, 80)}, "bg")  # b's box is not 1/3
    comp = composite({"a": cut_a, "b": cut_b}, layout, fill=(0, 255, 0))
    arr = np.asarray(comp.image)
    assert comp.boxes["a"] == Box(10, 10, 50, 30)
    assert comp.boxes["b"] == Box(90, 20, 110, 80)  # fitted inside, centred, aspect 20/60 kept
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        ys, xs = np.nonzero(comp.masks[name])
        box = comp.boxes[name]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (box.x0, box.y0, box.x1, box.y1)
        assert (arr[comp.masks[name]] == colour).all()
    assert (arr[~comp.objects] == (0, 255, 0)).all()


def test_repaint_mask_is_soft_at_the_edges_and_keeps_object_cores():
    objects = np.zeros((64, 64), dtype=bool)
    objects[16:48, 16:48] = True
    mask = np.asarray(repaint_mask(objects, edge=4, blur=2.0))
    assert mask[32, 32] == 0 and mask[2, 2] == 255
    edge_values = mask[32, 14:22]
    assert 0 < edge_values.min() < 255 and len(set(edge_values.tolist())) > 3  # a ramp, not a step


@pytest.mark.parametrize("model", ["likeness/tiny-sd-inpaint", "likeness/tiny-sdxl-inpaint"])
def test_repainting_on_tiny_inpainting_pipelines(tiny_models, model):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    rep = Repainter(model, num_inference_steps=2)
    expected = StableDiffusionXLInpaintPipeline if "sdxl" in model else StableDiffusionInpaintPipeline
    assert isinstance(rep.pipe, expected) and rep.pipe.unet.config.in_channels == 9
    image = Image.new("RGB", (64, 64), (127, 127, 127))
    image.paste((255, 0, 0), (16, 16, 48, 48))
    objects = np.zeros((64, 64), dtype=bool)
    objects[16:48, 16:48] = True
    paint = repaint_mask(objects, edge=2, blur=1.0)
    out = rep.repaint(image, paint, "a photo of <mochi> dog in a garden", seed=3)
    again = rep.repaint(image, paint, "a photo of <mochi> dog in a garden", seed=3)
    assert out.size == (64, 64) and np.array_equal(np.asarray(out), np.asarray(again))
    changed = np.abs(np.asarray(out, dtype=int) - np.asarray(image, dtype=int)).sum(-1)
    assert changed[~objects].mean() > 5  # the background was repainted (random weights: noise, but changed)
    kept = np.asarray(paste_back(out, image, paint))
    assert (kept[24:40, 24:40] == (255, 0, 0)).all()  # object cores keep their exact pixels
    background = rep.background("a sunny garden", (64, 64), seed=1)
    assert background.size == (64, 64)


def test_dataset_round_trip(tmp_path, repainter):
    concepts = make_concepts(tmp_path / "concepts")
    result = compose_dataset(concepts, tmp_path / "ds", 3, repainter=repainter, canvas=(64, 64), seed=5, progress=False)
    assert result.written == ["c000000", "c000001", "c000002"] and not result.skipped
    ds = ComposedDataset(tmp_path / "ds")
    assert sorted(ds.concepts) == ["anna", "kettle", "mochi"]
    assert all(p["status"] == "ok" and p["quality"]["score"] == 1.0 for c in ds.concepts.values() for p in c["photos"])
    entries = ds.entries()
    assert [e.id for e in entries] == result.written
    for e in entries:
        r = e.record
        assert 2 <= len(r["concepts"]) <= 3 and e.image().size == (64, 64)
        assert r["repaint"]["strength"] == 0.9 and r["repaint"]["model"] == "likeness/tiny-sd-inpaint"
        assert r["caption"].startswith("<gen4gen> ") and r["background"] in r["caption"]
        for name in r["concepts"]:
            assert r["caption"].count(f"<{name}> {r['class_nouns'][name]}") == 2  # repeated concept tokens
            mask = e.mask(name)
            x0, y0, x1, y1 = r["boxes"][name]
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            with Image.open(tmp_path / "ds" / r["composite"]) as comp:
                assert (np.asarray(comp.convert("RGB"))[mask] == COLORS[name]).all()
            assert 0.03 <= (x1 - x0) * (y1 - y0) / 64 ** 2 <= 0.25


def _snapshot(folder):
    records = [json.loads(line) for line in (folder / ENTRIES_FILE).read_text().splitlines()]
    images = {r["id"]: (folder / r["image"]).read_bytes() for r in records}
    return records, images


def test_a_killed_compose_run_resumes_exactly(tmp_path, repainter):
    concepts = make_concepts(tmp_path / "concepts")
    kwargs = dict(repainter=repainter, canvas=(64, 64), seed=1, progress=False)
    compose_dataset(concepts, tmp_path / "straight", 4, **kwargs)

    class Killed(Exception):
        pass

    def kill_after_two(record):
        if record["index"] == 1:
            raise Killed

    with pytest.raises(Killed):
        compose_dataset(concepts, tmp_path / "resumed", 4, on_entry=kill_after_two, **kwargs)
    # What a kill in the middle of the next entry leaves behind: a torn line and half-written files.
    with open(tmp_path / "resumed" / ENTRIES_FILE, "ab") as f:
        f.write(b'{"id": "c000002", "index": 2, "ima')
    (tmp_path / "resumed" / "images" / ".c000002.tmp.png").write_bytes(b"half")
    assert len(ComposedDataset(tmp_path / "resumed").entries()) == 2  # the torn line is not an entry

    result = compose_dataset(concepts, tmp_path / "resumed", 4, **kwargs)
    assert result.existing == ["c000000", "c000001"] and result.written == ["c000002", "c000003"]
    assert _snapshot(tmp_path / "resumed") == _snapshot(tmp_path / "straight")
    assert not list((tmp_path / "resumed").rglob(".*.tmp*"))
    again = compose_dataset(concepts, tmp_path / "resumed", 4, **kwargs)
    assert again.written == [] and len(ComposedDataset(tmp_path / "resumed").entries()) == 4  # no duplicates
    with pytest.raises(DatasetError, match="another configuration"):
        compose_dataset(concepts, tmp_path / "resumed", 4, repainter=repainter, canvas=(64, 64), seed=2, progress=False)


def test_review_rejections_are_recorded_and_escaped(tmp_path):
    concepts = make_concepts(tmp_path / "concepts", {"mochi": ("<b>dog</b>", (40, 40)), "kettle": ("teapot", (30, 30))})
    compose_dataset(concepts, tmp_path / "ds", 3, canvas=(128, 128), progress=False)
    ds = ComposedDataset(tmp_path / "ds")
    sheet = ds.contact_sheet().read_text()
    assert sheet.count('class="card"') == 3 and "<b>dog</b>" not in sheet and "&lt;b&gt;dog&lt;/b&gt;" in sheet
    (tmp_path / "rejections.json").write_text(json.dumps({"rejected": ["c000001"]}))
    ds.reject(rejections_from_file(tmp_path / "rejections.json"), reason="blurry")
    assert [e.id for e in ds.entries()] == ["c000000", "c000002"]
    assert ds.rejected() == {"c000001": "blurry"} and len(ds.entries(include_rejected=True)) == 3
    assert "rejected" in ds.contact_sheet().read_text().split("c000001")[0].rsplit("<figure", 1)[1]
    ds.reject(["c000001"], undo=True)
    assert len(ds.entries()) == 3
    with pytest.raises(DatasetError, match="c999999"):
        ds.reject(["c999999"])


def test_bad_concept_photos_and_impossible_layouts_are_skipped_with_reasons(tmp_path):
    concepts = make_concepts(tmp_path / "concepts", {"mochi": ("dog", (40, 40)), "kettle": ("teapot", (30, 30))})
    pole = tmp_path / "concepts" / "pole"
    pole.mkdir()
    strip = Image.new("RGBA", (30, 720), (0, 0, 0, 0))
    strip.paste((90, 90, 90, 255), (5, 10, 25, 710))  # 20 x 700: aspect 0.029
    strip.save(pole / "0.png")
    concepts.append(concept_from_folder(pole, class_noun="pole"))
    (tmp_path / "concepts" / "mochi" / "1.png").write_bytes(b"not an image")  # one corrupt photo of mochi
    ghost = tmp_path / "concepts" / "ghost"
    ghost.mkdir()
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(ghost / "0.png")  # fully transparent: no foreground
    concepts.append(concept_from_folder(ghost, class_noun="ghost"))
    result = compose_dataset(concepts, tmp_path / "ds", 6, canvas=(128, 128), min_concepts=2, max_concepts=3,
                             progress=False)
    ds = ComposedDataset(tmp_path / "ds")
    meta = ds.meta["concepts"]
    assert meta["ghost"]["status"] == "skipped" and meta["ghost"]["photos"][0]["status"] == "no_foreground"
    assert [p["status"] for p in meta["mochi"]["photos"]] == ["ok", "unreadable"]
    assert "pole" in meta and meta["pole"]["status"] == "ok"
    # The 20x700 pole cannot fill 3% of a square canvas inside it: every composition with it is skipped, with why.
    skipped = ds.skipped()
    assert skipped and all("pole" in s["concepts"] and s["status"] == "cannot_fit" for s in skipped)
    assert len(ds.entries()) + len(skipped) == 6 and {s["id"] for s in skipped} == {s["id"] for s in result.skipped}
    assert all("pole" not in e.record["concepts"] and "ghost" not in e.record["concepts"] for e in ds.entries())
    with pytest.raises(ValueError, match="usable concept"):
        compose_dataset(concepts[:1] + concepts[-1:], tmp_path / "ds2", 2, canvas=(128, 128), progress=False)


def test_unreachable_llm_falls_back_or_skips(tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    concepts = make_concepts(tmp_path / "concepts", {"mochi": ("dog", (40, 40)), "kettle": ("teapot", (30, 30))})
    llm = LLMPlanner(f"http://127.0.0.1:{port}/v1", "fake", timeout=0.3, retries=1)
    compose_dataset(concepts, tmp_path / "fallback", 1, planner=llm, canvas=(128, 128), progress=False)
    entry = ComposedDataset(tmp_path / "fallback").entries()[0].record
    assert entry["planner"] == "offline" and "unreachable" in entry["notes"][0]
    compose_dataset(concepts, tmp_path / "strict", 1, planner=llm, fallback_planner=False, canvas=(128, 128), progress=False)
    strict = ComposedDataset(tmp_path / "strict")
    assert not strict.entries() and strict.skipped()[0]["status"] == "unreachable"
