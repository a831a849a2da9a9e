"""How much the benchmark runner costs on top of the work it does, and how it scales over processes.

Measured side by side in one invocation, on the built-in tiny model (CPU):

1. overhead: the same job (textual inversion on one identity, N images, IPS/SIS/APS) done twice,
   once as a bare loop (personalize, load, generate, evaluate: no ledger, no resume, no sharding)
   and once by ``likeness bench``'s Runner. Ratio = runner wall time / bare-loop wall time
   (target <= 1.05). Also the runner's own wall / (sum of its timed work).
2. scaling: ``likeness bench`` launched with 1 process, with 2 forked by ``--processes 2`` (no
   launcher), with 2 (``accelerate launch --multi_gpu --num_processes 2``, gloo on CPU) and as 2 simulated nodes (two launches, ``--num_machines 2
   --machine_rank 0/1 --main_process_ip 127.0.0.1``); end-to-end wall time, items/second over the
   generation phase (items ledger timestamps), CPU seconds of all processes, and where the main
   rank's time went (its timeline: start, imports, group join, ... merge), for the default smoke
   run and for a larger job.

3. time to first image (``--first-image N``, only this part): ``likeness bench`` on N people
   (textual inversion, 2 prompts each, no metrics), timed from launch: first artifact kept, first
   image, last artifact, end. Artifacts are kept and images generated person by person, so the first
   image should come after about one person's training (one gap between consecutive artifacts),
   not after all N. ``--baseline-repo DIR`` runs the same job with the likeness found in DIR too
   (e.g. a checkout from before that change), in the same invocation, for a side-by-side ratio.

Run:  flock /tmp/likeness-heavy.lock python benchmarks/bench_runner.py [--items 32]
      flock /tmp/likeness-heavy.lock python benchmarks/bench_runner.py --first-image 40 [--baseline-repo DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MODES = {"1p": "1 process", "2f": "--processes 2", "2p": "2 processes", "2n": "2 nodes"}
# Phases of the main rank's timeline (seconds since launch), in order; see Runner.timeline.
PHASES = (("start", "rank started"), ("method", "imports"), ("joined", "joined group"), ("prepared", "prepared"),
          ("personalized", "personalized"), ("generated", "generated"), ("evaluated", "evaluated"),
          ("merged", "merged+summary"))


def launched(mode: str, run_dir: Path, args: list[str]) -> dict:
    """One CLI run: 1 process, 2 processes on one machine, or 2 "nodes" (two launches with
    --num_machines 2 --machine_rank 0/1 on 127.0.0.1). End-to-end wall, generation items/second from
    the items ledger, CPU seconds of every process, the main rank's timeline."""
    env = dict(os.environ, TQDM_DISABLE="1")
    tail = ["-m", "likeness", "bench", "--out", str(run_dir), "--quiet", "--no-report", *args]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    if mode == "1p":
        commands = [[sys.executable, *tail]]
    elif mode == "2f":  # likeness bench forks its second rank after the imports: no launcher
        commands = [[sys.executable, *tail, "--processes", "2"]]
    else:
        env["OMP_NUM_THREADS"] = "1"
        port = str(_free_port())
        if mode == "2p":
            commands = [[*launch, "--num_machines", "1", "--main_process_port", port, *tail]]
        else:
            commands = [[*launch, "--num_machines", "2", "--machine_rank", str(r), "--main_process_ip", "127.0.0.1",
                         "--main_process_port", port, *tail] for r in (0, 1)]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    errors = [p.communicate()[1] for p in procs]
    wall = time.time() - started
    for p, err in zip(procs, errors):
        if p.returncode:
            raise SystemExit(f"{mode} run failed:\n{err.decode()[-3000:]}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        first, last, done = db.execute(
            "SELECT MIN(started_at), MAX(finished_at), COUNT(*) FROM items WHERE status='done'").fetchone()
        ranks = json.loads(db.execute("SELECT value FROM meta WHERE key='rank_stores'").fetchone()[0])
    timelines = {}
    for entry in sorted(ranks.values(), key=lambda e: e["rank"]):
        offset = entry["started"] - started
        timelines[entry["rank"]] = {"start": offset, **{k: v + offset for k, v in entry["timeline"].items()}}
    return {"mode": mode, "wall": wall, "items_per_s": done / (last - first), "done": done, "cpu": cpu,
            "timeline": timelines[0], "ranks": timelines}


