"""Generation-core cost on a real-size SD-1.5 architecture (random weights, CPU).

Random weights do the same arithmetic as trained ones, so seconds and memory are representative;
the images are noise. Nothing is downloaded: the UNet (860 M parameters), VAE and CLIP ViT-L text
encoder are built from their SD-1.5 configs and saved once with ``save_pretrained`` (the tokenizer
is likeness's small built-in one; vocabulary size does not change the cost).

Measured, each part in its own process so peak memory (max RSS) is per part:

1. seconds and peak memory per training step, Textual Inversion and DreamBooth-LoRA (the first
   step is a warm-up and not counted);
2. seconds per generated image: plain pipeline vs the same base with each artifact applied
   (TI tokens added, LoRA fused), interleaved image by image; medians and their ratio.

Run (one heavy job at a time on a shared machine):

    flock /tmp/likeness-heavy.lock python benchmarks/generation.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("textual-inversion", "dreambooth-lora")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def build_sd15_random(folder: Path) -> Path:
    """An SD-1.5-shaped pipeline with random weights (seed 0), saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from likeness.models.tiny import _sd_scheduler_config, build_tokenizer

    if (folder / "model_index.json").exists():
        return folder
    tokenizer = build_tokenizer(folder / "_tokenizer_src")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=DDIMScheduler(**_sd_scheduler_config()), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"built SD-1.5-shaped pipeline (UNet {n_params / 1e6:.0f} M parameters) in {folder}", flush=True)
    return folder


def part_train(model: Path, method_name: str, photo: Path, resolution: int, steps: int) -> dict:
    """Seconds and memory per training step, through the same setup + loop ``personalize`` uses."""
    from likeness.methods import get_method
    from likeness.methods.preparation import Augmentation, photo_batches, prepare_identities
    from likeness.methods.training import TrainingConfig, train
    from likeness.models import load_pipeline

    pipe = load_pipeline(str(model), device="cpu", dtype="fp32")
    method = get_method(method_name)
    prepared, _ = prepare_identities([("astro", [photo])], size=resolution, framing="face")
    with tempfile.TemporaryDirectory() as tmp:
        setup = method.setup(pipe, ["astro"], {**method.defaults, "out_dir": tmp})
        make_batch = photo_batches(prepared, {"astro": setup.identities["astro"].subject}, batch_size=1, aug=Augmentation())
        config = TrainingConfig(max_steps=steps + 1, learning_rate=1e-4, resolution=resolution, progress=False)
        result = train(pipe, setup.trainable, make_batch, config, tmp, modules=setup.modules, after_step=setup.after_step)
    timed = result.step_seconds[1:]
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    return {"seconds_per_step": sum(timed) / len(timed), "steps": len(timed), "weights_gb": weights / 1024**3,
            "peak_rss_gb": peak_rss_gb(), "learned": learned_parameters(method_name, setup)}


def learned_parameters(method_name: str, setup) -> int:
    """Parameters that end up in the artifact (TI optimises the embedding matrix but keeps one row per token)."""
    if method_name == "textual-inversion":
        rows = len(setup.identities["astro"].tokens)
        return sum(rows * p.shape[1] for p in setup.trainable.values())
    return sum(p.numel() for p in setup.trainable.values())


def part_artifact(model: Path, method_name: str, photo: Path, resolution: int, out: Path) -> dict:
    """A 1-step artifact through the public ``personalize`` (its cost is not what is measured)."""
    from likeness.methods import personalize

    if not (out / "likeness.json").exists():
        personalize(method_name, {"astro": [photo]}, out, str(model), max_steps=1, gradient_accumulation_steps=1,
                    resolution=resolution, progress=False, device="cpu")
    return {"artifact": str(out)}


def part_generate(model: Path, artifacts: dict, resolution: int, steps: int, images: int) -> dict:
    """Seconds per image, plain vs each artifact, interleaved image by image (plain, TI, LoRA, plain, ...)
    so that load on a shared machine hits all three alike; the median per pipeline is reported.

    Textual Inversion is applied to the plain pipeline itself with the method's own ``apply`` (it
    only adds tokens: prompts without them compute exactly as before), so plain and TI share one
    set of weights; the LoRA artifact is loaded with ``load_artifact`` (fused) as a second pipeline.
    """
    import torch

    from likeness.methods import Manifest, get_method, load_artifact
    from likeness.methods.base import Personalized
    from likeness.models import load_pipeline

    template = "{} reading a book in a library"
    plain = load_pipeline(str(model), device="cpu", dtype="fp32")
    ti_path = Path(artifacts["textual-inversion"])
    manifest = Manifest.load(ti_path)
    get_method("textual-inversion").apply(plain, ti_path, manifest)
    runners = {
        "plain": lambda seed: plain(template.replace("{}", "a person"), num_inference_steps=steps, height=resolution,
                                    width=resolution, generator=torch.Generator().manual_seed(seed)),
        "textual-inversion": Personalized(plain, manifest, ti_path),
        "dreambooth-lora": load_artifact(artifacts["dreambooth-lora"], device="cpu"),
    }
    sampling = dict(num_inference_steps=steps, height=resolution, width=resolution)
    runners = {label: (run if label == "plain" else (lambda seed, p=run: p.generate([template], [seed], **sampling)))
               for label, run in runners.items()}
    return time_interleaved(runners, images)


