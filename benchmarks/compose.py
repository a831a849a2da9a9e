"""Gen4Gen compose throughput per stage and end to end, and repaint cost on a real-size SDXL inpainting UNet.

Part 1 (``--part stages``, tiny models, light): compositions per second of each stage on this
machine, measured on the same inputs in one process:

- extract: alpha-channel cut-out, and an IS-Net-shaped ONNX saliency model at 256 px with 2 refine passes;
- layout: the offline planner, and the LLM planner against a local fake OpenAI-compatible server
  (HTTP round trip + parsing + validation; no real LLM);
- composite (paste + repaint mask) at the canvas size;
- repaint on ``likeness/tiny-sd-inpaint`` (random weights, ``--tiny-steps``);
- caption (templates) and write (PNG files + JSONL commit);
- end to end: ``compose_dataset`` with and without the tiny repaint model.

Part 2 (``--part sdxl``, heavy: run under the lock): seconds per repainted image with a real-size
SDXL inpainting UNet (9 input channels, 2.6 B parameters, random weights, fp32 CPU) and the
real-size SDXL VAE in ``StableDiffusionXLInpaintPipeline``, at ``--sdxl-size`` px and
``--sdxl-steps`` steps with guidance (two UNet passes per step). Text encoders are tiny (their cost is
once per prompt, not per step); the prompt embeddings are random with the real shapes
(77 x 2048, pooled 1280). Paper settings are 1024 px, 60 steps, strength 0.9: the per-step cost here
does not extrapolate linearly to 1024 px (attention grows faster), so read it as a floor.

    python benchmarks/compose.py --part stages
    flock /tmp/likeness-heavy.lock python benchmarks/compose.py --part sdxl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import peak_rss_gb  # noqa: E402  (sibling benchmark script)


def make_concepts(root: Path, n_photos: int = 2):
    from PIL import Image, ImageDraw

    from likeness.compose import concept_from_folder

    shapes = {"mochi": ("dog", (300, 200), (200, 40, 40)), "kettle": ("teapot", (160, 220), (40, 200, 40)),
              "anna": ("person", (150, 380), (40, 40, 200))}
    concepts = []
    for name, (noun, (w, h), colour) in shapes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n_photos):
            img = Image.new("RGBA", (480, 480), (0, 0, 0, 0))
            ImageDraw.Draw(img).ellipse((240 - w // 2, 240 - h // 2, 240 + w // 2, 240 + h // 2), fill=colour + (255,))
            img.save(folder / f"{k}.png")
        (folder / "class.txt").write_text(noun)
        concepts.append(concept_from_folder(folder))
    return concepts


class Report(dict):
    """A dict that also prints each figure as it is measured (a killed run still leaves its numbers)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        print(f"# {key}: {round(value, 3) if isinstance(value, float) else value}", file=sys.stderr, flush=True)


