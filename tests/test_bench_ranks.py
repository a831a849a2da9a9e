"""Per-rank set-up of a sharded run: CPU threads shared among a machine's ranks, and no
personalization worker on a rank that can never be given an artifact."""

from PIL import Image

from bench_helpers import small_config
from likeness.bench.runner import may_personalize
from likeness.cli.bench import default_threads


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
