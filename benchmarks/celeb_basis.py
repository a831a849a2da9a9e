"""Celeb Basis cost on a real-size SD-1.5 architecture (random weights, CPU), side by side with Textual Inversion.

Random weights do the same arithmetic as trained ones, so seconds and memory are representative.
The pipeline is the one ``benchmarks/generation.py`` builds (UNet 860 M parameters, VAE, CLIP ViT-L
text encoder with a 49,408-row table), except that its tokenizer also keeps every word of the
celebrity-name list whole, so the basis sees as many names as it would with the real CLIP
vocabulary and ``k`` is what the real model would get (not the tiny vocabulary's handful).

Measured, each part in its own process so peak memory (max RSS) is per part:

1. basis: seconds to hash the embedding table and build the basis (once per base model, cached);
2. seconds and peak memory per training step, Celeb Basis vs Textual Inversion, same photo,
   augmentation (flip), batch 1, no accumulation (the first step is a warm-up, not counted);
3. artifact bytes per person (the 2 x k coefficients, the exported textual-inversion file) and the
   shared files (basis, coefficient layer);
4. seconds per generated image: plain pipeline vs the same pipeline with the Celeb Basis artifact
   applied, interleaved image by image; medians.

Run (one heavy job at a time on a shared machine):

    flock /tmp/likeness-heavy.lock python benchmarks/celeb_basis.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import benchmark_parser, build_sd15_random, peak_rss_gb, subprocess_part, time_interleaved  # noqa: E402  (sibling benchmark script)

METHODS = ("celeb-basis", "textual-inversion")


def build_model(folder: Path) -> Path:
    """The SD-1.5-shaped random pipeline, its tokenizer extended with the words of the name list."""
    import likeness.models.tiny as tiny
    from likeness.methods.celeb_basis.basis import read_names

    base_words = tiny.tiny_words()
    name_words = [w.lower() for name in read_names() for w in name.split()]
    tiny.tiny_words = lambda: list(dict.fromkeys(base_words + name_words))
    return build_sd15_random(folder)


def part_basis(model: Path) -> dict:
    from likeness.methods.celeb_basis.basis import build_basis, split_names, read_names, table_hash
    from likeness.models import load_pipeline

    pipe = load_pipeline(str(model), device="cpu", dtype="fp32")
    tic = time.perf_counter()
    table_hash(pipe.text_encoder)
    hashed = time.perf_counter() - tic
    basis = build_basis([pipe.text_encoder], [pipe.tokenizer])
    return {"hash_seconds": hashed, "basis_seconds": time.perf_counter() - tic, "rank": basis.rank,
            "names": split_names([pipe.tokenizer], read_names()).report()}


def part_train(model: Path, method_name: str, photo: Path, resolution: int, steps: int) -> dict:
    """Seconds and memory per training step, through the same setup + loop ``personalize`` uses."""
    from likeness.methods import get_method
    from likeness.methods.base import COMMON_OPTIONS
    from likeness.methods.preparation import Augmentation, photo_batches, prepare_identities
    from likeness.methods.training import TrainingConfig, train
    from likeness.models import load_pipeline

    pipe = load_pipeline(str(model), device="cpu", dtype="fp32")
    method = get_method(method_name)
    prepared, _ = prepare_identities([("astro", [photo])], size=resolution, framing="face")
    with tempfile.TemporaryDirectory() as tmp:
        setup = method.setup(pipe, ["astro"], {**COMMON_OPTIONS, **method.defaults, "out_dir": tmp})
        setup.identities["astro"].photos = [str(photo)]  # as the shared personalize does after setup
        make_batch = photo_batches(prepared, {"astro": setup.identities["astro"].subject}, batch_size=1, aug=Augmentation())
        if setup.wrap_batches is not None:
            make_batch = setup.wrap_batches(make_batch)
        config = TrainingConfig(max_steps=steps + 1, learning_rate=1e-3, resolution=resolution, progress=False)
        result = train(pipe, setup.trainable, make_batch, config, tmp, modules=setup.modules, after_step=setup.after_step)
    timed = result.step_seconds[1:]
    trained = sum(p.numel() for p in setup.trainable.values() if p.requires_grad)
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    return {"seconds_per_step": sum(timed) / len(timed), "steps": len(timed), "weights_gb": weights / 1024**3,
            "peak_rss_gb": peak_rss_gb(), "optimised_parameters": trained}


def part_artifact(model: Path, method_name: str, photo: Path, resolution: int, out: Path) -> dict:
    """A 1-step artifact through the public ``personalize``; its file sizes are what is measured."""
    from likeness.methods import personalize

    if not (out / "likeness.json").exists():
        personalize(method_name, {"astro": [photo]}, out, str(model), max_steps=1, gradient_accumulation_steps=1,
                    resolution=resolution, progress=False, device="cpu")
    return {"artifact": str(out), "files": {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}}


def part_generate(model: Path, artifact: Path, resolution: int, steps: int, images: int) -> dict:
    """Seconds per image, plain vs Celeb Basis, interleaved image by image so that load on a shared
    machine hits both alike; the median per pipeline is reported.

    The artifact is applied to the plain pipeline itself with the method's own ``apply`` (it only
    adds two tokens per person: prompts without them compute exactly as before), so both share one
    set of weights and differ only in what Celeb Basis adds.
    """
    import torch

    from likeness.methods import Manifest, get_method
    from likeness.methods.base import Personalized
    from likeness.models import load_pipeline

    template = "{} reading a book in a library"
    plain = load_pipeline(str(model), device="cpu", dtype="fp32")
    manifest = Manifest.load(artifact)
    get_method("celeb-basis").apply(plain, Path(artifact), manifest)
    personalized = Personalized(plain, manifest, Path(artifact))
    sampling = dict(num_inference_steps=steps, height=resolution, width=resolution, guidance_scale=10.0)
    runners = {
        "plain": lambda seed: plain(template.replace("{}", "a person"), generator=torch.Generator().manual_seed(seed),
                                    **sampling),
        "celeb-basis": lambda seed: personalized.generate([template], [seed], **sampling),
    }
    return time_interleaved(runners, images)


def main() -> int:
    parser = benchmark_parser(__doc__, images=4, workdir="likeness-bench-celeb-basis")
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.workdir / "sd15-random-names"

    if args.part == "model":
        build_model(model)
        print(json.dumps({"model": str(model)}))
        return 0
    if args.part == "basis":
        print(json.dumps(part_basis(model)))
        return 0
    if args.part == "train":
        print(json.dumps(part_train(model, args.method, args.photo, args.resolution, args.train_steps)))
        return 0
    if args.part == "artifact":
        out = args.workdir / f"artifact-{args.method}-{args.resolution}"
        print(json.dumps(part_artifact(model, args.method, args.photo, args.resolution, out)))
        return 0
    if args.part == "generate":
        print(json.dumps(part_generate(model, args.artifact, args.resolution, args.gen_steps, args.images)))
        return 0

    from PIL import Image
    from skimage.data import astronaut

    args.workdir.mkdir(parents=True, exist_ok=True)
    photo = args.workdir / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    common = ["--resolution", str(args.resolution), "--workdir", str(args.workdir), "--photo", str(photo)]
    tic = time.perf_counter()
    subprocess_part(__file__, ["--part", "model", *common])
    print(f"model ready in {time.perf_counter() - tic:.0f} s", flush=True)
    basis = subprocess_part(__file__, ["--part", "basis", *common])
    print(f"basis: {basis}", flush=True)
    train = {}
    for method in METHODS:
        train[method] = subprocess_part(__file__, ["--part", "train", "--method", method, "--train-steps", str(args.train_steps), *common])
        print(f"trained {method}: {train[method]}", flush=True)
    artifacts = {m: subprocess_part(__file__, ["--part", "artifact", "--method", m, *common]) for m in METHODS}
    gen = subprocess_part(__file__, ["--part", "generate", "--artifact", artifacts["celeb-basis"]["artifact"],
                           "--gen-steps", str(args.gen_steps), "--images", str(args.images), *common])

    cb_files, ti_files = artifacts["celeb-basis"]["files"], artifacts["textual-inversion"]["files"]
    print(f"\nSD-1.5-shaped pipeline, random weights, CPU ({args.resolution} px)")
    print(f"basis: {basis['names']}; k = {basis['rank']}; table hash {basis['hash_seconds']:.2f} s, "
          f"hash + PCA {basis['basis_seconds']:.2f} s (once per base model, then cached)")
    print(f"training (batch 1, {args.train_steps} timed steps):")
    print(f"  {'method':<20} {'s/step':>8} {'peak RSS GB':>12} {'weights GB':>11} {'optimised params':>17}")
    for method, r in train.items():
        print(f"  {method:<20} {r['seconds_per_step']:>8.2f} {r['peak_rss_gb']:>12.2f} {r['weights_gb']:>11.2f} "
              f"{r['optimised_parameters']:>17,}")
    ratio = train["celeb-basis"]["seconds_per_step"] / train["textual-inversion"]["seconds_per_step"]
    print(f"  celeb-basis / textual-inversion seconds per step: {ratio:.3f} (target <= 1.1)")
    print("artifact bytes:")
    print(f"  per person: coefficients {2 * basis['rank'] * 4:,} (2 x {basis['rank']} float32, inside "
          f"coefficients.safetensors = {cb_files['coefficients.safetensors']:,} with header), exported TI file "
          f"{cb_files['astro.safetensors']:,}; Textual Inversion file {ti_files['astro.safetensors']:,}")
    print(f"  shared: basis {cb_files['celeb_basis.safetensors']:,}, coefficient layer "
          f"{cb_files['coefficient_encoder.safetensors']:,}")
    plain = gen["plain"]
    print(f"generation ({args.gen_steps} steps, guidance 10, {args.images} images each, interleaved; medians):")
    print(f"  {'pipeline':<20} {'s/image':>8} {'ratio to plain':>15}")
    for label in ("plain", "celeb-basis"):
        print(f"  {label:<20} {gen[label]:>8.2f} {gen[label] / plain:>15.3f}")
    print("  (target <= 1.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
