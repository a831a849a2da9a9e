"""The default `likeness bench` (README's first command): the built-in method beside the copy-reference row in one
leaderboard, so the run shows what its identity numbers mean; a folder made by the old one-method default goes on."""

from __future__ import annotations

import json

from bench_helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from likeness.bench.leaderboard import PAGE, leaderboard_rows
from likeness.bench.store import ResultsStore
from likeness.cli import build_parser, main
from likeness.cli.bench import default_method
from likeness.models.tiny_vision import build_tiny_clip


def test_default_bench_ranks_the_method_beside_copy_reference_that_the_penalty_zeroes(tiny_models, tmp_path, capsys,
                                                                                      monkeypatch):
    """Two prompts (the penalty's std needs two CLIP-N values). CLIP-T and CLIP-N come from a tiny random CLIP given
    with --clip-model: offline, no real CLIP is available by default, and then the penalty is not computed (the
    default metrics leave clip-t / clip-n out and say so). A copy of the reference has CLIP-T = CLIP-N (same image,
    same prompt text) whatever CLIP's weights, so it never beats CLIP-N + 2 std: its IPS counts 0."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = build_tiny_clip(tmp_path / "clip")
    run = tmp_path / "run"
    assert main(["bench", "--out", str(run), "--limit", "2", "--train-steps", "2", "--quiet",
                 "--clip-model", str(clip)]) == 0
    out = capsys.readouterr().out
    assert f"leaderboard: {run / PAGE}" in out and out.count("2/2 items done") == 2
    rows = {r["method"]: r for r in leaderboard_rows([run / "textual-inversion", run / "copy-reference"])}
    assert list(rows) == ["textual-inversion", "copy-reference"] and all(r["done"] == 2 for r in rows.values())
    copy = rows["copy-reference"]
    assert copy["totals"]["IPS"] > 0.9 and copy["ips_penalised"] == 0.0
    assert rows["textual-inversion"]["totals"]["IPS"] is not None  # the tiny model's noise: scored (0, no face)
    page = (run / PAGE).read_text()
    assert "<td class='l'>copy-reference</td><td>1.000</td><td>0.000</td>" in page and ">IPS-PENALISED<" in page
    with ResultsStore(run / "copy-reference" / "results.sqlite") as store:
        assert {s.status for s in store.scores("ips-penalised")} == {"zeroed"}
        assert {s.status for s in store.scores("copy-gap")} == {"single_photo"}  # the astronaut has one photo
    # --resume names a run folder; this one holds one per method: said, not guessed.
    assert main(["bench", "--out", str(run), "--resume", "--quiet"]) == 2
    assert "holds one run folder per method" in capsys.readouterr().err


def test_a_folder_of_the_old_one_method_default_goes_on_alone(tiny_models, tmp_path, capsys):
    run = tmp_path / "old"
    assert main(["bench", "--out", str(run), "--method", "textual-inversion", "--limit", "1", "--train-steps", "1",
                 "--metrics", "", "--no-report"]) == 0  # what `likeness bench` made before the reference rows
    capsys.readouterr()
    assert main(["bench", "--out", str(run), "--limit", "1", "--train-steps", "1", "--metrics", "", "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "1/1 items done" in captured.out and "going on with textual-inversion alone" in captured.err
    assert json.loads((run / "run.json").read_text())["config"]["method"] == "textual-inversion"
    assert not (run / "copy-reference").exists() and not (run / PAGE).exists()


def test_real_photos_joins_the_default_when_an_identity_has_a_second_photo(astronaut_path, tmp_path):
    from PIL import Image

    parser = build_parser()
    one, two = tmp_path / "one", tmp_path / "two"
    for root, photos in ((one, 1), (two, 2)):
        (root / "ana").mkdir(parents=True)
        for n in range(photos):
            Image.open(astronaut_path).save(root / "ana" / f"{n}.jpg")
    method = [default_method(parser.parse_args(["bench", "--out", str(tmp_path / "r"), "--identities", str(p)]))
              for p in ("builtin", one, two, tmp_path / "nobody")]
    assert method == ["textual-inversion,copy-reference", "textual-inversion,copy-reference",
                      "textual-inversion,copy-reference,real-photos", "textual-inversion,copy-reference"]