# Where each rank's time goes: (label, phase it ends at, phase it starts at); see Runner.timeline.
SPANS = (("launch", "start", None), ("imports", "init", "start"), ("fork+preload", "forked", "init"),
         ("join", "joined", "forked|init"), ("prepare", "prepared", "method"), ("personalize/wait", "personalized", "prepared"),
         ("generate", "generated", "personalized"), ("evaluate", "evaluated", "generated"), ("merge", "merged", "evaluated|generated"))


def spans(timeline: dict, wall: float) -> list[str]:
    out = []
    for label, end, begin in SPANS:
        if end not in timeline:
            out.append(f"{label} -")
            continue
        first = next((timeline[b] for b in (begin or "").split("|") if b in timeline), 0.0)
        out.append(f"{label} {timeline[end] - first:.1f}")
    last = max(v for k, v in timeline.items())
    out.append(f"exit {wall - last:.1f}")
    return out


def scaling(label: str, cli_args: list[str], repeats: int, tmp: Path) -> dict:
    runs = {m: [] for m in MODES}
    for k in range(repeats):  # interleaved, so that load from other jobs hits every mode alike
        for mode in MODES:
            runs[mode].append(launched(mode, tmp / f"{label}-{mode}-{k}", cli_args))
    best = {m: min(r, key=lambda x: x["wall"]) for m, r in runs.items()}
    print(f"scaling, {label} (CLI end to end, best wall of {repeats}; wall all: "
          + "; ".join(m + " " + ", ".join(f"{x['wall']:.1f}" for x in r) for m, r in runs.items()) + "):")
    print(f"  {'':13} {'wall s':>7} {'items/s':>8} {'CPU s':>7} | main rank, seconds since launch: "
          + " | ".join(name for _, name in PHASES))
    for mode, r in best.items():
        phases = " | ".join(f"{r['timeline'].get(k, float('nan')):.1f}" for k, _ in PHASES)
        print(f"  {MODES[mode]:13} {r['wall']:7.1f} {r['items_per_s']:8.2f} {r['cpu']:7.1f} | {phases}")
    print("  seconds per span, each rank (launch = launch to rank start; exit = its last mark to the end of the run):")
    for mode, r in best.items():
        for rank, timeline in r["ranks"].items():
            print(f"    {MODES[mode]:13} rank {rank}: " + " | ".join(spans(timeline, r["wall"])))
    one = best["1p"]
    print("  ratios vs 1 process: " + "; ".join(
        f"{MODES[m]} wall {one['wall'] / best[m]['wall']:.2f}x faster, items/s {best[m]['items_per_s'] / one['items_per_s']:.2f}x"
        for m in ("2f", "2p", "2n")))
    return {m: {k: v for k, v in r.items()} for m, r in best.items()}


