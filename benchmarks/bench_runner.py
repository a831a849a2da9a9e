"""How much the benchmark runner costs on top of the work it does, and how it scales over processes.

Measured side by side in one invocation, on the built-in tiny model (CPU):

1. overhead: the same job (textual inversion on one identity, N images, IPS/SIS/APS) done twice,
   once as a bare loop (personalize, load, generate, evaluate: no ledger, no resume, no sharding)
   and once by ``likeness bench``'s Runner. Ratio = runner wall time / bare-loop wall time
   (target <= 1.05). Also the runner's own wall / (sum of its timed work).
2. scaling: ``likeness bench`` launched with 1 process and with 2 (``accelerate launch --multi_gpu
   --num_processes 2``, gloo on CPU); items/second over the generation phase, read from the items
   ledger timestamps, and end-to-end wall time.

Run:  flock /tmp/likeness-heavy.lock python benchmarks/bench_runner.py [--items 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bare_loop(config, run_dir: Path) -> float:
    """The work without the runner: what the runner's overhead is measured against."""
    from likeness.bench.evaluate import evaluate_run_items
    from likeness.bench.plan import make_plan
    from likeness.bench.runner import builtin_identities
    from likeness.data.identities import Identity
    from likeness.data.layout import write_sidecar
    from likeness.methods import get_method

    started = time.perf_counter()
    identities = builtin_identities(run_dir)
    plan = make_plan(config, identities)
    method = get_method(config.method)
    artifact = run_dir / "artifact"
    method.personalize([Identity(identities[0].name, identities[0].photos[:1])], artifact, config.base_model,
                       **config.method_options)
    personalized = method.load(artifact)
    paths = []
    for item in plan:
        (image,) = personalized.generate([item.prompt.prompts], [item.seed], identity=item.identity,
                                         num_inference_steps=config.steps, guidance_scale=config.guidance,
                                         height=config.resolution, width=config.resolution)
        path = run_dir / "images" / item.identity / f"{item.item_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        write_sidecar(path, item.sidecar(config))
        paths.append(path)
    evaluate_run_items(paths, identities=identities, metrics=config.metrics, store_path=run_dir / "bare.sqlite",
                       face_backend=config.face_backend, progress=False)
    return time.perf_counter() - started


def runner(config, run_dir: Path) -> tuple[float, dict]:
    from likeness.bench.runner import Runner

    started = time.perf_counter()
    summary = Runner(config, run_dir, progress=False).run()
    return time.perf_counter() - started, summary.seconds


def launched(processes: int, run_dir: Path, args: list[str]) -> tuple[float, float, int]:
    """(end-to-end wall, generation items/second from the ledger, items done) of a CLI run."""
    env = dict(os.environ, TQDM_DISABLE="1")
    if processes == 1:
        command = [sys.executable, "-m", "likeness", "bench"]
    else:
        env["OMP_NUM_THREADS"] = "1"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "likeness", "bench"]
    started = time.perf_counter()
    subprocess.run([*command, "--out", str(run_dir), "--quiet", "--no-report", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        first, last, done = db.execute(
            "SELECT MIN(started_at), MAX(finished_at), COUNT(*) FROM items WHERE status='done'").fetchone()
    return wall, done / (last - first), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=24, help="images per measurement (prompts of the open set)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per image")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="bare/runner pairs, interleaved; the best of each is kept")
    args = parser.parse_args()

    from likeness.bench.plan import RunConfig

    def config(limit: int) -> RunConfig:
        return RunConfig(method="textual-inversion", base_model="likeness/tiny-sd", identities="builtin",
                         prompt_limit=limit, steps=args.steps, resolution=args.resolution,
                         metrics=["ips", "sis", "aps"], method_options={"max_steps": args.train_steps})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runner(config(2), tmp / "warmup")  # imports, tiny-model cache, dlib models: paid once, outside the timings
        # Interleaved so that load from other processes on a shared machine hits both sides alike.
        bares, runs = [], []
        for k in range(args.repeats):
            bares.append(bare_loop(config(args.items), tmp / f"bare{k}"))
            runs.append(runner(config(args.items), tmp / f"runner{k}"))
        bare = min(bares)
        wall, seconds = min(runs, key=lambda r: r[0])
        work = sum(v for k, v in seconds.items() if k != "wall")
        print(f"overhead ({args.items} items, {args.steps} steps, {args.resolution} px, TI {args.train_steps} steps, IPS/SIS/APS):")
        print(f"  bare loop {bare:.2f} s | runner {wall:.2f} s | runner / bare = {wall / bare:.3f}"
              f"  (best of {args.repeats}; all: bare {', '.join(f'{b:.2f}' for b in bares)}; runner {', '.join(f'{r[0]:.2f}' for r in runs)})")
        print(f"  runner wall / its timed work (personalize {seconds.get('personalize', 0):.2f} + load {seconds.get('load', 0):.2f}"
              f" + generate {seconds.get('generate', 0):.2f} + evaluate {seconds.get('evaluate', 0):.2f} s) = {wall / work:.3f}")

        cli_args = ["--limit", str(args.items), "--steps", str(args.steps), "--resolution", str(args.resolution),
                    "--train-steps", str(args.train_steps)]
        ones, twos = [], []
        for k in range(args.repeats):  # interleaved, best of each, as above
            ones.append(launched(1, tmp / f"p1-{k}", cli_args))
            twos.append(launched(2, tmp / f"p2-{k}", cli_args))
        one, two = max(ones, key=lambda r: r[1]), max(twos, key=lambda r: r[1])
        print(f"scaling ({args.items} items, CLI end to end, best of {args.repeats}; items/s all: "
              f"1p {', '.join(f'{r[1]:.2f}' for r in ones)}; 2p {', '.join(f'{r[1]:.2f}' for r in twos)}):")
        print(f"  1 process : {one[1]:.2f} items/s generating, {one[0]:.1f} s wall, {one[2]} done")
        print(f"  2 processes: {two[1]:.2f} items/s generating, {two[0]:.1f} s wall, {two[2]} done")
        print(f"  items/s ratio 2p / 1p = {two[1] / one[1]:.2f}; wall ratio 1p / 2p = {one[0] / two[0]:.2f}")
        print(json.dumps({"runner_over_bare": wall / bare, "wall_over_work": wall / work,
                          "items_per_s_1p": one[1], "items_per_s_2p": two[1], "wall_1p": one[0], "wall_2p": two[0]}))


if __name__ == "__main__":
    main()
