"""PhotoVerse cost on a real-size SD-1.5 + CLIP ViT-L/14 (random weights, CPU), beside Textual Inversion.

Random weights do the same arithmetic as trained ones, so seconds and memory are representative;
the images are noise. Nothing is downloaded: the SD-1.5-shaped pipeline is the one
``benchmarks/generation.py`` builds, and the image encoder is a ``CLIPVisionModel`` built from the
ViT-L/14 config (24 layers, width 1024, 224 px, patch 14: 257 tokens) and saved with ``save_pretrained``.

Measured, each part in its own process so peak memory (max RSS) is per part:

1. encoder training: seconds per step (batch 1, the first step is a warm-up) and peak memory,
   through ``PhotoVerse.train_encoder`` on a two-portrait folder (the identity term runs when
   ``likeness.faces.identity_loss`` is installed, and the output says whether it did);
2. personalization: seconds of one ``personalize`` call per person (CLIP load + face detection +
   encoding) vs Textual Inversion's per-person training time = its measured seconds per step x its
   default 3000 steps x 4 accumulation micro-steps;
3. generation: seconds per image, plain pipeline vs the same pipeline with the PhotoVerse artifact
   applied (LoRA fused, image branch on every cross-attention), interleaved image by image; medians.

Run (one heavy job at a time on a shared machine):

    flock /tmp/likeness-heavy.lock python benchmarks/photoverse.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import benchmark_parser, build_sd15_random, peak_rss_gb, subprocess_part, time_interleaved  # noqa: E402
from generation import part_train as part_train_tuned  # noqa: E402

TI_STEPS, TI_ACCUMULATION = 3000, 4  # Textual Inversion's defaults (likeness.methods.baselines.textual_inversion)


def build_clip_vit_l14(folder: Path) -> Path:
    """A CLIP ViT-L/14 vision tower with random weights (seed 0), saved with save_pretrained."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


def identity_loss_or_none():
    try:
        from likeness.faces.identity_loss import build_identity_loss
    except ImportError:
        return None, "off (likeness.faces.identity_loss not installed)"
    return build_identity_loss("dlib"), "dlib"


def part_encoder(model: Path, clip: Path, data: Path, out: Path, resolution: int, steps: int) -> dict:
    from likeness.methods import get_method

    loss, label = identity_loss_or_none()
    method = get_method("photoverse")
    method.train_encoder(data, out, str(model), image_encoder=str(clip), identity_loss=loss, max_steps=steps + 1,
                         resolution=resolution, progress=False, device="cpu", overwrite=True)
    timed = method.last_result.step_seconds[1:]
    trained = sum(p.numel() for p in method.last_training.trainable.values())
    return {"seconds_per_step": sum(timed) / len(timed), "steps": len(timed), "peak_rss_gb": peak_rss_gb(),
            "optimised_parameters": trained, "identity_loss": label, "encoder": str(out),
            "files": {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.suffix == ".safetensors"}}


def part_personalize(model: Path, encoder: Path, photo: Path, out: Path) -> dict:
    from likeness.methods import get_method

    tic = time.perf_counter()
    get_method("photoverse").personalize({"astro": [photo]}, out, str(model), weights=str(encoder), device="cpu",
                                         overwrite=True)
    return {"seconds": time.perf_counter() - tic, "artifact": str(out), "peak_rss_gb": peak_rss_gb()}


