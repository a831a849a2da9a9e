"""Per-rank set-up of a sharded run: CPU threads shared among a machine's ranks, no personalization
worker on a rank that can never be given an artifact, and ranks forked by ``--processes``."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench_helpers import small_config
from likeness.bench.local_ranks import LAUNCH_ENV, LaunchError, start
from likeness.bench.rankstore import MERGED_META, rank_folder
from likeness.bench.runner import STORE_FILE, builtin_identities, may_personalize
from likeness.cli.bench import default_threads

REPO = Path(__file__).resolve().parents[1]


def test_threads_are_the_cores_shared_among_the_machines_ranks():
    real = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert default_threads(None, real, env={"LOCAL_WORLD_SIZE": "2"}, cpus=16) == 8
    assert default_threads(None, real, env={"LOCAL_WORLD_SIZE": "3"}, cpus=2) == 1  # never 0
    assert default_threads(None, real, env={}, cpus=16) is None  # one process: torch's default
    assert default_threads(None, "likeness/tiny-sd", env={"LOCAL_WORLD_SIZE": "2"}, cpus=16) == 1
    assert default_threads(5, real, env={"LOCAL_WORLD_SIZE": "2"}, cpus=16) == 5  # --threads wins


def test_only_ranks_that_can_own_an_artifact_fork_a_worker(tmp_path):
    people = tmp_path / "people"
    for name in ("ann", "bob", "cid"):
        (people / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40, 80, 120)).save(people / name / "0.png")
    run = tmp_path / "run"
    builtin = small_config()  # one identity, one reference photo: one artifact
    assert [may_personalize(builtin, run, r, 2) for r in range(2)] == [True, False]
    three = small_config(str(people))  # three artifacts over four ranks
    assert [may_personalize(three, run, r, 4) for r in range(4)] == [True, True, True, False]
    assert three.inputs == {}  # planning here leaves the configuration (and its digest) alone
    bad = small_config(str(tmp_path / "missing"))
    assert may_personalize(bad, run, 3, 4)  # unsure: fork as before; prepare() reports the error


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    for name in LAUNCH_ENV:
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "likeness", "bench", "--quiet", "--no-report", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_processes_fork_ranks_that_give_the_one_process_results(tmp_path):
    """``--processes 2``: the second rank is forked after the imports; both generate, their stores are
    merged, and rows, scores and pixels equal a one-process run's."""
    photo = builtin_identities(tmp_path / "src")[0].photos[0]
    people = tmp_path / "people"
    for name, image in (("alice", Image.open(photo)), ("bob", Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
        (people / name).mkdir(parents=True)
        image.save(people / name / "0.png")
    common = ["--method", "textual-inversion", "--identities", str(people), "--limit", "2", "--train-steps", "2",
              "--metrics", "ips,sis"]
    one, two = tmp_path / "one", tmp_path / "two"
    first = _cli(*common, "--out", str(one))
    forked = _cli(*common, "--out", str(two), "--processes", "2")
    assert first.returncode == 0 and forked.returncode == 0, first.stderr[-3000:] + forked.stderr[-3000:]
    assert forked.stdout.count("items done") == 1  # only rank 0 prints the summary
    query = "SELECT item_id, status, reason FROM items ORDER BY position"
    scores = "SELECT item_id, metric, value, status FROM results ORDER BY item_id, metric"
    with sqlite3.connect(one / STORE_FILE) as db1, sqlite3.connect(two / STORE_FILE) as db2:
        assert {r for (r,) in db2.execute("SELECT DISTINCT rank FROM items")} == {0, 1}
        merged = json.loads(db2.execute("SELECT value FROM meta WHERE key=?", (MERGED_META,)).fetchone()[0])
        assert sorted((e["rank"], e["world"]) for e in merged.values()) == [(0, 2), (1, 2)]
        assert db1.execute(query).fetchall() == db2.execute(query).fetchall()
        assert len(db1.execute(scores).fetchall()) == 8 and db1.execute(scores).fetchall() == db2.execute(scores).fetchall()
    pixels = [{p.stem: np.asarray(Image.open(p)) for p in sorted((run / "images").glob("*/*.png"))} for run in (one, two)]
    assert len(pixels[0]) == 4 and pixels[0].keys() == pixels[1].keys()
    assert all(np.array_equal(pixels[0][k], pixels[1][k]) for k in pixels[0])


def test_processes_bad_input_is_said_once_and_launchers_do_not_mix(tmp_path):
    missing = _cli("--identities", str(tmp_path / "nobody"), "--out", str(tmp_path / "a"), "--processes", "2")
    assert missing.returncode == 2 and missing.stderr.count("nobody: dataset folder does not exist") == 1
    zero = _cli("--out", str(tmp_path / "b"), "--processes", "0")
    assert zero.returncode == 2 and "--processes must be at least 1, got 0" in zero.stderr
    with pytest.raises(LaunchError, match="cannot be combined with accelerate launch"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("WORLD_SIZE", "2")
            start(2, "textual-inversion")


def test_a_forked_rank_killed_mid_run_is_named_and_resume_completes_every_item_once(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "likeness", "bench", "--quiet", "--no-report", "--out", str(run), "--limit", "24",
               "--method", "textual-inversion", "--metrics", ""]
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    for name in LAUNCH_ENV:
        env.pop(name, None)
    proc = subprocess.Popen([*command, "--processes", "2"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    rank1 = rank_folder(run, 1)
    try:
        deadline = time.monotonic() + 240
        while not list((rank1 / "images").glob("*/*.png")):  # rank 1 has made an image: kill it
            assert proc.poll() is None and time.monotonic() < deadline, "rank 1 never generated"
            time.sleep(0.1)
        with sqlite3.connect(rank1 / STORE_FILE, timeout=30) as db:
            pid = json.loads(db.execute("SELECT value FROM meta WHERE key='rank'").fetchone()[0])["pid"]
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and f"rank 1 (pid {pid}) was killed by signal 9" in err and "rerun the same command" in err
    resumed = subprocess.run([*command, "--resume", "--processes", "2"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with sqlite3.connect(run / STORE_FILE) as db:
        rows = db.execute("SELECT item_id, status FROM items").fetchall()
    assert len(rows) == 24 and {s for _, s in rows} == {"done"}
    assert len(list((run / "images").glob("*/*.png"))) == 24


def test_processes_with_several_methods_finish_every_method(tmp_path):
    """The second method's run starts after the group exists: its personalization child must not be forked
    then (it would inherit the group and wait on the other rank forever); it is spawned instead."""
    out = tmp_path / "run"
    result = _cli("--method", "textual-inversion,dreambooth-lora", "--processes", "2", "--limit", "2", "--train-steps", "2",
                  "--metrics", "", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    for method in ("textual-inversion", "dreambooth-lora"):
        assert f"run {out / method}: 2/2 items done" in result.stdout
    assert result.stdout.count("leaderboard:") == 1 and (out / "leaderboard.html").is_file()
