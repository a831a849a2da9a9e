"""Any person's name works end to end: one mapping display name -> key, used by every command."""

from __future__ import annotations

import json
import sqlite3

import pytest
from PIL import Image

from bench_helpers import PLAIN, one_torch_thread, small_config  # noqa: F401 (autouse fixture)
from likeness.bench.runner import STORE_FILE, builtin_identities, run_bench
from likeness.bench.runstore import DONE
from likeness.data.names import IdentityNameError, check_unique, index_by_name, lookup, name_key

NAMES = ["Alice", "José García", "o'brien", "李雷", "Ana", "ana"]


def test_keys_are_safe_stable_and_distinct():
    keys = [name_key(n) for n in NAMES]
    assert len(set(keys)) == len(NAMES)
    for key in keys:
        assert key.isascii() and key == key.lower() and not set(key) & set("-/\\ '\".<>{}")
        assert name_key(key) == key  # a key is its own key
    assert name_key("ana") == "ana" and name_key("000") == "000" and name_key("alex_lacamoire") == "alex_lacamoire"
    assert name_key("Ana") == "ana__" + __import__("hashlib").sha256(b"Ana").hexdigest()[:10]  # pinned rule
    assert name_key("José García").startswith("jose_garcia__") and name_key("李雷").startswith("id__")
    assert name_key(" Ana ") == name_key("Ana") and name_key("Jose\u0301") == name_key("José")  # strip + NFC
    assert name_key("con") != "con" and name_key("a" * 80) != "a" * 80  # Windows device names, long names
    with pytest.raises(IdentityNameError, match="empty"):
        name_key("   ")
    with pytest.raises(IdentityNameError, match="given twice"):
        check_unique(["Ana", "Ana "])
    index = index_by_name([type("P", (), {"name": n})() for n in NAMES])
    assert all(index[n].name == n and index[name_key(n)].name == n for n in NAMES)
    assert lookup("José García", {name_key("José García"): 1}) == name_key("José García")
    assert lookup("Bob", {"alice": 1}) is None


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    photo = Image.open(builtin_identities(root / "src")[0].photos[0])
    for k, name in enumerate(NAMES):
        (root / "people" / name).mkdir(parents=True)
        (photo.rotate(k * 3) if k else photo).save(root / "people" / name / "0.png")
    return root / "people"


def test_bench_over_real_names_completes_every_item_then_resumes_and_reports(people, tmp_path, tiny_models):
    from likeness.bench.report import build_report

    run = tmp_path / "run"
    config = dict(identities=str(people), prompt_limit=2, metrics=["ips"])
    summary = run_bench(small_config(**config), run, progress=False)
    assert summary.counts == {DONE: 12}, summary.describe()
    with sqlite3.connect(run / STORE_FILE) as db:
        identities = {r[0] for r in db.execute("SELECT identity FROM items")}
        statuses = {r[0] for r in db.execute("SELECT status FROM results")}
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 12
    assert identities == set(NAMES)  # the ledger keeps the names as given
    assert statuses <= {"ok", "no_face"}  # every image found its identity and reference photo
    for name in NAMES:
        images = sorted((run / "images" / name_key(name)).glob("*.png"))
        assert len(images) == 2 and all(p.stem.startswith(name_key(name) + "-0-") for p in images)
        meta = json.loads(images[0].with_suffix(".json").read_text(encoding="utf-8"))
        assert meta["identity"] == name and meta["identity_key"] == name_key(name)
    assert run_bench(small_config(**config), run, progress=False).counts == {DONE: 12}  # resume: nothing redone
    # `likeness evaluate`'s reader finds every person again, in the canonical and the Stellar flat layout
    from likeness.data.identities import load_identities
    from likeness.data.layout import read_generated, to_stellar_flat

    dataset = load_identities(people)
    assert [i.status for i in read_generated(run / "images", dataset)] == ["ok"] * 12
    flat = to_stellar_flat(run / "images", tmp_path / "flat", dataset)
    assert len(flat) == 12 and all(p.stem.count("-") == 2 for p in flat)
    assert {(i.status, i.identity in NAMES) for i in read_generated(tmp_path / "flat", dataset)} == {("ok", True)}
    page, _ = build_report(run)
    # the first page and the image pages, one per person (named by key, titled by name)
    html = "".join(p.read_text(encoding="utf-8") for p in [page, *sorted((page.parent / "pages").glob("*.html"))])
    assert "José García" in html and "o&#x27;brien" in html and "李雷" in html
    assert html.count("class='gen' title=") == 12  # every image linked, none missing
    assert html.count("{}") == 12  # every sidecar found: each image shows its prompt template


def test_textual_inversion_tokens_for_names_that_differ_only_in_case(people, tmp_path, tiny_models, one_thread):
    """Ana and ana in one artifact: two tokens, two embedding files, each prompt finds its person."""
    from likeness.methods import load_artifact, personalize
    from likeness.methods.base import write_images
    from likeness.data.prompts import Prompt

    photos = {n: [people / n / "0.png"] for n in ("Ana", "ana", "李雷")}
    out = personalize("textual-inversion", photos, tmp_path / "art", "likeness/tiny-sd", max_steps=1,
                      gradient_accumulation_steps=1, progress=False)
    manifest = json.loads((out / "likeness.json").read_text(encoding="utf-8"))
    assert {k: v["display"] for k, v in manifest["identities"].items()} == {name_key(n): n for n in photos}
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(f"{name_key(n)}.safetensors" for n in photos)
    person = load_artifact(out)
    assert person.prompt("{} at the beach", "Ana") == f"<{name_key('Ana')}> at the beach"
    assert person.prompt("{} at the beach", "ana") == "<ana> at the beach"
    ids = person.pipe.tokenizer(person.prompt("{} x", "李雷")).input_ids
    assert person.pipe.tokenizer.convert_tokens_to_ids(f"<{name_key('李雷')}>") in ids  # one token, not split
    with pytest.raises(KeyError, match="'Bob' is not in .* it holds: .*'José|'Ana'"):
        person.prompt("{} x", "Bob")
    written = write_images(person, [Prompt("u0", "{} on a bike")], [1], tmp_path / "gen", identities=["李雷"],
                           progress=False, num_inference_steps=1, height=32, width=32)
    assert [p.parent.name for p in written] == [name_key("李雷")]
    assert json.loads(written[0].with_suffix(".json").read_text(encoding="utf-8"))["identity"] == "李雷"