def part_generate(model: Path, artifact: Path, resolution: int, steps: int, images: int) -> dict:
    """Plain and PhotoVerse share one pipeline: for each plain image the UNet's own processors are put
    back and the image projection removed (the fused LoRA costs nothing), then PhotoVerse's restored."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from likeness.methods import get_method

    personalized = get_method("photoverse").load(artifact, device="cpu", dtype="fp32")
    pipe, unet = personalized.pipe, personalized.pipe.unet
    photoverse_processors, projection = dict(unet.attn_processors), unet.encoder_hid_proj
    template = "{} reading a book in a library"
    sampling = dict(num_inference_steps=steps, height=resolution, width=resolution, guidance_scale=7.5)

    def plain(seed):
        unet.set_attn_processor(AttnProcessor2_0())
        unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = None, None
        try:
            pipe(template.replace("{}", "a person"), generator=torch.Generator().manual_seed(seed), **sampling)
        finally:
            unet.set_attn_processor(dict(photoverse_processors))  # diffusers pops from the dict it is given
            unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = projection, "ip_image_proj"

    runners = {"plain": plain, "photoverse": lambda seed: personalized.generate([template], [seed], **sampling)}
    return time_interleaved(runners, images)


def main() -> int:
    parser = benchmark_parser(__doc__, images=4, workdir="likeness-bench-photoverse")
    parser.add_argument("--clip", type=Path, help="(part) image encoder folder")
    parser.add_argument("--encoder", type=Path, help="(part) trained encoder folder")
    parser.add_argument("--artifact", type=Path, help="(part) artifact folder")
    args = parser.parse_args()
    model, clip = args.workdir / "sd15-random", args.workdir / "clip-vit-l14-random"

    if args.part == "model":
        build_sd15_random(model)
        build_clip_vit_l14(clip)
        print(json.dumps({"model": str(model), "clip": str(clip)}))
        return 0
    if args.part == "encoder":
        print(json.dumps(part_encoder(model, clip, args.photo.parent / "portraits", args.workdir / "encoder",
                                      args.resolution, args.train_steps)))
        return 0
    if args.part == "ti":
        print(json.dumps(part_train_tuned(model, "textual-inversion", args.photo, args.resolution, args.train_steps)))
        return 0
    if args.part == "personalize":
        print(json.dumps(part_personalize(model, args.encoder, args.photo, args.workdir / "artifact")))
        return 0
    if args.part == "generate":
        print(json.dumps(part_generate(model, args.artifact, args.resolution, args.gen_steps, args.images)))
        return 0

    from PIL import Image, ImageOps
    from skimage.data import astronaut

    portraits = args.workdir / "portraits"
    (portraits / "astro").mkdir(parents=True, exist_ok=True)
    photo = args.workdir / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    Image.fromarray(astronaut()).save(portraits / "astro" / "0.png")
    ImageOps.mirror(Image.fromarray(astronaut())).save(portraits / "astro" / "1.png")
    common = ["--resolution", str(args.resolution), "--workdir", str(args.workdir), "--photo", str(photo)]
    tic = time.perf_counter()
    subprocess_part(__file__, ["--part", "model", *common])
    print(f"models ready in {time.perf_counter() - tic:.0f} s", flush=True)
    enc = subprocess_part(__file__, ["--part", "encoder", "--train-steps", str(args.train_steps), *common])
    print(f"encoder: {enc}", flush=True)
    ti = subprocess_part(__file__, ["--part", "ti", "--train-steps", str(args.train_steps), *common])
    print(f"textual inversion: {ti}", flush=True)
    pers = subprocess_part(__file__, ["--part", "personalize", "--encoder", enc["encoder"], *common])
    print(f"personalize: {pers}", flush=True)
    gen = subprocess_part(__file__, ["--part", "generate", "--artifact", pers["artifact"], "--gen-steps",
                                     str(args.gen_steps), "--images", str(args.images), *common])

    print(f"\nSD-1.5-shaped pipeline + CLIP ViT-L/14 image encoder, random weights, CPU ({args.resolution} px)")
    print(f"encoder training (batch 1, {enc['steps']} timed steps, identity loss {enc['identity_loss']}):")
    print(f"  {enc['seconds_per_step']:.2f} s/step, peak RSS {enc['peak_rss_gb']:.2f} GB, "
          f"{enc['optimised_parameters']:,} optimised parameters; files {enc['files']}")
    ti_person = ti["seconds_per_step"] * TI_STEPS * TI_ACCUMULATION
    print("personalization, seconds per person:")
    print(f"  photoverse (encode only, CLIP load included) {pers['seconds']:>10.2f}")
    print(f"  textual-inversion ({ti['seconds_per_step']:.2f} s/step x {TI_STEPS} x {TI_ACCUMULATION}) {ti_person:>10.0f}")
    print(f"  textual-inversion / photoverse: {ti_person / pers['seconds']:.0f}x (target >= 100x)")
    plain = gen["plain"]
    print(f"generation ({args.gen_steps} steps, guidance 7.5, {args.images} images each, interleaved; medians):")
    print(f"  {'pipeline':<12} {'s/image':>8} {'ratio to plain':>15}")
    for label in ("plain", "photoverse"):
        print(f"  {label:<12} {gen[label]:>8.2f} {gen[label] / plain:>15.3f}")
    print("  (target <= 1.30)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
