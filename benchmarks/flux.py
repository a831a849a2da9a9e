"""Flow-matching bases on real-width architectures with random weights (CPU or GPU): LoRA cost, int8 memory, editors.

Random weights do the same arithmetic as trained ones, so seconds and memory are representative; images are noise.
Nothing is downloaded. Every transformer is built at its **real width** (FLUX.1: 24 heads x 128, joint dim 4096;
FLUX.2 [klein] 4B: 24 x 128, joint dim 7680 (3 x Qwen3-4B's 2560), 128 latent channels; Qwen-Image: 24 x 128, joint
dim 3584) with its **real VAE**, but at **reduced depth** (``--depth-scale``, default 1/5 of the blocks) so that each
part fits the memory of a shared 24 GB machine: per-image time and memory of the transformer scale about linearly
with depth, so ratios between variants of one model hold; absolute seconds are for the reduced model. The text
encoders (T5-XXL, Qwen3, Qwen2.5-VL) are left out: prompts go in as ``prompt_embeds`` of the real width (their cost
is once per prompt, not per denoising step).

Each part runs in its own process, so peak memory (max RSS on CPU, ``max_memory_allocated`` on CUDA) is per part:

1. ``lora``: FLUX.1 per-image time, plain vs DreamBooth-LoRA (rank 16 on every attention projection) applied the way
   likeness applies it (``load_lora_weights`` + fuse + unload), interleaved image by image; median ratio.
2. ``klein-bf16`` / ``klein-int8``: FLUX.2 [klein] 4B-shaped, bf16 vs int8 weights (optimum-quanto on CPU,
   bitsandbytes on CUDA, through likeness's ``--quantize int8`` plan): peak memory, time per image.
3. ``editors``: time per image of FLUX.1 Kontext (one reference), FLUX.2 [klein] with one reference and
   Qwen-Image-Edit-Plus (one reference) vs the same transformer generating without a reference.

Run (one heavy job at a time on a shared machine):

    flock /tmp/likeness-heavy.lock python benchmarks/flux.py --resolution 128 --steps 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("lora", "klein-bf16", "klein-int8", "editors")
# Real block counts (double-stream, single-stream) / layers.
FLUX1_BLOCKS, KLEIN4B_BLOCKS, QWEN_LAYERS = (19, 38), (5, 20), 60


def peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


def flux1_pipe(args, kontext: bool = False):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=scaled(FLUX1_BLOCKS[0], args.depth_scale),
                                         num_single_layers=scaled(FLUX1_BLOCKS[1], args.depth_scale), attention_head_dim=128,
                                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                         guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.1159, scaling_factor=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    cls = FluxKontextPipeline if kontext else FluxPipeline
    pipe = cls(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
               transformer=transformer)
    return pipe.to(args.device, args.dtype)


def klein_pipe(args, folder: Path | None = None, quantize: str = "none"):
    """FLUX.2 [klein] 4B-shaped pipeline; with ``folder`` it is saved there once and loaded back through
    likeness's quantization plan (what ``--quantize`` does)."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    if folder is not None and (folder / "model_index.json").exists():
        from likeness.models.quantization import quantization_config

        # On CPU, quanto's int8 path computes in fp32 (its bf16 kernel fails on FLUX.2: likeness refuses that pair).
        dtype = torch.float32 if quantize == "int8" and args.device.type == "cpu" else args.dtype
        config, record = quantization_config(quantize, args.device, "flux2", dtype=dtype)
        extra = {"quantization_config": config} if config is not None else {}
        pipe = Flux2KleinPipeline.from_pretrained(folder, dtype=dtype, text_encoder=None, tokenizer=None,
                                                  **extra).to(args.device)
        record = {**record, "compute_dtype": str(dtype).replace("torch.", "")}
        pipe.likeness_quantization = record
        return pipe
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(in_channels=128, num_layers=scaled(KLEIN4B_BLOCKS[0], args.depth_scale),
                                          num_single_layers=scaled(KLEIN4B_BLOCKS[1], args.depth_scale),
                                          attention_head_dim=128, num_attention_heads=24, joint_attention_dim=7680,
                                          guidance_embeds=False)
    vae = AutoencoderKLFlux2()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer,
                              is_distilled=True)
    pipe = pipe.to(dtype=args.dtype)
    if folder is not None:
        pipe.save_pretrained(folder)
    return pipe.to(args.device)


def qwen_pipe(args, edit: bool):
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(num_layers=scaled(QWEN_LAYERS, args.depth_scale))
    vae = AutoencoderKLQwenImage()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                                time_shift_type="exponential")
    parts = dict(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None, transformer=transformer)
    pipe = QwenImageEditPlusPipeline(processor=None, **parts) if edit else QwenImagePipeline(**parts)
    return pipe.to(args.device, args.dtype)


def embeds(args, width: int, pooled: int | None = None):
    import torch

    g = torch.Generator("cpu").manual_seed(1)
    out = {"prompt_embeds": torch.randn(1, args.text_tokens, width, generator=g).to(args.device, args.dtype)}
    if pooled:
        out["pooled_prompt_embeds"] = torch.randn(1, pooled, generator=g).to(args.device, args.dtype)
    if width == 3584:  # Qwen-Image pipelines want the embeddings' mask with them
        out["prompt_embeds_mask"] = torch.ones(1, args.text_tokens, dtype=torch.long, device=args.device)
    return out


def timed(pipe, args, seed: int, **kwargs) -> float:
    import torch

    if args.device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    pipe(num_inference_steps=args.steps, height=args.resolution, width=args.resolution,
         generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kwargs)
    if args.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic


def reference(args):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.resolution, args.resolution, 3), dtype=np.uint8))


