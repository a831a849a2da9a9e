"""Tuning-free peers on a real-size SD-1.5 architecture (random weights, CPU): what they add per image and per person.

Nothing is downloaded. The SD-1.5-shaped pipeline is the one ``benchmarks/generation.py`` builds; the
published files are written by :mod:`likeness.methods.peer_layouts` at their published sizes:
IP-Adapter Plus-Face SD-1.5 (resampler 768 wide, 16 queries, 12 heads, on CLIP ViT-H/14 hidden states,
a random ViT-H/14 image encoder: 32 layers, 1280 wide) and IP-Adapter-FaceID SD-1.5 (512-d face
embedding -> 4 tokens, rank-128 LoRA on every attention layer). FaceID's face embedding comes from the
tests' tiny ArcFace-signature ONNX models (no InsightFace pack ships here), so its encode time is the
face stack's cost floor, not a real r100's.

Measured in one process (one pipeline in memory: the machine has too little RAM for several):

1. per person: ``personalize`` wall time (loads the encoders, detects, encodes, writes the artifact) and
   the encode step alone (CLIP forward of the crop / ArcFace pass);
2. seconds per image: plain, then IP-Adapter Plus-Face, then IP-Adapter-FaceID (LoRA fused), then plain
   again (the sandwich shows drift from other jobs), medians of ``--images`` after one warm-up each.

Run (one heavy job at a time on a shared machine):

    flock /tmp/likeness-heavy.lock python benchmarks/peers.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from generation import benchmark_parser, peak_rss_gb, subprocess_part  # noqa: E402

TEMPLATE = "{} reading a book in a library"


def build_weights(model: Path, work: Path) -> dict:
    """Published-size random files + a ViT-H/14 image encoder folder, written once."""
    from likeness.methods.peer_layouts import clip_vision_encoder, ip_adapter_state, save_published
    from likeness.methods.peers import empty_unet

    files = {"plus-face": work / "h94" / "models" / "ip-adapter-plus-face_sd15.safetensors",
             "faceid": work / "h94-faceid" / "ip-adapter-faceid_sd15.bin", "encoder": work / "h94" / "models" / "image_encoder"}
    if not (files["encoder"] / "config.json").exists():
        clip_vision_encoder(files["encoder"], hidden=1280, projection=1024, layers=32, heads=16, image_size=224, patch=14,
                            intermediate=5120)
    unet = empty_unet(str(model))
    if not files["plus-face"].exists():
        save_published(ip_adapter_state(unet, "resampler", embed=1280, width=768, heads=12, queries=16), files["plus-face"])
    if not files["faceid"].exists():
        save_published(ip_adapter_state(unet, "faceid", embed=0, face_dim=512, lora_rank=128, std=0.02), files["faceid"])
    return {k: str(v) for k, v in files.items()}


def face_photo(work: Path) -> Path:
    """The astronaut, with the bright patch the tiny ArcFace-signature detector fires on (dlib still finds her face)."""
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    photo = astronaut().copy()
    photo[192:232, 192:232] = 255
    path = work / "astronaut-patch.png"
    Image.fromarray(np.asarray(photo)).save(path)
    return path


def arcface_folder(work: Path) -> Path:
    from test_faces import _export_tiny_arcface

    folder = work / "arcface-tiny"
    if not (folder / "w_tiny.onnx").exists():
        _export_tiny_arcface(folder)
    return folder


def part_encode(model: Path, files: dict, work: Path) -> dict:
    """Per person: personalize wall time, and the encode step alone (timed again after the models are loaded)."""
    from likeness.faces import get_backend
    from likeness.methods import personalize
    from likeness.methods.ip_adapter import clip_features, resolve_encoder
    from likeness.methods.peers import largest_face
    from likeness.methods.preparation import prepare_photo

    photo, arc = face_photo(work), arcface_folder(work)
    out = {}
    for method, options in (("ip-adapter", {"weights": files["plus-face"]}),
                            ("ip-adapter-faceid", {"weights": files["faceid"], "face_model_dir": str(arc)})):
        tic = time.perf_counter()
        artifact = personalize(method, {"astro": [photo]}, work / f"artifact-{method}", str(model), overwrite=True, **options)
        out[method] = {"personalize_s": time.perf_counter() - tic, "artifact": str(artifact)}
    encoder, _, _ = resolve_encoder(None, None, Path(files["plus-face"]), None)
    dlib = get_backend("dlib")
    tic = time.perf_counter()
    crop = prepare_photo(photo, backend=dlib, size=512, framing="face").image
    face_s = time.perf_counter() - tic
    tic = time.perf_counter()
    clip_features(encoder, crop, hidden_states=True)
    out["ip-adapter"].update(encode_s=time.perf_counter() - tic, face_s=face_s)
    arcface = get_backend("arcface", model_dir=str(arc.resolve()))
    tic = time.perf_counter()
    largest_face(photo, arcface)
    out["ip-adapter-faceid"].update(encode_s=time.perf_counter() - tic, face_s=0.0)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def part_generate(model: Path, artifacts: dict, resolution: int, steps: int, images: int) -> dict:
    """Seconds per image on one pipeline: plain, + IP-Adapter, + FaceID (fused LoRA), plain again."""
    import torch
    from safetensors.torch import load_file

    from likeness.methods import Manifest, get_method
    from likeness.methods.peers import EMBEDDINGS_FILE, PeerPersonalized
    from likeness.models import load_pipeline

    pipe = load_pipeline(str(model), device="cpu", dtype="fp32")
    sampling = dict(num_inference_steps=steps, height=resolution, width=resolution)

    def timed(run) -> list[float]:
        times = []
        for seed in range(images + 1):
            tic = time.perf_counter()
            run(seed)
            if seed:
                times.append(time.perf_counter() - tic)
        return times

    def plain(seed):
        pipe(TEMPLATE.replace("{}", "a person"), generator=torch.Generator().manual_seed(seed), guidance_scale=7.5, **sampling)

    timings = {"plain": timed(plain)}
    for method in ("ip-adapter", "ip-adapter-faceid"):
        folder = Path(artifacts[method])
        manifest = Manifest.load(folder)
        peer = get_method(method)
        peer.apply(pipe, folder, manifest)
        person = PeerPersonalized(pipe, manifest, folder, peer, load_file(str(folder / EMBEDDINGS_FILE)))
        timings[method] = timed(lambda seed: person.generate([TEMPLATE], [seed], guidance_scale=7.5, **sampling))
        pipe.unload_ip_adapter()
    timings["plain (again)"] = timed(plain)  # same arithmetic as plain (FaceID's fused LoRA costs nothing)
    return {k: statistics.median(v) for k, v in timings.items()} | {"all": timings, "peak_rss_gb": peak_rss_gb()}


def main() -> int:
    parser = benchmark_parser(__doc__, images=3, workdir="likeness-bench-generation")
    parser.add_argument("--files", help=argparse_suppress())
    parser.add_argument("--artifacts", help=argparse_suppress())
    args = parser.parse_args()
    model = args.workdir / "sd15-random"
    if args.part == "weights":
        print(json.dumps(build_weights(model, args.workdir)))
        return 0
    if args.part == "encode":
        print(json.dumps(part_encode(model, json.loads(args.files), args.workdir)))
        return 0
    if args.part == "generate":
        print(json.dumps(part_generate(model, json.loads(args.artifacts), args.resolution, args.gen_steps, args.images)))
        return 0
    import subprocess

    args.workdir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"from generation import build_sd15_random; from pathlib import Path; build_sd15_random(Path({str(model)!r}))"],
                   check=True)
    common = ["--workdir", str(args.workdir)]
    files = subprocess_part(__file__, ["--part", "weights", *common])
    print(f"model and published-size weights ready in {time.perf_counter() - tic:.0f} s", flush=True)
    enc = subprocess_part(__file__, ["--part", "encode", "--files", json.dumps(files), *common])
    artifacts = {m: enc[m]["artifact"] for m in ("ip-adapter", "ip-adapter-faceid")}
    gen = subprocess_part(__file__, ["--part", "generate", "--artifacts", json.dumps(artifacts), "--resolution",
                                     str(args.resolution), "--gen-steps", str(args.gen_steps), "--images", str(args.images), *common])

    print(f"\nSD-1.5-shaped pipeline, random weights, CPU ({args.resolution} px, {args.gen_steps} steps, guidance 7.5)")
    print(f"per person (peak RSS {enc['peak_rss_gb']:.2f} GB):")
    print(f"  {'method':<20} {'personalize s':>14} {'face s':>7} {'encode s':>9}")
    for method in artifacts:
        r = enc[method]
        print(f"  {method:<20} {r['personalize_s']:>14.2f} {r['face_s']:>7.2f} {r['encode_s']:>9.2f}")
    plain = (gen["plain"] + gen["plain (again)"]) / 2
    print(f"per image (median of {args.images} after a warm-up; peak RSS {gen['peak_rss_gb']:.2f} GB):")
    print(f"  {'pipeline':<20} {'s/image':>8} {'ratio to plain':>15}   all s/image")
    for label in ("plain", "ip-adapter", "ip-adapter-faceid", "plain (again)"):
        print(f"  {label:<20} {gen[label]:>8.2f} {gen[label] / plain:>15.3f}   {', '.join(f'{t:.2f}' for t in gen['all'][label])}")
    return 0


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
