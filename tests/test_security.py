"""Security review findings, one test each (see docs/security.md)."""

from __future__ import annotations

import ast
import json
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from bench_helpers import one_torch_thread, small_config  # noqa: F401 (autouse fixture)
from likeness.bench.store import ResultsStore, StoreCorruptError
from likeness.data.identities import load_identities
from likeness.data.images import ImageError, load_image
from likeness.data.layout import read_generated
from likeness.data.prompts import PromptError, load_prompts

PACKAGE = Path(__file__).resolve().parents[1] / "likeness"


def _calls(name: str):
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name):
                yield path, node


def test_every_torch_load_is_weights_only_and_remote_code_is_never_trusted():
    loads = list(_calls("torch.load"))
    assert loads, "the scan must see the checkpoint loader"
    for path, node in loads:
        kw = {k.arg: k.value for k in node.keywords}
        assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, f"{path}:{node.lineno}"
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, f"{path}:{node.value.lineno}"


def test_a_sidecar_cannot_point_outside_the_dataset(tmp_path, astronaut_path):
    (tmp_path / "people" / "ann").mkdir(parents=True)
    Image.open(astronaut_path).save(tmp_path / "people" / "ann" / "0.jpg")
    secret = tmp_path / "private" / "someone.jpg"
    secret.parent.mkdir()
    Image.open(astronaut_path).save(secret)
    gen = tmp_path / "gen" / "ann"
    gen.mkdir(parents=True)
    for stem, ref in (("abs", str(secret)), ("rel", "../../private/someone.jpg")):
        Image.open(astronaut_path).resize((64, 64)).save(gen / f"{stem}.png")
        (gen / f"{stem}.json").write_text(json.dumps({"identity": "ann", "reference": ref}))
    items = read_generated(tmp_path / "gen", load_identities(tmp_path / "people"))
    assert [i.status for i in items] == ["ref_missing", "ref_missing"]
    assert all(i.reference.parent == tmp_path / "people" / "ann" for i in items)  # never the private file


def test_prompt_ids_cannot_become_paths(tmp_path):
    bad = tmp_path / "prompts_t.json"
    for prompt_id in ("../../etc/x", "a/b", "a-b", "", "x" * 65):
        bad.write_text(json.dumps([{"prompts": "{} here", "prompt_id": prompt_id or None, "detectables": []}]))
        if not prompt_id:
            assert load_prompts(bad)[0].prompt_id == "t0000"
            continue
        with pytest.raises(PromptError, match="prompt_id"):
            load_prompts(bad)


def test_manifest_keys_cannot_leave_the_artifact(tmp_path):
    from likeness.methods.base import ArtifactError, Manifest

    (tmp_path / "likeness.json").write_text(json.dumps({
        "method": "textual-inversion", "base_model": {"model_id": "x", "family": "sd1", "revision": "r"},
        "identities": {"../../outside": {"subject": "<x>", "tokens": ["<x>"], "photos": []}}}))
    with pytest.raises(ArtifactError, match="not likeness name keys"):
        Manifest.load(tmp_path)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_huge_images_are_refused_with_a_status(tmp_path):
    from likeness.faces.cache import analyze_path

    for size in ((20000, 20000), (12000, 12000)):  # over likeness's limit / over Pillow's bomb limit
        path = tmp_path / f"{size[0]}.png"
        path.write_bytes(_png_claiming(*size))
        with pytest.raises(ImageError) as err:
            load_image(path)
        assert err.value.status == "too_large" and path.name in str(err.value)
    assert analyze_path(object(), tmp_path / "20000.png").status == "too_large"  # never reaches a detector


def test_stores_are_private_and_a_corrupt_one_gives_a_way_out(tmp_path, capsys):
    from likeness.cli import main

    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        store.set_meta("x", 1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        wal = Path(f"{path}-wal")
        assert wal.exists() and stat.S_IMODE(os.stat(wal).st_mode) == 0o600
    # garbage in place of a database
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StoreCorruptError, match=r"junk\.sqlite: not a usable results database.*Move it aside"):
        ResultsStore(junk)
    # a real database with a damaged page: the integrity check on open finds it
    with ResultsStore(path) as store:
        store.set_meta("big", ["x" * 200] * 2000)
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 2 : page * 2 + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))
    Path(f"{path}-wal").unlink(missing_ok=True)
    with pytest.raises(StoreCorruptError, match=r"r\.sqlite: not a usable results database"):
        ResultsStore(path)
    people = tmp_path / "people" / "a"
    people.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(people / "0.png")
    (tmp_path / "gen").mkdir()
    assert main(["evaluate", str(tmp_path / "people"), str(tmp_path / "gen"), "--store", str(junk), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "junk.sqlite" in err and "Move it aside" in err and "Traceback" not in err


def test_report_escapes_every_user_string(tmp_path, tiny_models):
    from likeness.bench.report import build_report
    from likeness.bench.runner import builtin_identities, run_bench

    person = tmp_path / "people" / "<img src=x onerror=alert(1)>"
    person.mkdir(parents=True)
    Image.open(builtin_identities(tmp_path / "src")[0].photos[0]).save(person / "0.png")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompts": "{} <script>alert('x')</script>", "detectables": [], "categories": ["<b>cat"]}]))
    run = tmp_path / "run"
    summary = run_bench(small_config(identities=str(tmp_path / "people"), prompts=str(prompts), prompt_limit=1), run,
                        progress=False)
    assert summary.counts == {"done": 1}
    index = build_report(run)[0]
    # the first page and the identity's image page (prompts are shown there)
    page = "".join(p.read_text(encoding="utf-8") for p in [index, *sorted((index.parent / "pages").glob("*.html"))])
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>cat" not in page
