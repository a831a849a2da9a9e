"""The open prompt set and the Stellar prompt-file loader."""

import json

import pytest

from likeness.data.prompts import (
    CATEGORIES,
    PromptError,
    build_open_prompts,
    load_prompts,
    open_prompts,
    prompts_digest,
    select_prompts,
)


def test_open_set_is_large_varied_and_well_formed():
    prompts = open_prompts()
    assert len(prompts) >= 1000
    assert [p.prompt_id for p in prompts[:3]] == ["t0000", "t0001", "t0002"]
    assert len({p.prompt_id for p in prompts}) == len(prompts)
    assert len({p.prompts for p in prompts}) == len(prompts)
    used = {c for p in prompts for c in p.categories}
    assert used == set(CATEGORIES) and len(used) >= 9
    for p in prompts:
        assert p.prompts.count("{}") == 1, p
        assert p.detectables and p.relations
        for subject, predicate, obj in p.relations:
            # every relation links entities the prompt names: the person or its detectables
            assert subject in ("person", *p.detectables) and obj in p.detectables, p
            assert predicate


def test_shipped_file_matches_the_generator():
    """The JSON file users read is exactly what the deterministic generator builds."""
    built = build_open_prompts()
    assert [p.to_dict() for p in built] == [p.to_dict() for p in open_prompts()]


def test_small_subset_covers_many_templates():
    first = select_prompts(open_prompts(), limit=18)
    assert len({p.prompts.split()[1] for p in first}) >= 6  # eating, juggling, riding, playing, ...
    assert len({c for p in first for c in p.categories}) == len(CATEGORIES)


def test_fill_and_select():
    p = open_prompts()[0]
    assert p.fill("a photo of sks person").startswith("a photo of sks person ")
    assert select_prompts(open_prompts(), ids=["t0005", "t0001"])[1].prompt_id == "t0001"
    food = select_prompts(open_prompts(), categories=["food"], limit=5)
    assert all("food" in q.categories for q in food)
    with pytest.raises(PromptError, match="unknown prompt ids: t9999"):
        select_prompts(open_prompts(), ids=["t9999"])


def test_official_stellar_files_load(tmp_path):
    t = tmp_path / "prompts_t.json"
    t.write_text(json.dumps([
        {"prompts": "{} sleeping on a couch on a planet", "detectables": ["couch", "planet"], "categories": ["space"]},
        {"prompts": "{} juggling apples in a library", "detectables": ["apple", "library"], "categories": ["food"]},
    ]))
    h = tmp_path / "prompts_h.json"
    h.write_text(json.dumps(["{} reading the news at dawn", {"prompts": "{} laughing in the rain"}]))
    pt, ph = load_prompts(t), load_prompts(h)
    assert [p.prompt_id for p in pt] == ["t0000", "t0001"] and pt[0].detectables == ("couch", "planet")
    assert [p.prompt_id for p in ph] == ["h0000", "h0001"] and ph[1].detectables == ()
    # column form: {"prompts": [...], "detectables": [[...], ...]}
    col = tmp_path / "cols_t.json"
    col.write_text(json.dumps({"prompts": ["{} a", "{} b"], "detectables": [["x"], ["y"]]}))
    assert load_prompts(col)[1].detectables == ("y",)
    assert prompts_digest(pt) != prompts_digest(ph)


def test_bad_prompt_files_name_the_file_and_entry(tmp_path):
    bad = tmp_path / "prompts_t.json"
    bad.write_text(json.dumps([{"prompts": "{} fine"}, {"prompts": "no placeholder here"}]))
    with pytest.raises(PromptError, match=r"prompts_t.json: entry 1: .*no '\{\}' placeholder"):
        load_prompts(bad)
    bad.write_text("{not json")
    with pytest.raises(PromptError, match="prompts_t.json: not valid JSON"):
        load_prompts(bad)
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts(tmp_path / "nope.json")
    bad.write_text(json.dumps([{"prompts": "{} x", "relations": [["person", "near"]]}]))
    with pytest.raises(PromptError, match="entry 0: relation"):
        load_prompts(bad)
