"""StellarNet cost on a real-size SDXL architecture (random weights, CPU).

Random weights do the same arithmetic as trained ones, so seconds and memory are representative;
the images are noise. Nothing is downloaded: the SDXL UNet (2.6 B parameters), VAE, CLIP ViT-L and
OpenCLIP ViT-bigG text encoders and a CLIP ViT-L/14 vision tower (the image encoder) are built from
their published configs and saved once with ``save_pretrained`` (the tokenizer is likeness's small
built-in one; vocabulary size does not change the cost).

Measured, each part in its own process so peak memory (max RSS) is per part:

1. encoder training: seconds and peak memory per step (batch 1, person-masked loss, projections +
   UNet LoRA rank 4; the first step is a warm-up and not counted), with gradient checkpointing;
2. personalization: seconds per person of the tuning-free ``personalize`` (face framing, mask,
   CLIP encoding, projections), and the loading it needs (text encoders + image encoder only);
3. generation: seconds per image, plain pipeline vs the StellarNet artifact, interleaved image by
   image on one pipeline (SDXL fits only once in 24 GB): the artifact's pseudo-words are loaded
   with ``load_textual_inversion`` and its LoRA fused for the StellarNet rounds; for the plain
   rounds the LoRA is unfused and disabled and the prompt has no pseudo-words.

Run (one heavy job at a time on a shared machine):

    flock /tmp/likeness-heavy.lock python benchmarks/stellarnet.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import benchmark_parser, peak_rss_gb, subprocess_part  # noqa: E402  (sibling benchmark script)


def build_sdxl_random(folder: Path) -> Path:
    """An SDXL-base-shaped pipeline with random weights (seed 0), saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from likeness.models.tiny import _sd_scheduler_config, build_tokenizer

    if (folder / "model_index.json").exists():
        return folder
    tokenizer = build_tokenizer(folder / "_tokenizer_src")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.13025,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, **ids))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1280, **ids))
    config = _sd_scheduler_config()
    config.pop("clip_sample"), config.pop("set_alpha_to_one")
    pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer,
                                     scheduler=EulerDiscreteScheduler(**config), force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"built SDXL-shaped pipeline (UNet {n_params / 1e6:.0f} M parameters) in {folder}", flush=True)
    return folder


