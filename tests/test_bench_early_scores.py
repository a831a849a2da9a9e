"""Issue 21, "images start early": bench scores each person's images right after making them (metric models
loaded once per run), keeps those rows through a kill, and summarises once at the end, with the same rows
and summaries as one evaluation pass over the finished images."""

import json
import re
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

import likeness.bench.evaluate as evaluate
from bench_helpers import GATED, GatedPlain, one_torch_thread, small_config  # noqa: F401 (autouse fixture)
from likeness.bench.runner import SUMMARY_KEY, STORE_FILE, builtin_identities, run_bench
from likeness.bench.runstore import DONE, RunStore
from likeness.bench.store import ResultsStore
from likeness.data.identities import load_identities
from likeness.data.layout import read_canonical_item
from likeness.data.names import index_by_name
from likeness.models.tiny_vision import build_tiny_clip
from likeness.models.vision_language import VisionModels

PEOPLE = ("alice", "bob", "carol")
METRICS = ["ips", "clip-t", "clip-n"]  # a face metric, two text-image ones, and IPS's penalty derived from them


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the runner catches it."""


def _rows(store: Path) -> list[tuple]:
    """The rows but their time; a problem names the image where it was scored (bench: its rank's folder, as
    before), so paths are compared from the run folder's ``images/`` on."""
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT item_id, metric, value, status, n_faces, detail FROM results ORDER BY item_id, metric")
        return [(*row[:5], re.sub(r"/[^\"]*/images/", "/images/", row[5])) for row in rows]


def test_each_person_is_scored_before_the_next_is_trained_and_kept_through_a_kill(tmp_path, tiny_models, monkeypatch):
    photo = Image.open(builtin_identities(tmp_path / "src")[0].photos[0]).convert("RGB").resize((64, 64))
    for k, name in enumerate(PEOPLE):
        (tmp_path / "people" / name).mkdir(parents=True)
        photo.rotate(90 * k).save(tmp_path / "people" / name / "0.png")
    config = small_config(identities=str(tmp_path / "people"), method=GATED, prompt_limit=2, metrics=METRICS)
    clip = build_tiny_clip(tmp_path / "clip")
    built, scored, seen, kill = [], [], {}, {"at": None}
    real_init, real_score, real_personalize = evaluate.Evaluator.__init__, evaluate.Evaluator.score, GatedPlain.personalize

    def init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    def score(self, items, results, *args, **kwargs):
        scored.append(sorted(i.item_id.split("-")[0] for i in items))
        return real_score(self, items, results, *args, **kwargs)

    def personalize(self, identities, out_dir, base_model, **kw):
        name = identities[0].name
        run = Path(out_dir).parents[1]
        rows = []
        for store in (run / "ranks").glob("*/results.sqlite"):  # what is committed while this person trains
            with sqlite3.connect(store) as db:
                rows += db.execute("SELECT item_id, metric FROM results").fetchall()
        seen[name] = sorted({(item.split("-")[0], metric) for item, metric in rows})
        if name == kill["at"]:
            raise Killed
        return real_personalize(self, identities, out_dir, base_model, **kw)

    monkeypatch.setattr(evaluate.Evaluator, "__init__", init)
    monkeypatch.setattr(evaluate.Evaluator, "score", score)
    monkeypatch.setattr(GatedPlain, "personalize", personalize)

    # 1. A whole run: when carol (the last person) starts training, alice's and bob's rows are committed.
    models = VisionModels({"clip": str(clip)}, device="cpu")
    whole = tmp_path / "whole"
    summary = run_bench(config, whole, progress=False, models=models)
    assert summary.counts == {DONE: 6}
    assert seen["alice"] == [] and seen["bob"] == [(p, m) for p in ["alice"] for m in sorted(METRICS)]
    assert seen["carol"] == [(p, m) for p in ["alice", "bob"] for m in sorted(METRICS)]
    expected = seen["carol"]
    assert scored == [["alice"] * 2, ["bob"] * 2, ["carol"] * 2, []]  # per person, then the summaries only
    assert len(built) == 2 and models.loads["clip"] == 1  # one Evaluator for the rounds (+ finish's); CLIP loaded once
    assert summary.timeline["first_image"] < summary.timeline["first_score"] < summary.timeline["personalized"]

    # Same rows and summaries as one evaluation pass over the finished images (the old way). Batches of 2 = one
    # person's items, as bench scored them: the same computation, so the values compare exactly.
    identities = load_identities(tmp_path / "people")
    by_name = index_by_name(identities)
    items = [read_canonical_item(p, by_name) for p in sorted((whole / "images").glob("*/*.png"))]
    once = evaluate.score_items(items, identities, tmp_path / "once.sqlite", METRICS, progress=False,
                                models=VisionModels({"clip": str(clip)}, device="cpu"), batch_size=2)
    assert len(_rows(whole / STORE_FILE)) == 6 * 4 and _rows(whole / STORE_FILE) == _rows(tmp_path / "once.sqlite")
    with RunStore(whole / STORE_FILE) as store:
        stored = store.get_meta(SUMMARY_KEY)
    assert json.dumps(stored, sort_keys=True) == json.dumps({s["metric"]: s for s in once.summaries}, sort_keys=True)

    # 2. Killed while carol trains: alice's and bob's scores are kept; the resumed run scores carol's alone.
    kill["at"], killed = "carol", tmp_path / "killed"
    with pytest.raises(Killed):
        run_bench(config, killed, progress=False, models=VisionModels({"clip": str(clip)}, device="cpu"))
    (rank,) = (killed / "ranks").glob("*/results.sqlite")
    assert sorted({(i.split("-")[0], m) for i, m, *_ in _rows(rank)}) == expected  # alice's and bob's
    kill["at"], scored[:] = None, []
    resumed = run_bench(config, killed, progress=False, models=VisionModels({"clip": str(clip)}, device="cpu"))
    assert resumed.counts == {DONE: 6}
    assert scored == [["carol"] * 2, []]
    assert _rows(killed / STORE_FILE) == _rows(whole / STORE_FILE)
    with ResultsStore(killed / STORE_FILE) as store:
        assert json.dumps(store.get_meta(SUMMARY_KEY), sort_keys=True) == json.dumps(stored, sort_keys=True)