def time_interleaved(runners: dict, images: int) -> dict:
    """Median seconds per image of each ``runner(seed)``, called in turn image by image (round 0 is a
    warm-up), so load from other jobs on a shared machine hits every pipeline alike."""
    import statistics

    timings = {label: [] for label in runners}
    for round_ in range(images + 1):
        for label, run in runners.items():
            tic = time.perf_counter()
            run(round_)
            if round_:
                timings[label].append(time.perf_counter() - tic)
    return {label: statistics.median(v) for label, v in timings.items()} | {"all": timings, "peak_rss_gb": peak_rss_gb()}


def subprocess_part(script: str, args: list[str]) -> dict:
    """Run one part of a benchmark script in its own process (so peak memory is per part); its last line is JSON."""
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark_parser(doc: str, *, images: int, workdir: str) -> argparse.ArgumentParser:
    """The options every real-size generation benchmark takes, plus the hidden ones its parts use."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=256, help="training and generation size (default 256)")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps per method (after 1 warm-up)")
    parser.add_argument("--gen-steps", type=int, default=4, help="denoising steps per image")
    parser.add_argument("--images", type=int, default=images, help="timed images per pipeline (after 1 warm-up round)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / workdir)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--photo", type=Path, help=argparse.SUPPRESS)
    return parser


def main() -> int:
    parser = benchmark_parser(__doc__, images=3, workdir="likeness-bench-generation")
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.workdir / "sd15-random"

    if args.part == "train":
        print(json.dumps(part_train(model, args.method, args.photo, args.resolution, args.train_steps)))
        return 0
    if args.part == "artifact":
        out = args.workdir / f"artifact-{args.method}-{args.resolution}"
        print(json.dumps(part_artifact(model, args.method, args.photo, args.resolution, out)))
        return 0
    if args.part == "generate":
        print(json.dumps(part_generate(model, json.loads(args.artifacts), args.resolution, args.gen_steps, args.images)))
        return 0

    from PIL import Image
    from skimage.data import astronaut

    args.workdir.mkdir(parents=True, exist_ok=True)
    photo = args.workdir / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"from generation import build_sd15_random; from pathlib import Path; build_sd15_random(Path({str(model)!r}))"],
                   check=True)
    print(f"model ready in {time.perf_counter() - tic:.0f} s", flush=True)
    common = ["--resolution", str(args.resolution), "--workdir", str(args.workdir), "--photo", str(photo)]
    train = {}
    for method in METHODS:
        train[method] = subprocess_part(__file__, ["--part", "train", "--method", method, "--train-steps", str(args.train_steps), *common])
        print(f"trained {method}: {train[method]}", flush=True)
    artifacts = {m: subprocess_part(__file__, ["--part", "artifact", "--method", m, *common])["artifact"] for m in METHODS}
    gen = subprocess_part(__file__, ["--part", "generate", "--artifacts", json.dumps(artifacts), "--gen-steps", str(args.gen_steps),
                           "--images", str(args.images), *common])

    print(f"\nSD-1.5-shaped pipeline, random weights, CPU ({args.resolution} px)")
    print(f"training (batch 1, {args.train_steps} timed steps):")
    print(f"  {'method':<20} {'s/step':>8} {'peak RSS GB':>12} {'weights GB':>11} {'learned params':>15}")
    for method, r in train.items():
        print(f"  {method:<20} {r['seconds_per_step']:>8.2f} {r['peak_rss_gb']:>12.2f} {r['weights_gb']:>11.2f} "
              f"{r['learned']:>15,}")
    plain = gen["plain"]
    print(f"generation ({args.gen_steps} steps, guidance 7.5, median of {args.images} interleaved images; "
          f"peak RSS {gen['peak_rss_gb']:.2f} GB with plain+TI and LoRA pipelines loaded):")
    print(f"  {'pipeline':<20} {'s/image':>8} {'ratio to plain':>15}   all s/image")
    for label in ("plain", *METHODS):
        print(f"  {label:<20} {gen[label]:>8.2f} {gen[label] / plain:>15.3f}   "
              f"{', '.join(f'{t:.2f}' for t in gen['all'][label])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