def part_lora(args) -> dict:
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from likeness.methods.baselines.dreambooth_lora import LORA_WEIGHTS, UNET_TARGETS, DreamBoothLoRA

    plain = flux1_pipe(args)
    lora = flux1_pipe(args)
    lora.transformer.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    with tempfile.TemporaryDirectory() as folder:
        type(lora).save_lora_weights(folder, weight_name=LORA_WEIGHTS,
                                     transformer_lora_layers=get_peft_model_state_dict(lora.transformer))
        del lora
        lora = flux1_pipe(args)
        lora.likeness_quantization = {"quantize": "none"}
        DreamBoothLoRA().apply(lora, folder, None)  # load_lora_weights + fuse + unload, as at generation
    kw = {**embeds(args, 4096, 768), "guidance_scale": 3.5}
    timed(plain, args, 0, **kw), timed(lora, args, 0, **kw)  # warm-up
    times = {"plain": [], "lora": []}
    for i in range(args.images):
        times["plain"].append(timed(plain, args, i, **kw))
        times["lora"].append(timed(lora, args, i, **kw))
    plain_s, lora_s = statistics.median(times["plain"]), statistics.median(times["lora"])
    return {"plain_s": plain_s, "lora_s": lora_s, "ratio": lora_s / plain_s, "peak_gb": peak_memory_gb(args.device)}


def part_klein(args, quantize: str) -> dict:
    import torch

    folder = Path(args.cache) / f"klein4b-depth{args.depth_scale:g}"
    if not (folder / "model_index.json").exists():  # built once, in its own process, then always loaded back
        subprocess.run([sys.executable, __file__, "--build-klein", str(folder), *_common(args)], check=True)
    if args.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pipe = klein_pipe(args, folder, quantize)
    kw = {**embeds(args, 7680), "guidance_scale": 1.0}
    kw["prompt_embeds"] = kw["prompt_embeds"].to(pipe.transformer.dtype if quantize == "none" else pipe.vae.dtype)
    timed(pipe, args, 0, **kw)
    seconds = statistics.median(timed(pipe, args, i, **kw) for i in range(args.images))
    params = sum(p.numel() for p in pipe.transformer.parameters())
    return {"quantize": quantize, "per_image_s": seconds, "peak_gb": peak_memory_gb(args.device),
            "transformer_params_m": params / 1e6, "quantization": pipe.likeness_quantization}


def part_editors(args) -> dict:
    result = {}
    ref = reference(args)
    for name, make_plain, make_editor, width, pooled, extra in (
        ("flux-kontext", lambda: flux1_pipe(args), lambda: flux1_pipe(args, kontext=True), 4096, 768,
         {"guidance_scale": 3.5}),
        ("flux2-reference", lambda: klein_pipe(args), None, 7680, None, {"guidance_scale": 1.0}),
        ("qwen-image-edit", lambda: qwen_pipe(args, edit=False), lambda: qwen_pipe(args, edit=True), 3584, None,
         {"true_cfg_scale": 1.0}),
    ):
        plain = make_plain()
        editor = make_editor() if make_editor else plain  # FLUX.2 [klein] takes references in the same pipeline
        kw = {**embeds(args, width, pooled), **extra}
        editor_kw = {"image": ref, "_auto_resize": False, "max_area": args.resolution**2} if name == "flux-kontext" else {"image": [ref]}
        timed(plain, args, 0, **kw), timed(editor, args, 0, **kw, **editor_kw)
        times = {"plain": [], "editor": []}
        for i in range(args.images):
            times["plain"].append(timed(plain, args, i, **kw))
            times["editor"].append(timed(editor, args, i, **kw, **editor_kw))
        plain_s, editor_s = statistics.median(times["plain"]), statistics.median(times["editor"])
        result[name] = {"plain_s": plain_s, "editor_s": editor_s, "ratio": editor_s / plain_s}
        del plain, editor
    return result


def _common(args) -> list[str]:
    return ["--resolution", str(args.resolution), "--steps", str(args.steps), "--images", str(args.images),
            "--depth-scale", str(args.depth_scale), "--text-tokens", str(args.text_tokens), "--cache", str(args.cache)] + \
        (["--device", args.device_name] if args.device_name else []) + (["--threads", str(args.threads)] if args.threads else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=PARTS, help="run one part in this process (default: all, each in its own)")
    parser.add_argument("--resolution", type=int, default=128, help="image side in px (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps per image (default: %(default)s)")
    parser.add_argument("--images", type=int, default=3, help="timed images per variant (default: %(default)s)")
    parser.add_argument("--depth-scale", type=float, default=0.2, help="fraction of the real blocks (default: %(default)s)")
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt length in tokens (default: %(default)s)")
    parser.add_argument("--device", dest="device_name", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "likeness-flux-bench"),
                        help="where the klein-shaped model is saved once (default: %(default)s)")
    parser.add_argument("--build-klein", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = torch.device(args.device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = torch.bfloat16
    if args.build_klein:
        klein_pipe(args, Path(args.build_klein))
        return 0
    if args.part:
        out = {"lora": part_lora, "editors": part_editors, "klein-bf16": lambda a: part_klein(a, "none"),
               "klein-int8": lambda a: part_klein(a, "int8")}[args.part](args)
        print("RESULT " + json.dumps(out))
        return 0
    results = {}
    for part in PARTS:
        proc = subprocess.run([sys.executable, __file__, "--part", part, *_common(args)], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        results[part] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr.strip().splitlines()[-1:]}
        print(f"{part}: {json.dumps(results[part])}", flush=True)  # each part as it ends: a long run keeps what it has
    device = torch.cuda.get_device_name() if args.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(json.dumps({"device": device, "resolution": args.resolution, "steps": args.steps, "depth_scale": args.depth_scale,
                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
