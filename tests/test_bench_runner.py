"""The benchmark runner: stable plan, resume after SIGKILL, sharding, per-item failures, config refusal."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench_helpers import PLAIN, one_torch_thread, small_config  # noqa: F401 (autouse fixture)
from likeness.bench.plan import RunConfigError, derive_seed, make_plan, shard
from likeness.bench.runner import STORE_FILE, builtin_identities, run_bench
from likeness.bench.rankstore import MERGED_META, merge_rank_stores, rank_store_paths, recorded_digest
from likeness.bench.report import read_results
from likeness.bench.runstore import DONE, FAILED, RunStore
from likeness.data.identities import Identity

HELPERS = Path(__file__).with_name("bench_helpers.py")
REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, PYTHONPATH=str(HELPERS.parent), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env.pop("LOCAL_RANK", None)
    return env


def _run_script(run_dir, overrides: str):
    """One run in a fresh process (one thread), as users run it; floats then match across runs."""
    subprocess.run([sys.executable, str(HELPERS), str(run_dir), overrides], env=_env(), cwd=REPO, check=True,
                   capture_output=True, timeout=300)


def _item_rows(run_dir):
    with sqlite3.connect(run_dir / STORE_FILE) as db:
        return db.execute("SELECT item_id, status, reason FROM items ORDER BY position").fetchall()


def _item_attempts(run_dir):
    with sqlite3.connect(run_dir / STORE_FILE) as db:
        return db.execute("SELECT item_id, status, prompt_id, attempts FROM items ORDER BY position").fetchall()


def _pixels(run_dir):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((run_dir / "images").glob("*/*.png"))}


def test_plan_ids_and_seeds_are_stable(tmp_path):
    # Pinned values: changing how seeds are derived would silently change every published result.
    assert derive_seed("obama", "0", "t0007", 0) == derive_seed("obama", "0", "t0007", 0)
    assert derive_seed("obama", "0", "t0007", 0) != derive_seed("obama", "0", "t0007", 1)
    assert derive_seed("obama", "0", "t0007", 0, base_seed=1) != derive_seed("obama", "0", "t0007", 0)
    photo = builtin_identities(tmp_path)[0].photos[0]
    people = [Identity("bob", [photo, photo.with_name("1.png")]), Identity("astronaut", [photo])]
    config = small_config(identities=str(tmp_path), references=None, seeds=2, prompt_limit=3)
    plan = make_plan(config, people)
    assert len(plan) == (2 + 1) * 3 * 2
    assert plan[0].item_id == f"astronaut-0-t0000-s{derive_seed('astronaut', '0', 't0000', 0)}"
    assert plan[0].item_id == "astronaut-0-t0000-s1325881197"
    again = make_plan(small_config(identities=str(tmp_path), references=None, seeds=2, prompt_limit=3), list(reversed(people)))
    assert [(i.item_id, i.seed) for i in again] == [(i.item_id, i.seed) for i in plan]
    # Shards are disjoint and cover the plan; an item's seed does not depend on the split.
    parts = [shard(plan, r, 3) for r in range(3)]
    assert sorted(i.item_id for part in parts for i in part) == sorted(i.item_id for i in plan)
    assert {i.seed for i in parts[1]} <= {i.seed for i in plan}


def test_run_writes_canonical_layout_and_refuses_another_config(tmp_path):
    run = tmp_path / "run"
    summary = run_bench(small_config(prompt_limit=3), run, progress=False)
    assert summary.counts == {DONE: 3}
    sidecars = sorted((run / "images" / "astronaut").glob("*.json"))
    assert len(sidecars) == 3
    meta = json.loads(sidecars[0].read_text())
    assert meta["method"] == PLAIN and meta["prompt"].startswith("a person ") and "{}" in meta["prompt_template"]
    assert meta["item_id"] == sidecars[0].stem and meta["seed"] == int(meta["item_id"].rsplit("-s", 1)[1])
    assert meta["relations"] and meta["categories"]
    with pytest.raises(RunConfigError, match=r"another configuration.*steps: run folder has 2, now 3"):
        run_bench(small_config(prompt_limit=3, steps=3), run, progress=False)
    # Same config again: nothing left to do, nothing duplicated.
    assert run_bench(small_config(prompt_limit=3), run, progress=False).counts == {DONE: 3}


def test_corrupt_reference_fails_its_items_and_the_rest_complete(tmp_path):
    people = tmp_path / "people"
    good = builtin_identities(tmp_path / "src")[0].photos[0]
    (people / "alice").mkdir(parents=True)
    (people / "alice" / "0.png").write_bytes(good.read_bytes())
    (people / "alice" / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (people / "bob").mkdir()
    (people / "bob" / "0.png").write_bytes(good.read_bytes())
    summary = run_bench(small_config(identities=str(people), references=None, prompt_limit=2), tmp_path / "run", progress=False)
    assert summary.counts == {DONE: 4, FAILED: 2}
    failed = {f["item_id"]: f["reason"] for f in summary.failures}
    assert all(i.startswith("alice-1-") for i in failed)
    assert all("1.jpg" in reason and "personalization failed" in reason for reason in failed.values())
    assert len(list((tmp_path / "run" / "images").glob("*/*.png"))) == 4


def test_generation_failure_is_recorded_per_item(tmp_path, monkeypatch):
    from likeness.methods.base import Personalized

    real = Personalized.generate

    def flaky(self, prompts, seeds, **kw):
        if "juggling" in prompts[0]:  # t0001
            raise RuntimeError("simulated out-of-memory")
        return real(self, prompts, seeds, **kw)

    monkeypatch.setattr(Personalized, "generate", flaky)
    plan_ids = [i.item_id for i in make_plan(small_config(prompt_limit=4), builtin_identities(tmp_path / "x"))]
    summary = run_bench(small_config(prompt_limit=4), tmp_path / "run", progress=False)
    rows = _item_rows(tmp_path / "run")
    assert [r[0] for r in rows] == plan_ids
    assert all(r[1] in (DONE, FAILED) for r in rows)
    assert summary.counts == {DONE: 3, FAILED: 1}
    failed = [r for r in rows if r[1] == FAILED]
    assert failed == [(plan_ids[1], FAILED, "generation failed: RuntimeError: simulated out-of-memory")]


def test_disk_full_while_saving_fails_that_item_and_leaves_no_partial_file(tmp_path, monkeypatch):
    real_save = Image.Image.save

    def full_disk(self, fp, *args, **kwargs):
        if "t0002" in str(fp):
            Path(fp).write_bytes(b"\x89PNG half")  # a partial write, then the error
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    summary = run_bench(small_config(prompt_limit=3), tmp_path / "run", progress=False)
    assert summary.counts == {DONE: 2, FAILED: 1}
    assert "generation failed: OSError: [Errno 28] No space left on device" == summary.failures[0]["reason"]
    assert "t0002" in summary.failures[0]["item_id"]
    # The partial write stayed in the rank's folder under a temporary name, and went with that folder at the merge.
    assert not list((tmp_path / "run").rglob("*t0002*")) and not list((tmp_path / "run" / "ranks").iterdir())
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert run_bench(small_config(prompt_limit=3), tmp_path / "run", progress=False).counts == {DONE: 2, FAILED: 1}
    assert not list((tmp_path / "run" / "images").glob("*/*.tmp"))
    # Failed is final, until the user asks for another try (space freed).
    assert run_bench(small_config(prompt_limit=3), tmp_path / "run", progress=False, retry_failed=True).counts == {DONE: 3}
    assert [r[3] for r in _item_attempts(tmp_path / "run")] == [1, 1, 2]


def _two_people(root: Path) -> Path:
    photo = builtin_identities(root / "src")[0].photos[0]
    for name, image in (("alice", Image.open(photo)), ("bob", Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
        (root / "people" / name).mkdir(parents=True)
        image.save(root / "people" / name / "0.png")
    return root / "people"


def _accelerate(run_dir, overrides: str, *options: str) -> subprocess.Popen:
    """``accelerate launch`` of one rank group of bench_helpers.py (2 processes in all, gloo on CPU).

    accelerate's launcher (torch.distributed.run underneath); the runner's PartialState(cpu=True) joins
    the gloo group. (``--cpu`` alone starts one process without MPI.)"""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--mixed_precision", "no", "--dynamo_backend", "no", *options, str(HELPERS), str(run_dir), overrides]
    return subprocess.Popen(command, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_two_machines_give_the_same_results_as_one_process(tmp_path):
    """Two "machines" on this host (two launches, --num_machines 2, machine ranks 0 and 1, gloo) vs one
    process: real textual-inversion training (2 steps) for two people, generation, IPS/SIS."""
    people = _two_people(tmp_path)
    overrides = json.dumps({"prompt_limit": 3, "identities": str(people), "method": "textual-inversion",
                            "method_options": {"max_steps": 2}, "metrics": ["ips", "sis"]})
    one, two = tmp_path / "one", tmp_path / "two"
    port = str(_free_port())
    nodes = [_accelerate(two, overrides, "--num_machines", "2", "--machine_rank", str(rank),
                         "--main_process_ip", "127.0.0.1", "--main_process_port", port) for rank in (0, 1)]
    try:
        _run_script(one, overrides)  # meanwhile
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        _stop(*nodes)
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert [out.count("backend gloo, 2 processes") for out in outputs] == [1, 1]
    with sqlite3.connect(two / STORE_FILE) as db:
        ranks = {r for (r,) in db.execute("SELECT DISTINCT rank FROM items")}
        merged = json.loads(db.execute("SELECT value FROM meta WHERE key=?", (MERGED_META,)).fetchone()[0])
    assert ranks == {0, 1}, "both machines must have generated items"
    assert sorted((e["rank"], e["world"]) for e in merged.values()) == [(0, 2), (1, 2)]
    assert not list((two / "ranks").iterdir()), "rank stores are merged into the run's store, then removed"
    assert _item_rows(one) == _item_rows(two)
    assert {p.parent.name for p in (two / "artifacts").glob("*/likeness.json")} == {"alice-0", "bob-0"}
    a, b = _pixels(one), _pixels(two)
    assert len(a) == 6 and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # Scores of both machines merged into one store, equal to the one-process store, summaries included.
    query = "SELECT item_id, metric, value, status FROM results ORDER BY item_id, metric"
    with sqlite3.connect(one / STORE_FILE) as db1, sqlite3.connect(two / STORE_FILE) as db2:
        assert len(db1.execute(query).fetchall()) == 12
        assert db1.execute(query).fetchall() == db2.execute(query).fetchall()
        summaries = "SELECT value FROM meta WHERE key='metric_summaries'"
        assert db1.execute(summaries).fetchone() == db2.execute(summaries).fetchone() is not None


def _rank_states(run) -> dict[int, tuple[dict, set[str]]]:
    """rank -> (its store's rank info, its done item ids), read from RUN/ranks/*/results.sqlite."""
    states = {}
    for path in rank_store_paths(run):
        with sqlite3.connect(path, timeout=30) as db:
            info = json.loads(db.execute("SELECT value FROM meta WHERE key='rank'").fetchone()[0])
            done = {i for (i,) in db.execute("SELECT item_id FROM items WHERE status='done'")}
        states[info["rank"]] = (info, done)
    return states


def _snapshot(run) -> tuple[list[str], list[tuple[str, int]]]:
    with sqlite3.connect(run / STORE_FILE) as db:
        dump = list(db.iterdump())
    # (run.lock is each run's own: a refused run takes it over from the killed one and empties it)
    return dump, sorted((str(p.relative_to(run)), p.stat().st_size) for p in run.rglob("*") if p.is_file()
                        and not p.name.startswith(STORE_FILE) and p.name != "run.lock")


def test_rank_killed_mid_run_resumes_on_another_world_size_exactly_once(tmp_path):
    run = tmp_path / "run"
    config = {"prompt_limit": 12, "seeds": 2, "resolution": 64, "steps": 4}  # 24 items
    launch = _accelerate(run, json.dumps(config), "--num_machines", "1", "--main_process_port", str(_free_port()))
    victim, deadline = None, time.time() + 180
    try:
        while victim is None and time.time() < deadline and launch.poll() is None:
            try:
                info, done = _rank_states(run).get(1, ({}, set()))
            except (sqlite3.OperationalError, TypeError):  # a store being created
                info, done = {}, set()
            if len(done) >= 2:
                victim = info["pid"]
            time.sleep(0.05)
        assert victim and launch.poll() is None, "rank 1 was not caught mid-run: " + launch.stdout.read()[-3000:]
        os.kill(victim, signal.SIGKILL)  # the node dies; the launcher then stops the other rank
        launch.communicate(timeout=120)
    finally:
        _stop(launch)
    assert launch.returncode != 0
    # Nothing merged into the run's store yet; the finished items sit in the ranks' own stores.
    assert DONE not in {r[1] for r in _item_rows(run)}
    finished = set().union(*(done for _, done in _rank_states(run).values()))
    assert 2 <= len(finished) < 24
    # `likeness report` merges whatever is there; merging again changes nothing (ledger, rows, files).
    assert {i["item_id"] for i in read_results(run).items if i["status"] == DONE} == finished
    before = _snapshot(run)
    with RunStore(run / STORE_FILE) as store:
        again = merge_rank_stores(run, store, recorded_digest(run))
    assert (again.items, again.results, again.missing_images) == (0, 0, []) and _snapshot(run) == before
    # A rank store of another configuration is refused, named, before anything is merged.
    stray = run / "ranks" / "elsewhere-7"
    shutil.copytree(rank_store_paths(run)[0].parent, stray)
    with sqlite3.connect(stray / "results.sqlite") as db:
        db.execute("UPDATE meta SET value=? WHERE key='rank'", (json.dumps({"digest": "0" * 16, "rank": 7}),))
    before = _snapshot(run)
    with pytest.raises(RunConfigError, match="elsewhere-7: rank store made with another configuration"):
        run_bench(small_config(**config), run, progress=False)
    assert _snapshot(run) == before
    shutil.rmtree(stray)
    # Resume on one process: every item ends exactly once, with the pixels of an uninterrupted one-process run.
    assert run_bench(small_config(**config), run, progress=False).counts == {DONE: 24}
    rows = _item_attempts(run)
    assert len({r[0] for r in rows}) == 24 and {r[1] for r in rows} == {DONE} and min(r[3] for r in rows) == 1
    assert sorted(p.stem for p in (run / "images").glob("*/*.png")) == sorted(r[0] for r in rows)
    assert not list((run / "ranks").iterdir()) and not list((run / "images").glob("*/*.tmp"))
    run_bench(small_config(**config), tmp_path / "fresh", progress=False)
    a, b = _pixels(run), _pixels(tmp_path / "fresh")
    assert len(a) == 24 and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_bench_end_to_end_and_bad_input(tmp_path, capsys):
    from likeness.cli import main as cli_main

    run, flat = tmp_path / "run", tmp_path / "flat"
    args = ["bench", "--method", PLAIN, "--limit", "2", "--out", str(run), "--metrics", "", "--quiet"]
    assert cli_main([*args, "--stellar-flat", str(flat)]) == 0
    out = capsys.readouterr().out
    assert "2/2 items done" in out and "report:" in out and (run / "report" / "index.html").is_file()
    assert sorted(p.name for p in flat.glob("*.png")) == ["astronaut-0-00.png", "astronaut-0-01.png"]
    assert json.loads((flat / "astronaut-0-01.json").read_text())["image_path"] == "astronaut/0.png"
    # --resume continues with the recorded configuration; other options for the same folder are refused.
    assert cli_main(["bench", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    assert cli_main([*args, "--seeds", "2"]) == 2
    assert "seeds: run folder has 1, now 2" in capsys.readouterr().err
    bad = tmp_path / "prompts_t.json"
    bad.write_text(json.dumps([{"prompts": "a person without placeholder"}]))
    for extra, message in ((["--method", "nope"], "unknown method 'nope'"),
                           (["--metrics", "ips,zzz"], "unknown metric(s) zzz"),
                           (["--prompts", str(bad)], "prompts_t.json: entry 0: prompt 'a person without placeholder' has no"),
                           (["--identities", str(tmp_path / "nobody")], "nobody: dataset folder does not exist")):
        assert cli_main(["bench", "--out", str(tmp_path / "other"), "--quiet", *extra]) == 2
        assert message in capsys.readouterr().err


def test_cli_bench_names_a_missing_text_model_in_its_summary(tmp_path, capsys, monkeypatch):
    """Asked for CLIP-T with a CLIP that is not there offline: the items still finish, and the summary
    says which model is missing and how to give it (not only a dash in the table)."""
    from likeness.bench.store import ResultsStore
    from likeness.cli import main as cli_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    args = ["bench", "--method", PLAIN, "--limit", "1", "--out", str(run), "--metrics", "clip-t",
            "--clip-model", "someone/not-a-real-clip", "--quiet", "--no-report"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "1/1 items done" in out and "models missing (1;" in out
    assert "someone/not-a-real-clip" in out and "--clip-model" in out
    with ResultsStore(run / STORE_FILE) as results:
        assert {s.status for s in results.scores("clip-t")} == {"model_missing"}


def test_personalization_child_leaves_the_process_group_and_keeps_its_rank_gpu():
    from likeness.bench.personalize_worker import child_environment

    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "PATH": "/bin"}
    assert child_environment(env) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1"}
    assert child_environment({**env, "CUDA_VISIBLE_DEVICES": "4,5"})["CUDA_VISIBLE_DEVICES"] == "5"
    assert child_environment({"PATH": "/bin"}) == {"PATH": "/bin"}  # not launched: nothing to change