def rate(fn, repeats: int) -> float:
    """Calls per second: median of ``repeats`` timed calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return 1.0 / statistics.median(times)


def fake_llm_server(reply: dict):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"choices": [{"message": {"content": json.dumps(reply)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def part_stages(args) -> dict:
    import numpy as np
    import torch

    from likeness.testing.tiny_salient import saliency_onnx

    from likeness.compose import LLMPlanner, OfflinePlanner, Repainter, TemplateCaptioner, compose_dataset, composite, repaint_mask
    from likeness.compose.dataset import append_line, mask_to_image, save_image_atomic
    from likeness.segmentation.salient import OnnxBackend, extract_foreground

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="compose-bench-"))
    os.environ.setdefault("LIKENESS_CACHE", str(work / "cache"))
    concepts = make_concepts(work / "concepts")
    canvas = (args.canvas, args.canvas)
    photo = concepts[0].photos[0]
    onnx = OnnxBackend(saliency_onnx(work / "sal.onnx", size=256))
    from PIL import Image

    with Image.open(photo) as im:  # an opaque version on white for the ONNX model
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(im, mask=im.getchannel("A"))
        white.save(work / "opaque.png")
    out = Report(canvas=args.canvas, threads=args.threads)
    out["extract_alpha_per_s"] = rate(lambda: extract_foreground(photo, "alpha"), args.repeats)
    out["extract_onnx256_2pass_per_s"] = rate(lambda: extract_foreground(work / "opaque.png", onnx, passes=2), args.repeats)
    fgs = {c.name: extract_foreground(c.photos[0], "alpha") for c in concepts}
    aspects = {n: f.aspect for n, f in fgs.items()}
    priors = {c.name: c.prior for c in concepts}
    planner = OfflinePlanner()
    seeds = iter(range(10**6))
    out["layout_offline_per_s"] = rate(lambda: planner.plan(aspects, priors, canvas, next(seeds)), args.repeats * 20)
    layout = planner.plan(aspects, priors, canvas, 0)
    reply = {"objects": [{"name": n, "box": [b.x0, b.y0, b.width, b.height]} for n, b in layout.boxes.items()],
             "background": layout.background}
    server, url = fake_llm_server(reply)
    llm = LLMPlanner(url, "fake", timeout=5)
    nouns = {c.name: (c.class_noun, aspects[c.name]) for c in concepts}
    out["layout_llm_fake_server_per_s"] = rate(lambda: llm.plan(nouns, canvas), args.repeats * 5)
    server.shutdown()
    cutouts = {n: f.image for n, f in fgs.items()}
    out["composite_per_s"] = rate(lambda: repaint_mask(composite(cutouts, layout).objects), args.repeats)
    comp = composite(cutouts, layout)
    paint = repaint_mask(comp.objects)
    rep = Repainter("likeness/tiny-sd-inpaint", num_inference_steps=args.tiny_steps)
    out["repaint_tiny_per_s"] = rate(lambda: rep.repaint(comp.image, paint, "a photo", 0), args.repeats)
    out["background_tiny_per_s"] = rate(lambda: rep.background("a garden", canvas, 0), args.repeats)
    cap = TemplateCaptioner()
    rng = np.random.default_rng(0)
    out["caption_per_s"] = rate(lambda: cap.caption([c.phrase for c in concepts], "a garden", rng), args.repeats * 20)
    counter = iter(range(10**6))

    def write():
        i = next(counter)
        save_image_atomic(comp.image, work / "w" / f"{i}.png")
        save_image_atomic(comp.image, work / "w" / f"{i}c.png")
        for n, m in comp.masks.items():
            save_image_atomic(mask_to_image(m), work / "w" / f"{i}{n}.png")
        append_line(work / "w.jsonl", {"id": i})

    out["write_per_s"] = rate(write, args.repeats)
    n = args.compositions
    tic = time.perf_counter()
    compose_dataset(concepts, work / "no-repaint", n, canvas=canvas, progress=False)
    out["end_to_end_no_repaint_per_s"] = n / (time.perf_counter() - tic)
    compose_dataset(concepts, work / "warm", 1, canvas=canvas, repainter=rep, progress=False)  # model loaded
    tic = time.perf_counter()
    result = compose_dataset(concepts, work / "tiny-repaint", n, canvas=canvas, repainter=rep, progress=False)
    out["end_to_end_tiny_repaint_per_s"] = n / (time.perf_counter() - tic)
    out["end_to_end_stage_seconds"] = {k: round(v, 3) for k, v in result.stage_seconds.items()}
    out["tiny_steps"] = args.tiny_steps
    return out


def part_sdxl(args) -> dict:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from likeness.models.tiny import _sd_scheduler_config, build_tokenizer

    torch.set_num_threads(args.threads)
    tic = time.perf_counter()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # diffusers/stable-diffusion-xl-1.0-inpainting-0.1's unet/config.json
        sample_size=128, in_channels=9, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=1024,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, scaling_factor=0.13025)
    tok_dir = Path(tempfile.mkdtemp()) / "tok"
    tokenizer = build_tokenizer(tok_dir)
    small = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77)
    te1 = CLIPTextModel(CLIPTextConfig(**small))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**small, projection_dim=1280))
    sched = _sd_scheduler_config()
    sched.pop("clip_sample")
    sched.pop("set_alpha_to_one")
    pipe = StableDiffusionXLInpaintPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer,
                                            tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler(**sched),
                                            requires_aesthetics_score=False)
    pipe.set_progress_bar_config(disable=True)
    build = time.perf_counter() - tic
    params = sum(p.numel() for p in unet.parameters())
    size = args.sdxl_size
    image = Image.new("RGB", (size, size), (120, 130, 140))
    mask = Image.new("L", (size, size), 255)
    g = torch.Generator("cpu").manual_seed(0)
    embeds = dict(prompt_embeds=torch.randn(1, 77, 2048, generator=g), pooled_prompt_embeds=torch.randn(1, 1280, generator=g),
                  negative_prompt_embeds=torch.randn(1, 77, 2048, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, 1280, generator=g))
    times = []
    for _ in range(args.sdxl_images + 1):  # first call is a warm-up
        tic = time.perf_counter()
        with torch.no_grad():
            pipe(image=image, mask_image=mask, height=size, width=size, strength=1.0, guidance_scale=6.0,
                 num_inference_steps=args.sdxl_steps, generator=torch.Generator("cpu").manual_seed(1), **embeds)
        times.append(time.perf_counter() - tic)
    per_image = statistics.median(times[1:])
    return {"unet_parameters": params, "build_seconds": round(build, 1), "size": size, "steps": args.sdxl_steps,
            "strength": 1.0, "guidance_scale": 6.0, "seconds_per_image": round(per_image, 2),
            "seconds_per_step": round(per_image / args.sdxl_steps, 2), "peak_rss_gb": round(peak_rss_gb(), 2),
            "threads": args.threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["stages", "sdxl"], default="stages")
    parser.add_argument("--canvas", type=int, default=128, help="canvas side for the stage timings (default 128)")
    parser.add_argument("--tiny-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compositions", type=int, default=4)
    parser.add_argument("--sdxl-size", type=int, default=256)
    parser.add_argument("--sdxl-steps", type=int, default=2)
    parser.add_argument("--sdxl-images", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result = part_stages(args) if args.part == "stages" else part_sdxl(args)
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
