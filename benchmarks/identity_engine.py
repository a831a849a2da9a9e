"""Face identity in torch, measured side by side in one run.

    python benchmarks/identity_engine.py --part faces                                   # light: detectors, engine, descriptor
    flock /tmp/likeness-heavy.lock python benchmarks/identity_engine.py --part train    # real-size SD-1.5 (random weights)
    flock /tmp/likeness-heavy.lock python benchmarks/identity_engine.py                 # both

Parts:

1. **Detectors** on the same images: faces found and images/s for dlib HOG, dlib MMOD and the torch
   MTCNN. The images are 512x512 crops built from the real photos in ../shared/data/faces, five
   kinds per photo: ``plain`` (face ~ 45% of the width), ``small`` (the crop shrunk to 96 px on a
   grey canvas: a ~40 px face), ``tilted`` (rotated 35 degrees), ``made-up`` (posterised, colours
   swapped, edges enhanced: a painted look), ``covered`` (lower half of the face under a dark band).
2. **Evaluator**: IPS + SIS over generated crops with the current evaluator (dlib backend, one image
   at a time) vs the batched engine (``dlib-torch``: detection over every core, descriptors in torch
   batches); images/s and their ratio (pool start-up is reported apart).
3. **Descriptor**: chips/s of the torch descriptor at batch 1 and batch 32, and of dlib's own.
4. **Training step** with and without the identity loss (``id_loss_weight=0.1``) on the real-size
   SD-1.5 architecture with random weights (Textual Inversion; each in its own process): seconds per
   step and peak memory, and their ratio.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import benchmark_parser, build_sd15_random, peak_rss_gb, subprocess_part  # noqa: E402  (sibling script)

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
PHOTOS = ["obama/0.jpg", "obama/1.jpg", "biden/1.jpg", "alex_lacamoire/0.jpg"]
KINDS = ("plain", "small", "tilted", "made-up", "covered")


def photo_list() -> list[Path]:
    if (FACES_DIR / PHOTOS[0]).exists():
        return [FACES_DIR / p for p in PHOTOS]
    from skimage.data import astronaut

    path = Path(tempfile.gettempdir()) / "likeness-astronaut.jpg"
    Image.fromarray(astronaut()).save(path)
    return [path]


def hard_images(photos: list[Path], backend) -> dict[str, list[np.ndarray]]:
    """The five kinds of 512x512 test image per photo (see the module docstring)."""
    out = {k: [] for k in KINDS}
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        x0, y0, x1, y1 = backend.detect(np.asarray(image))[0].box
        side = max(x1 - x0, y1 - y0) * 2.2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        plain = image.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))).resize((512, 512))
        out["plain"].append(plain)
        small = Image.new("RGB", (512, 512), (128, 128, 128))
        small.paste(plain.resize((96, 96), Image.Resampling.LANCZOS), (300, 120))
        out["small"].append(small)
        out["tilted"].append(plain.rotate(35, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)))
        painted = ImageOps.posterize(plain, 3).filter(ImageFilter.EDGE_ENHANCE_MORE)
        r, g, b = painted.split()
        out["made-up"].append(Image.merge("RGB", (b, r, g)))
        covered = plain.copy()
        face_h = (y1 - y0) * 512 / side
        top = int(256 + 0.12 * face_h)
        covered.paste((25, 25, 30), (int(256 - 0.6 * face_h), top, int(256 + 0.6 * face_h), int(256 + 0.75 * face_h)))
        out["covered"].append(covered)
    return {k: [np.asarray(i) for i in v] for k, v in out.items()}


def part_faces(args) -> dict:
    import torch

    from likeness.faces import get_backend

    torch.set_num_threads(1)  # one core per image, as in the evaluator and each engine worker
    photos = photo_list()
    hog = get_backend("dlib")
    images = hard_images(photos, hog)
    detectors = {"hog": hog, "mmod": get_backend("dlib", detector="mmod"), "mtcnn": get_backend("dlib", detector="mtcnn")}
    result = {"detectors": {}, "images_per_kind": len(photos)}
    for name, backend in detectors.items():
        backend.detect(images["plain"][0])  # warm-up
        found, seconds = {}, 0.0
        for kind, batch in images.items():
            tic = time.perf_counter()
            found[kind] = sum(bool(backend.detect(a)) for a in batch)
            seconds += time.perf_counter() - tic
        n = sum(len(b) for b in images.values())
        result["detectors"][name] = {"found": found, "total": sum(found.values()), "images": n, "images_per_s": n / seconds}

    # Descriptor throughput.
    from likeness.faces.dlib_resnet import load_dlib_resnet

    torch.set_num_threads(os.cpu_count() or 1)
    net = load_dlib_resnet()
    chips = torch.rand(64, 3, 150, 150) * 255
    rates = {}
    with torch.no_grad():
        for batch in (1, 32):
            net(chips[:batch])
            tic = time.perf_counter()
            for start in range(0, len(chips), batch):
                net(chips[start : start + batch])
            rates[f"torch_batch{batch}"] = len(chips) / (time.perf_counter() - tic)
    encoder = hog._encoder
    numpy_chips = [np.ascontiguousarray(c.permute(1, 2, 0).numpy().astype(np.uint8)) for c in chips[:16]]
    tic = time.perf_counter()
    encoder.compute_face_descriptor(numpy_chips)
    rates["dlib"] = len(numpy_chips) / (time.perf_counter() - tic)
    result["descriptor_chips_per_s"] = rates
    result["evaluator"] = evaluator_comparison(photos, hog, args.images)
    return result


def evaluator_comparison(photos, hog, count: int) -> dict:
    """IPS + SIS over ``count`` generated crops: dlib backend vs the batched engine, same rows."""
    from likeness.bench.evaluate import score_items
    from likeness.data.identities import Identity
    from likeness.data.layout import canonical_item_id, read_generated, write_sidecar
    from likeness.faces import FaceCache, get_backend

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        people = {}
        for photo in photos:
            people.setdefault(photo.parent.name, []).append(photo)
        identities = [Identity(name=n, photos=p) for n, p in people.items()]
        rng = np.random.default_rng(0)
        boxes = {photo: hog.detect(np.asarray(Image.open(photo).convert("RGB")))[0].box for photo in photos}
        for k in range(count):
            photo = photos[k % len(photos)]
            image = Image.open(photo).convert("RGB")
            x0, y0, x1, y1 = boxes[photo]
            side = max(x1 - x0, y1 - y0) * rng.uniform(1.8, 2.6)
            cx, cy = (x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * side, (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * side
            crop = image.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))).resize((512, 512))
            name = photo.parent.name
            item_id = canonical_item_id(name, photo, f"t{k:04d}", k)
            path = work / "generated" / name / f"{item_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            crop.save(path)
            write_sidecar(path, {"item_id": item_id, "identity": name, "reference": str(photo), "prompt": "a photo",
                                 "prompt_template": "{}", "prompt_id": f"t{k:04d}", "detectables": [], "categories": [],
                                 "relations": [], "seed": k, "method": "benchmark-crops", "base_model": "none"})
        items = read_generated(work / "generated", identities)
        tic = time.perf_counter()
        engine = get_backend("dlib-torch")
        engine.analyze_paths([items[0].image, items[1].image])  # starts the pool
        startup = time.perf_counter() - tic
        out = {"images": len(items), "workers": engine.workers, "engine_startup_s": startup}
        values = {}
        # The engine as it was before its descriptor kept to the cores the pool leaves: torch on every core.
        every_core = get_backend("dlib-torch", threads=os.cpu_count() or 1)
        every_core.analyze_paths([items[0].image, items[1].image])
        runs = (("evaluator", hog), ("engine", engine), ("engine_all_threads", every_core), ("evaluator_again", hog),
                ("engine_again", engine), ("engine_all_threads_again", every_core))
        for label, backend in runs:
            tic = time.perf_counter()
            report = score_items(items, identities, work / f"{label}.sqlite", ["ips", "sis"], progress=False,
                                 cache=FaceCache(backend))
            out[f"{label}_images_per_s"] = len(items) / (time.perf_counter() - tic)
            values[label] = [s["value"] for s in report.summaries]
        engine.close()
        every_core.close()
        out["ips_sis"] = values
        for label in ("evaluator", "engine", "engine_all_threads"):
            out[f"{label}_best_images_per_s"] = max(out[f"{label}_images_per_s"], out[f"{label}_again_images_per_s"])
        out["ratio"] = out["engine_best_images_per_s"] / out["evaluator_best_images_per_s"]
        out["ratio_all_threads"] = out["engine_all_threads_best_images_per_s"] / out["evaluator_best_images_per_s"]
        return out


def part_train(model: Path, photo: Path, resolution: int, steps: int, weight: float) -> dict:
    """Seconds and memory per Textual Inversion step, with the identity loss at ``weight`` (0 = off)."""
    from likeness.methods import get_method
    from likeness.methods.base import COMMON_OPTIONS
    from likeness.methods.preparation import Augmentation, photo_batches, prepare_identities
    from likeness.methods.training import TrainingConfig, build_identity_term, train
    from likeness.models import load_pipeline

    pipe = load_pipeline(str(model), device="cpu", dtype="fp32")
    method = get_method("textual-inversion")
    prepared, _ = prepare_identities([("astro", [photo])], size=resolution, framing="face")
    identity = build_identity_term(prepared, weight) if weight else None
    with tempfile.TemporaryDirectory() as tmp:
        setup = method.setup(pipe, ["astro"], {**COMMON_OPTIONS, **method.defaults, "out_dir": tmp})
        make_batch = photo_batches(prepared, {"astro": setup.identities["astro"].subject}, batch_size=1, aug=Augmentation())
        config = TrainingConfig(max_steps=steps + 1, learning_rate=1e-3, resolution=resolution, progress=False)
        result = train(pipe, setup.trainable, make_batch, config, tmp, modules=setup.modules, after_step=setup.after_step,
                       identity=identity)
    timed = result.step_seconds[1:]
    return {"seconds_per_step": sum(timed) / len(timed), "steps": len(timed), "peak_rss_gb": peak_rss_gb(),
            "identity_values": identity.values if identity else [], "notes": result.notes}


def main() -> int:
    parser = benchmark_parser(__doc__, images=32, workdir="likeness-identity-engine")
    parser.add_argument("--weight", type=float, default=0.0, help=argparse_hidden())
    args = parser.parse_args()
    if args.part == "train-one":
        print(json.dumps(part_train(args.workdir / "sd15-random", args.photo, args.resolution, args.train_steps, args.weight)))
        return 0
    if args.part == "engine":  # the evaluator vs engine comparison alone (a few minutes less than --part faces)
        e = evaluator_comparison(photo_list(), __import__("likeness.faces").faces.get_backend("dlib"), args.images)
        print(f"IPS+SIS over {e['images']} generated crops: evaluator {e['evaluator_best_images_per_s']:.2f} images/s, "
              f"batched engine ({e['workers']} workers) {e['engine_best_images_per_s']:.2f} images/s -> {e['ratio']:.2f}x; "
              f"engine with torch on every core {e['engine_all_threads_best_images_per_s']:.2f} images/s -> "
              f"{e['ratio_all_threads']:.2f}x")
        print(json.dumps(e))
        return 0
    parts = ("faces", "train") if args.part is None else (args.part,)
    if "faces" in parts:
        r = part_faces(args)
        print(f"Detectors on the same {r['detectors']['hog']['images']} images (512 px; {r['images_per_kind']} per kind), "
              "one core each:")
        print(f"{'':8}" + "".join(f"{k:>9}" for k in KINDS) + f"{'total':>8}{'images/s':>10}")
        for name, d in r["detectors"].items():
            print(f"{name:8}" + "".join(f"{d['found'][k]:>9}" for k in KINDS) + f"{d['total']:>8}{d['images_per_s']:>10.2f}")
        rates = r["descriptor_chips_per_s"]
        print(f"\nDescriptor chips/s: torch batch 1 {rates['torch_batch1']:.1f}, batch 32 {rates['torch_batch32']:.1f} "
              f"({rates['torch_batch32'] / rates['torch_batch1']:.2f}x); dlib {rates['dlib']:.1f}")
        e = r["evaluator"]
        print(f"\nIPS+SIS over {e['images']} generated crops: evaluator {e['evaluator_best_images_per_s']:.2f} images/s, "
              f"batched engine ({e['workers']} workers) {e['engine_best_images_per_s']:.2f} images/s -> {e['ratio']:.2f}x "
              f"(engine start-up {e['engine_startup_s']:.1f} s, not counted)")
        print("   IPS/SIS means:", json.dumps(e["ips_sis"]))
        print(json.dumps(r))
    if "train" in parts:
        model = build_sd15_random(args.workdir / "sd15-random")
        photo = photo_list()[0]
        runs = {}
        for weight in (0.0, 0.1):
            runs[weight] = subprocess_part(__file__, ["--part", "train-one", "--workdir", str(args.workdir), "--photo", str(photo),
                                                      "--resolution", str(args.resolution), "--train-steps", str(args.train_steps),
                                                      "--weight", str(weight)])
        base, with_id = runs[0.0], runs[0.1]
        print(f"\nTextual Inversion step on SD-1.5 (random weights, CPU, {args.resolution} px, {base['steps']} timed steps):")
        print(f"  without identity loss {base['seconds_per_step']:.2f} s/step, peak {base['peak_rss_gb']:.2f} GB")
        print(f"  with identity loss    {with_id['seconds_per_step']:.2f} s/step, peak {with_id['peak_rss_gb']:.2f} GB "
              f"-> {with_id['seconds_per_step'] / base['seconds_per_step']:.2f}x time")
        print(json.dumps(runs))
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