def build_clip_vision_random(folder: Path) -> Path:
    """CLIP ViT-L/14 vision tower (224 px, hidden 1024, 24 layers), random weights, with its processor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                     num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768,
                                     hidden_act="quick_gelu")).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    return folder


def part_train(model: Path, clip: Path, data: Path, resolution: int, steps: int, out: Path) -> dict:
    """Seconds and memory per encoder-training step, through ``train_encoder`` itself; it also writes
    the weights folder the later parts use."""
    import shutil

    from likeness.methods import get_method

    shutil.rmtree(out, ignore_errors=True)
    method = get_method("stellarnet")
    method.train_encoder(data, out, str(model), image_encoder=str(clip), max_steps=steps + 1, resolution=resolution,
                         segmenter="heuristic", gradient_checkpointing=True, progress=False, device="cpu")
    timed = method.last_training.step_seconds[1:]
    weights = json.loads((out / "stellarnet.json").read_text())
    from safetensors.torch import load_file

    learned = sum(v.numel() for k, v in load_file(out / "stellarnet.safetensors").items() if "anchor" not in k)
    lora = sum(v.numel() for v in load_file(out / "pytorch_lora_weights.safetensors").values())
    return {"seconds_per_step": sum(timed) / len(timed), "steps": len(timed), "peak_rss_gb": peak_rss_gb(),
            "projection_params": learned, "lora_params": lora, "final_loss": weights["final_loss"]}


def part_personalize(model: Path, weights: Path, photos: list[Path], out: Path) -> dict:
    import shutil

    from likeness.methods import get_method

    shutil.rmtree(out, ignore_errors=True)
    tic = time.perf_counter()
    get_method("stellarnet").personalize({f"p{i}": [p] for i, p in enumerate(photos)}, out, str(model),
                                         weights=str(weights), segmenter="heuristic", device="cpu")
    total = time.perf_counter() - tic
    seconds = json.loads((out / "likeness.json").read_text())["config"]["seconds"]
    return {"total_seconds": total, "loading_seconds": seconds["loading"],
            "seconds_per_person": seconds["encoding"] / seconds["people"], "people": seconds["people"],
            "peak_rss_gb": peak_rss_gb(), "artifact": str(out)}


def part_generate(model: Path, artifact: Path, resolution: int, steps: int, images: int) -> dict:
    import statistics

    import torch
    from safetensors.torch import load_file

    from likeness.methods import Manifest
    from likeness.models import load_pipeline

    manifest = Manifest.load(artifact)
    pipe = load_pipeline(str(model), device="cpu", dtype="fp32")
    name, entry = next(iter(manifest.identities.items()))
    words = load_file(str(artifact / f"{name}.safetensors"))
    for key, tok, enc in (("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)):
        pipe.load_textual_inversion(words[key], token=entry.tokens[0], tokenizer=tok, text_encoder=enc)
    pipe.load_lora_weights(str(artifact), weight_name="pytorch_lora_weights.safetensors")
    template = "{} reading a book in a library"
    guidance = manifest.sampling["guidance_scale"]

    def run(prompt, seed):
        return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=resolution, width=resolution,
                    generator=torch.Generator().manual_seed(seed))

    timings = {"plain": [], "stellarnet": []}
    fused = False
    for round_ in range(images + 1):  # round 0 is a warm-up
        for label in timings:
            if label == "stellarnet" and not fused:
                pipe.enable_lora()
                pipe.fuse_lora()
                fused = True
            elif label == "plain" and fused:
                pipe.unfuse_lora()
                pipe.disable_lora()
                fused = False
            prompt = template.replace("{}", entry.subject if label == "stellarnet" else "a person")
            tic = time.perf_counter()
            run(prompt, round_)
            if round_:
                timings[label].append(time.perf_counter() - tic)
    return {label: statistics.median(v) for label, v in timings.items()} | {"all": timings, "peak_rss_gb": peak_rss_gb(),
                                                                              "guidance": guidance}


def main() -> int:
    parser = benchmark_parser(__doc__, images=2, workdir="likeness-bench-stellarnet")
    parser.set_defaults(train_steps=2, gen_steps=4)
    args = parser.parse_args()
    model, clip = args.workdir / "sdxl-random", args.workdir / "clip-vit-l-random"
    weights, artifact = args.workdir / f"weights-{args.resolution}", args.workdir / f"artifact-{args.resolution}"
    data = args.workdir / "portraits"

    if args.part == "train":
        print(json.dumps(part_train(model, clip, data, args.resolution, args.train_steps, weights)))
        return 0
    if args.part == "personalize":
        photos = sorted(data.rglob("*.png"))
        print(json.dumps(part_personalize(model, weights, photos, artifact)))
        return 0
    if args.part == "generate":
        print(json.dumps(part_generate(model, artifact, args.resolution, args.gen_steps, args.images)))
        return 0

    import subprocess

    from PIL import Image, ImageOps
    from skimage.data import astronaut

    args.workdir.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate((Image.fromarray(astronaut()), ImageOps.mirror(Image.fromarray(astronaut())))):
        (data / f"person{i}").mkdir(parents=True, exist_ok=True)
        image.save(data / f"person{i}" / "0.png")
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"from stellarnet import build_sdxl_random, build_clip_vision_random; from pathlib import Path; "
                    f"build_sdxl_random(Path({str(model)!r})); build_clip_vision_random(Path({str(clip)!r}))"], check=True)
    print(f"models ready in {time.perf_counter() - tic:.0f} s", flush=True)
    common = ["--resolution", str(args.resolution), "--workdir", str(args.workdir)]
    train = subprocess_part(__file__, ["--part", "train", "--train-steps", str(args.train_steps), *common])
    print(f"trained: {train}", flush=True)
    person = subprocess_part(__file__, ["--part", "personalize", *common])
    print(f"personalized: {person}", flush=True)
    gen = subprocess_part(__file__, ["--part", "generate", "--gen-steps", str(args.gen_steps), "--images",
                                     str(args.images), *common])

    print(f"\nSDXL-shaped pipeline + CLIP ViT-L/14 image encoder, random weights, CPU ({args.resolution} px)")
    print(f"encoder training (batch 1, person-masked loss, gradient checkpointing, {train['steps']} timed steps): "
          f"{train['seconds_per_step']:.1f} s/step, peak RSS {train['peak_rss_gb']:.1f} GB; learned: "
          f"{train['projection_params']:,} projection + {train['lora_params']:,} LoRA parameters")
    print(f"personalization (tuning-free, {person['people']} people): {person['seconds_per_person']:.2f} s per person "
          f"+ {person['loading_seconds']:.1f} s loading (text encoders, image encoder, face backend) once; "
          f"peak RSS {person['peak_rss_gb']:.1f} GB")
    plain = gen["plain"]
    print(f"generation ({args.gen_steps} steps, guidance {gen['guidance']}, median of {args.images} interleaved images; "
          f"peak RSS {gen['peak_rss_gb']:.1f} GB):")
    print(f"  {'pipeline':<12} {'s/image':>8} {'ratio to plain':>15}   all s/image")
    for label in ("plain", "stellarnet"):
        print(f"  {label:<12} {gen[label]:>8.2f} {gen[label] / plain:>15.3f}   "
              f"{', '.join(f'{t:.2f}' for t in gen['all'][label])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
