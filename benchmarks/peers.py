"""Tuning-free peers on real-size SD-1.5 / SDXL architectures (random weights, CPU): what they add per image and per person.

Nothing is downloaded. The SD-1.5-shaped pipeline is the one ``benchmarks/generation.py`` builds, the
SDXL-shaped one the one ``benchmarks/stellarnet.py`` builds (``--sdxl-model`` reuses an existing copy).
The published files are written by :mod:`likeness.testing.peer_layouts` at their published sizes:

- IP-Adapter Plus-Face SD-1.5: resampler 768 wide, 16 queries, 12 heads, on CLIP ViT-H/14 hidden states
  (a random ViT-H/14 image encoder: 32 layers, 1280 wide);
- IP-Adapter-FaceID SD-1.5: 512-d face embedding -> 4 tokens, rank-128 LoRA on every attention layer;
- PhotoMaker v1 (SDXL): CLIP ViT-L/14 ID tower (24 layers, 1024 wide, 224 px) + fuse module (2048 wide),
  UNet LoRA of rank 64 on every attention projection;
- InstantID (SDXL): face resampler 1280 wide, 20 heads, 16 queries on the 512-d face embedding, and an
  IdentityNet ControlNet of the SDXL UNet's shape (1.25 B parameters);
- PuLID v1 (SDXL): EVA02-CLIP-L-14-336 vision tower (24 blocks, 1024 wide, 336 px, our own torch port), the
  ``IDEncoder`` (1280 -> 10 tokens of 2048) and ``id_to_k`` / ``id_to_v`` on all 70 cross-attention layers.

The ArcFace models are random-weight iresnet recognisers exported to ONNX at their published sizes (r50
as in buffalo_l for FaceID, r100 as in antelopev2 for InstantID: 512-d), run by the ``arcface`` backend
through onnxruntime as a user's pack would be; the detector is the tests' tiny SCRFD-signature model (no
SCRFD export ships here), so detection costs less than a real SCRFD-10G (a few tens of ms at 640 px).

Measured per family, each part in its own process (peak RSS per part; the machine fits one pipeline):

1. per person: ``personalize`` wall time (loads the encoders, detects, encodes, writes the artifact) and
   the encode step alone (face framing / detection, then the encoder's forward), after the models are loaded;
2. seconds per image on one pipeline: plain, then each peer (adapter loaded or LoRA fused), then plain
   again (the sandwich shows drift from other jobs); medians of ``--images`` after one warm-up each, in
   wall seconds and in the process's CPU seconds (which other jobs on the cores stretch far less).

Run (one heavy job at a time on a shared machine; SDXL separately if memory is short):

    flock /tmp/likeness-heavy.lock python benchmarks/peers.py --images 2 --gen-steps 2 --threads 1
    flock /tmp/likeness-heavy.lock python benchmarks/peers.py --only photomaker,instantid --images 1 --gen-steps 2 --threads 1
    flock /tmp/likeness-heavy.lock python benchmarks/peers.py --only pulid --images 1 --gen-steps 2 --threads 1
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from generation import benchmark_parser, peak_rss_gb  # noqa: E402

TEMPLATE = "{} reading a book in a library"
FAMILY = {"ip-adapter": "sd15", "ip-adapter-faceid": "sd15", "photomaker": "sdxl", "instantid": "sdxl", "pulid": "sdxl"}
GUIDANCE = {"sd15": 7.5, "sdxl": 5.0}
PHOTOMAKER_LORA_RANK = 64


def build_weights(family: str, model: Path, work: Path) -> dict:
    """Published-size random files for the family's peers, written once."""
    from likeness.testing.peer_layouts import (
        clip_vision_encoder,
        identitynet,
        ip_adapter_state,
        photomaker_state,
        save_published,
    )
    from likeness.methods.peers.common import empty_unet

    unet = empty_unet(str(model))
    if family == "sd15":
        files = {"plus-face": work / "h94" / "models" / "ip-adapter-plus-face_sd15.safetensors",
                 "faceid": work / "h94-faceid" / "ip-adapter-faceid_sd15.bin", "encoder": work / "h94" / "models" / "image_encoder"}
        if not (files["encoder"] / "config.json").exists():
            clip_vision_encoder(files["encoder"], hidden=1280, projection=1024, layers=32, heads=16, image_size=224, patch=14,
                                intermediate=5120)
        if not files["plus-face"].exists():
            save_published(ip_adapter_state(unet, "resampler", embed=1280, width=768, heads=12, queries=16), files["plus-face"])
        if not files["faceid"].exists():
            save_published(ip_adapter_state(unet, "faceid", embed=0, face_dim=512, lora_rank=128, std=0.02), files["faceid"])
        files["arcface"] = arcface_folder(work, "r50")
    else:
        files = {"photomaker": work / "photomaker" / "photomaker-v1.bin", "instantid": work / "instantid" / "ip-adapter.bin"}
        if not files["photomaker"].exists():
            save_published(photomaker_state(str(model), hidden=1024, layers=24, patch=14, image_size=224,
                                            lora_rank=PHOTOMAKER_LORA_RANK), files["photomaker"])
        if not files["instantid"].exists():
            save_published(ip_adapter_state(unet, "resampler", embed=512, width=1280, heads=20, queries=16), files["instantid"])
        if not (files["instantid"].parent / "ControlNetModel" / "config.json").exists():
            identitynet(str(model), files["instantid"].parent / "ControlNetModel")
        files.update(pulid_files(unet, work))
        files["arcface"] = arcface_folder(work, "r100")
    return {k: str(v) for k, v in files.items()}


