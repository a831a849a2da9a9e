"""Face detectors on generated-looking images: faces found and images/s of MTCNN beside dlib's HOG, in one run.

    flock /tmp/likeness-heavy.lock python benchmarks/detectors.py [--detectors hog,mtcnn] [--side 1024]

Images, made from every photo in ../shared/data/faces (what AI images do to faces, built by hand; see
tests/identity_images.py): ``plain`` (the photo, longest side --side px), ``smooth`` (bilateral filter + blur:
airbrushed skin), ``dark`` (gamma 2.2, warm cast), ``bright`` (gamma 0.45, blue cast), ``stylised`` (posterised,
12-colour palette, inked edges), and ``small-N`` (the photo shrunk so the face is N px wide, pasted on a
1024x768 synthetic scene). Ground truth: the face box found on the plain photo (HOG and MTCNN agree there),
carried through each transform. A face is "found" when a detection's centre lies in that box; "extra" counts
detections elsewhere. images/s: decode excluded, detect + 5 points + descriptor (``backend.analyze``), one
torch thread, one process, the same images for every detector.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from identity_images import odd_lighting, shrink, small_in_scene, smooth_skin, stylised  # noqa: E402

from likeness.faces import get_backend  # noqa: E402

FACES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


def build(side: int) -> list[tuple[str, str, Image.Image, tuple]]:
    """(photo, kind, image, ground-truth face box) for every photo and kind."""
    truth_backend = get_backend("dlib", detector="mtcnn")
    out = []
    for photo in sorted(p for p in FACES_DIR.glob("[!_]*/*.jpg")):
        image = shrink(Image.open(photo), side)
        faces = truth_backend.detect(np.asarray(image))
        if not faces:
            continue
        box = faces[0].box  # largest face
        name = f"{photo.parent.name}/{photo.name}"
        small = shrink(image, 512)  # the bilateral filter at 512 px, upscaled back: smooth like a generated face
        out += [(name, "plain", image, box),
                (name, "smooth", smooth_skin(small).resize(image.size, Image.Resampling.BICUBIC), box),
                (name, "dark", odd_lighting(image), box),
                (name, "bright", odd_lighting(image, gamma=0.45, cast=(0.7, 0.85, 1.2)), box),
                (name, "stylised", stylised(image), box)]
        for width in (48, 32, 24, 16):
            scene, where = small_in_scene(image, box, width, seed=width)
            out.append((name, f"small-{width}", scene, where))
    return out


def found(faces, box) -> tuple[bool, int]:
    hits = [f for f in faces if box[0] <= (f.box[0] + f.box[2]) / 2 <= box[2] and box[1] <= (f.box[1] + f.box[3]) / 2 <= box[3]]
    return bool(hits), len(faces) - len(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", default="hog,mtcnn", help="comma-separated: hog, mtcnn, cnn (default: %(default)s)")
    parser.add_argument("--side", type=int, default=1024, help="longest side of the transformed photos (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not FACES_DIR.is_dir():
        raise SystemExit(f"{FACES_DIR} not found: the benchmark needs the shared face photos")
    images = build(args.side)
    kinds = list(dict.fromkeys(kind for _, kind, _, _ in images))
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    print(f"{len(images)} images from {len({p for p, _, _, _ in images})} photos; kinds: {', '.join(kinds)}")
    results = {}
    for detector in detectors:
        backend = get_backend("dlib", detector=detector)
        arrays = [np.asarray(image) for _, _, image, _ in images]
        backend.analyze([arrays[0]])  # warm-up: model load, first-call allocations
        per_kind: dict[str, list[int]] = {k: [0, 0, 0] for k in kinds}  # found, images, extra
        started = time.perf_counter()
        for (_, kind, _, box), array in zip(images, arrays):
            hit, extra = found(backend.analyze([array])[0], box)
            per_kind[kind][0] += hit
            per_kind[kind][1] += 1
            per_kind[kind][2] += extra
        seconds = time.perf_counter() - started
        results[detector] = (per_kind, len(images) / seconds)
    header = f"{'kind':<10}" + "".join(f"{d + ' found':>14}{d + ' extra':>12}" for d in detectors)
    print(header)
    for kind in kinds:
        print(f"{kind:<10}" + "".join(f"{f'{results[d][0][kind][0]}/{results[d][0][kind][1]}':>14}{results[d][0][kind][2]:>12}"
                                      for d in detectors))
    total = {d: [sum(v[i] for v in results[d][0].values()) for i in range(3)] for d in detectors}
    print(f"{'all':<10}" + "".join(f"{f'{total[d][0]}/{total[d][1]}':>14}{total[d][2]:>12}" for d in detectors))
    print("images/s: " + ", ".join(f"{d} {results[d][1]:.2f}" for d in detectors)
          + (f"; mtcnn/hog time ratio {results['hog'][1] / results['mtcnn'][1]:.2f}" if {"hog", "mtcnn"} <= set(detectors) else ""))


if __name__ == "__main__":
    main()