def make_people(folder: Path, n: int) -> Path:
    """``n`` identities (one photo each): the bundled astronaut photo, shifted, mirrored and recoloured."""
    from PIL import Image, ImageOps
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    for k in range(n):
        shift = (k * 7) % 40
        image = photo.crop((shift, shift // 2, 400 + shift, 400 + shift // 2)).resize((256, 256))
        image = ImageOps.mirror(image) if k % 2 else image
        image = Image.blend(image, Image.new("RGB", image.size, (k * 37 % 255, k * 91 % 255, k * 53 % 255)), 0.1)
        (folder / f"person{k:03d}").mkdir(parents=True, exist_ok=True)
        image.save(folder / f"person{k:03d}" / "0.png")
    return folder


def first_image(people: Path, run_dir: Path, args, repo: Path | None = None) -> dict:
    """One ``likeness bench`` run on ``people``: seconds from launch to the first artifact, first image,
    last artifact and the end, and the mean gap between consecutive artifacts (one person's training
    plus, pipelined, the generation of the previous person's images)."""
    env = dict(os.environ, TQDM_DISABLE="1")
    cwd = None
    if repo is not None:  # the likeness of that checkout: its folder first on the path, and as cwd
        env["PYTHONPATH"] = str(repo)
        cwd = str(repo)
    command = [sys.executable, "-m", "likeness", "bench", "--out", str(run_dir), "--quiet", "--no-report",
               "--method", "textual-inversion", "--identities", str(people), "--limit", str(args.prompts_per_person),
               "--steps", str(args.steps), "--resolution", str(args.resolution), "--train-steps", str(args.train_steps),
               "--metrics", ""]
    started = time.time()
    proc = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.time() - started
    if proc.returncode:
        raise SystemExit(f"first-image run failed:\n{proc.stderr.decode()[-3000:]}")
    made = sorted(p.stat().st_mtime - started for p in (run_dir / "artifacts").glob("*/likeness.json"))
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        first, done = db.execute("SELECT MIN(finished_at), COUNT(*) FROM items WHERE status='done'").fetchone()
    gaps = [b - a for a, b in zip(made, made[1:])]
    return {"people": len(made), "images": done, "first_artifact": made[0], "first_image": first - started,
            "last_artifact": made[-1], "end": end, "gap": sum(gaps) / len(gaps) if gaps else float("nan")}


def first_image_report(args, tmp: Path) -> dict:
    people = make_people(tmp / "people", args.first_image)
    runs = {"this": first_image(people, tmp / "first-this", args)}
    if args.baseline_repo:
        runs["baseline"] = first_image(people, tmp / "first-baseline", args, Path(args.baseline_repo).resolve())
    print(f"time to first image, {args.first_image} people (textual inversion {args.train_steps} steps, "
          f"{args.prompts_per_person} prompts each, {args.steps} denoising steps at {args.resolution} px, 1 process; "
          "seconds since launch):")
    print(f"  {'':9} {'1st artifact':>12} {'1st image':>10} {'last artifact':>13} {'end':>7} {'gap/person':>10} "
          f"{'1st image / gap':>15}")
    for label, r in runs.items():
        print(f"  {label:9} {r['first_artifact']:12.1f} {r['first_image']:10.1f} {r['last_artifact']:13.1f} "
              f"{r['end']:7.1f} {r['gap']:10.2f} {r['first_image'] / r['gap']:15.1f}")
    if "baseline" in runs:
        print(f"  first image: {runs['baseline']['first_image'] / runs['this']['first_image']:.1f}x sooner than the baseline")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=24, help="images per measurement (prompts of the open set)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per image")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="bare/runner pairs, interleaved; the best of each is kept")
    parser.add_argument("--no-smoke", action="store_true", help="skip the scaling of the default smoke run")
    parser.add_argument("--no-overhead", action="store_true", help="skip the overhead part")
    parser.add_argument("--no-items", action="store_true", help="skip the scaling of the --items job")
    parser.add_argument("--first-image", type=int, metavar="N",
                        help="only measure the time to the first image of a run on N people (e.g. 40)")
    parser.add_argument("--prompts-per-person", type=int, default=2, help="with --first-image (default: %(default)s)")
    parser.add_argument("--baseline-repo", metavar="DIR", help="with --first-image: also run the likeness checkout in DIR")
    args = parser.parse_args()
    if args.first_image:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(first_image_report(args, Path(tmp))))
        return

    from likeness.bench.plan import RunConfig

    def config(limit: int) -> RunConfig:
        return RunConfig(method="textual-inversion", base_model="likeness/tiny-sd", identities="builtin",
                         prompt_limit=limit, steps=args.steps, resolution=args.resolution,
                         metrics=["ips", "sis", "aps"], method_options={"max_steps": args.train_steps})

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wall = bare = work = float("nan")
        if not args.no_overhead:
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
        results = {}
        if not args.no_smoke:
            results["smoke"] = scaling("default smoke run (`likeness bench`: 8 prompts, TI 20 steps)", [], args.repeats, tmp)
        if not args.no_items:
            results["items"] = scaling(f"{args.items} items, TI {args.train_steps} steps", cli_args, args.repeats, tmp)
        print(json.dumps({"runner_over_bare": wall / bare, "wall_over_work": wall / work, "scaling": results}))


if __name__ == "__main__":
    main()