def pulid_files(unet, work: Path) -> dict:
    """PuLID v1 and the EVA02-CLIP checkpoint at their published sizes (random weights), written once."""
    from likeness.testing.peer_layouts import eva_clip_state, pulid_state, save_flat

    files = {"pulid": work / "pulid" / "pulid_v1.bin", "eva": work / "pulid" / "EVA02_CLIP_L_336_psz14_s6B.pt"}
    if not files["pulid"].exists():
        save_flat(pulid_state(unet, version="v1", face_dim=512, eva_width=1024, eva_embed=768, hidden=1024, std=0.02),
                  files["pulid"])
    if not files["eva"].exists():
        save_flat(eva_clip_state(width=1024, layers=24, mlp_hidden=2730, patch=14, image_size=336, embed_dim=768),
                  files["eva"])
    return files


def arcface_folder(work: Path, arch: str) -> Path:
    """The tiny SCRFD-signature detector (likeness.testing.tiny_arcface) + a random-weight iresnet recogniser (512-d) as ONNX."""
    from likeness.testing.tiny_arcface import export_iresnet_onnx, export_tiny_arcface, random_iresnet

    folder = work / f"arcface-{arch}"
    if (folder / f"{arch}_random.onnx").exists():
        return folder
    tiny = export_tiny_arcface(work / "arcface-tiny-export")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny / "det_tiny.onnx", folder / "det_tiny.onnx")
    layers = {"r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}[arch]
    export_iresnet_onnx(folder / f"{arch}_random.onnx", random_iresnet(layers, embedding=512, widths=(64, 128, 256, 512)))
    return folder


def face_photo(work: Path) -> Path:
    """The astronaut, with the bright patch the tiny SCRFD-signature detector fires on (dlib still finds her face)."""
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    photo = astronaut().copy()
    photo[192:232, 192:232] = 255
    path = work / "astronaut-patch.png"
    Image.fromarray(np.asarray(photo)).save(path)
    return path


def peer_options(method: str, files: dict) -> dict:
    return {"ip-adapter": {"weights": files.get("plus-face")},
            "ip-adapter-faceid": {"weights": files.get("faceid"), "face_model_dir": files.get("arcface")},
            "photomaker": {"weights": files.get("photomaker")},
            "instantid": {"weights": files.get("instantid"), "face_model_dir": files.get("arcface")},
            "pulid": {"weights": files.get("pulid"), "eva_clip": files.get("eva"), "face_model_dir": files.get("arcface")}}[method]


def encode_once(method: str, files: dict, photo: Path) -> tuple[float, float]:
    """(face seconds, encoder seconds) of one person's encode step, models already loaded (one untimed warm-up)."""
    from likeness.faces import get_backend
    from likeness.methods.peers.common import largest_face
    from likeness.methods.preparation import prepare_photo

    if method == "pulid":  # ArcFace, then align + parse + EVA02-CLIP + the ID encoder
        return encode_pulid(files, photo)
    if method in ("ip-adapter-faceid", "instantid"):  # the ArcFace stack is the whole encoder
        arcface = get_backend("arcface", model_dir=str(Path(files["arcface"]).resolve()))
        largest_face(photo, arcface)
        tic = time.perf_counter()
        largest_face(photo, arcface)
        return 0.0, time.perf_counter() - tic
    dlib = get_backend("dlib")
    framing = "face" if method == "ip-adapter" else "upper_body"
    tic = time.perf_counter()
    crop = prepare_photo(photo, backend=dlib, size=512, framing=framing).image
    face_s = time.perf_counter() - tic
    if method == "ip-adapter":
        from likeness.methods.peers.ip_adapter import clip_features, resolve_encoder

        encoder, _, _ = resolve_encoder(None, None, Path(files["plus-face"]), None)

        def run():
            clip_features(encoder, crop, hidden_states=True)
    else:
        from transformers import CLIPImageProcessor

        from likeness.methods.peers.photomaker import load_photomaker

        encoder, _ = load_photomaker(Path(files["photomaker"]), files["model"])
        size = encoder.tower.config.image_size

        def run():
            encoder.id_embeddings(CLIPImageProcessor(size=size, crop_size=size)([crop], return_tensors="pt").pixel_values)
    run()
    tic = time.perf_counter()
    run()
    return face_s, time.perf_counter() - tic


def encode_pulid(files: dict, photo: Path) -> tuple[float, float]:
    """(ArcFace seconds, the rest of PuLID's encode: align, parse, EVA02-CLIP tower, ID encoder), models loaded."""
    import tempfile

    from likeness.methods import get_method
    from likeness.methods.peers.common import largest_face
    from likeness.models import base_model_info

    method = get_method("pulid")
    options = {**method.defaults, **peer_options("pulid", files)}
    context, _ = method.prepare(files["model"], base_model_info(files["model"]), options)
    with tempfile.TemporaryDirectory() as out:
        method.encode("astro", [photo], context, options, Path(out))  # warm-up
        tic = time.perf_counter()
        largest_face(photo, context["backend"])
        face_s = time.perf_counter() - tic
        tic = time.perf_counter()
        method.encode("astro", [photo], context, options, Path(out))
        total = time.perf_counter() - tic
    return face_s, total - face_s


def part_encode(methods: list[str], model: Path, files: dict, work: Path) -> dict:
    """Per person: personalize wall time, and the encode step alone (timed again after the models are loaded)."""
    from likeness.methods import personalize

    photo = face_photo(work)
    out = {}
    for method in methods:
        tic = time.perf_counter()
        artifact = personalize(method, {"astro": [photo]}, work / f"artifact-{method}", str(model), overwrite=True,
                               **peer_options(method, files))
        out[method] = {"personalize_s": time.perf_counter() - tic, "artifact": str(artifact)}
        face_s, encode_s = encode_once(method, {**files, "model": str(model)}, photo)
        out[method].update(face_s=face_s, encode_s=encode_s)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def part_generate(methods: list[str], model: Path, artifacts: dict, resolution: int, steps: int, images: int,
                  guidance: float, dtype: str) -> dict:
    """Seconds per image on one pipeline: plain, + each peer, plain again."""
    import torch
    from safetensors.torch import load_file

    from likeness.methods import Manifest, get_method
    from likeness.methods.peers.common import EMBEDDINGS_FILE, PeerPersonalized
    from likeness.models import load_pipeline

    pipe = load_pipeline(str(model), device="cpu", dtype=dtype)
    sampling = dict(num_inference_steps=steps, height=resolution, width=resolution, guidance_scale=guidance)

    cpu: dict[str, list[float]] = {}

    def timed(run, label: str) -> list[float]:
        """Wall seconds per image; the process's CPU seconds go to ``cpu`` (they drift less when other jobs
        share the cores: a busy machine stretches wall time, not the arithmetic this process does)."""
        times = []
        for seed in range(images + 1):
            tic, cpu_tic = time.perf_counter(), time.process_time()
            run(seed)
            if seed:
                times.append(time.perf_counter() - tic)
                cpu.setdefault(label, []).append(time.process_time() - cpu_tic)
        return times

    def plain(seed):
        pipe(TEMPLATE.replace("{}", "a person"), generator=torch.Generator().manual_seed(seed), **sampling)

    timings = {"plain": timed(plain, "plain")}
    for method in methods:
        folder = Path(artifacts[method])
        manifest = Manifest.load(folder)
        peer = get_method(method)
        saved = dict(pipe.unet.attn_processors)  # PuLID replaces the cross-attention processors; put them back after
        peer_pipe = peer.apply(pipe, folder, manifest) or pipe  # InstantID: a ControlNet pipeline on the same parts
        tensors = {k: v.to(dtype=pipe.unet.dtype) for k, v in load_file(str(folder / EMBEDDINGS_FILE)).items()}
        person = PeerPersonalized(peer_pipe, manifest, folder, peer, tensors)
        timings[method] = timed(lambda seed: person.generate([TEMPLATE], [seed], **sampling), method)  # {} = the person
        if hasattr(peer_pipe.unet, "encoder_hid_proj") and peer_pipe.unet.encoder_hid_proj is not None:
            peer_pipe.unload_ip_adapter()
        if method == "pulid":
            pipe.unet.set_attn_processor(saved)
    timings["plain (again)"] = timed(plain, "plain (again)")  # same arithmetic as plain (a fused LoRA costs nothing)
    return {k: statistics.median(v) for k, v in timings.items()} | {
        "all": timings, "cpu": {k: statistics.median(v) for k, v in cpu.items()}, "peak_rss_gb": peak_rss_gb()}


def subprocess_part(script: str, args: list[str]) -> dict:
    """One part in its own process; its last stdout line is JSON. Its stderr is kept and shown on failure
    (the previous version swallowed it, so a failing part left no reason)."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr[-6000:])
        raise SystemExit(f"part {args[1]} failed with exit status {out.returncode} (its stderr is above)")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_model(family: str, model: Path) -> None:
    if (model / "model_index.json").exists():
        return
    builder = "from generation import build_sd15_random as build" if family == "sd15" else \
        "from stellarnet import build_sdxl_random as build"
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); {builder}; "
                    f"from pathlib import Path; build(Path({str(model)!r}))"], check=True)


def main() -> int:
    import argparse

    parser = benchmark_parser(__doc__, images=3, workdir="likeness-bench-generation")
    parser.add_argument("--only", default="ip-adapter,ip-adapter-faceid",
                        help=f"peers to measure, comma-separated (default the SD-1.5 ones); any of {', '.join(FAMILY)}")
    parser.add_argument("--sdxl-model", type=Path, help="an SDXL-shaped pipeline folder to reuse (default WORKDIR/sdxl-random)")
    parser.add_argument("--dtype", default="fp32", help="generation dtype (default fp32)")
    parser.add_argument("--threads", type=int, help="torch threads per part (1 keeps timings steady on a shared machine: "
                                                     "a core taken by another job then slows nothing but that core)")
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in methods if m not in FAMILY]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(FAMILY)}")
    models = {"sd15": args.workdir / "sd15-random", "sdxl": args.sdxl_model or args.workdir / "sdxl-random"}
    if args.part:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        family = args.family
        chosen = [m for m in methods if FAMILY[m] == family]
        if args.part == "weights":
            result = build_weights(family, models[family], args.workdir)
        elif args.part == "encode":
            result = part_encode(chosen, models[family], json.loads(args.files), args.workdir)
        else:
            result = part_generate(chosen, models[family], json.loads(args.artifacts), args.resolution, args.gen_steps,
                                   args.images, GUIDANCE[family], args.dtype)
        print(json.dumps(result))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    for family in ("sd15", "sdxl"):
        chosen = [m for m in methods if FAMILY[m] == family]
        if not chosen:
            continue
        tic = time.perf_counter()
        build_model(family, models[family])
        common = ["--workdir", str(args.workdir), "--family", family, "--only", ",".join(chosen)]
        if args.sdxl_model:
            common += ["--sdxl-model", str(args.sdxl_model)]
        if args.threads:
            common += ["--threads", str(args.threads)]
        files = subprocess_part(__file__, ["--part", "weights", *common])
        print(f"{family}: model and published-size weights ready in {time.perf_counter() - tic:.0f} s", flush=True)
        enc = subprocess_part(__file__, ["--part", "encode", "--files", json.dumps(files), *common])
        print(f"{family}: encode part done (peak RSS {enc['peak_rss_gb']:.2f} GB)", flush=True)
        artifacts = {m: enc[m]["artifact"] for m in chosen}
        gen = subprocess_part(__file__, ["--part", "generate", "--artifacts", json.dumps(artifacts), "--resolution",
                                         str(args.resolution), "--gen-steps", str(args.gen_steps), "--images",
                                         str(args.images), "--dtype", args.dtype, *common])
        label = {"sd15": "SD-1.5", "sdxl": "SDXL"}[family]
        print(f"\n{label}-shaped pipeline, random weights, CPU {args.dtype}, {args.threads or 'default'} thread(s) "
              f"({args.resolution} px, {args.gen_steps} steps, guidance {GUIDANCE[family]})")
        print(f"per person (peak RSS {enc['peak_rss_gb']:.2f} GB):")
        print(f"  {'method':<20} {'personalize s':>14} {'face s':>7} {'encode s':>9}")
        for method in chosen:
            r = enc[method]
            print(f"  {method:<20} {r['personalize_s']:>14.2f} {r['face_s']:>7.2f} {r['encode_s']:>9.2f}")
        plain = (gen["plain"] + gen["plain (again)"]) / 2
        plain_cpu = (gen["cpu"]["plain"] + gen["cpu"]["plain (again)"]) / 2
        print(f"per image (median of {args.images} after a warm-up; peak RSS {gen['peak_rss_gb']:.2f} GB):")
        print(f"  {'pipeline':<20} {'s/image':>8} {'ratio':>6} {'CPU s/image':>12} {'CPU ratio':>10}   all s/image")
        for name in ("plain", *chosen, "plain (again)"):
            print(f"  {name:<20} {gen[name]:>8.2f} {gen[name] / plain:>6.3f} {gen['cpu'][name]:>12.2f} "
                  f"{gen['cpu'][name] / plain_cpu:>10.3f}   {', '.join(f'{t:.2f}' for t in gen['all'][name])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
