"""Text-image metric speed on a real-size CLIP ViT-L/14 with random weights (built from its config, no download).

    flock /tmp/likeness-heavy.lock python benchmarks/text_metrics.py --images 12 --repeats 2

Prints, side by side in one run:
  A. images/s of the CLIP image encoder, batched (--batch) vs one image at a time (target >= 3x; on a 2-core
     CPU the encoder is compute-bound, so batching gains far less than on a GPU);
  B. CLIP-T + CLIP-I + CLIP-N computed together by likeness' evaluator (one model load, each generated image
     and each reference photo encoded once) vs each metric loading the model and encoding on its own (as
     torchmetrics-style metrics do): seconds, model loads and images encoded, and the ratio.
Text encoder and vocabulary size are ViT-L/14's (49408 tokens; the tokenizer is likeness' built CLIPTokenizer).
  C. (--parts A,C or A,B,C) the judge (judge-prompt: one image + the rubric, greedy, up to 128 new tokens) at
     Qwen2.5-VL-3B's sizes with random weights, through likeness' own loader, features and metric: images/s
     beside CLIP's from part A, then the same images again (answers from the cache). Random weights never stop
     early, so every answer runs the full 128 tokens (a real "Reason: ... Score: n" answer is about 30).
     --text-layers / --vision-layers run a shallower model of the same widths where memory or time is short:

    flock /tmp/likeness-heavy.lock python benchmarks/text_metrics.py --parts A,C --images 4 --text-layers 4 --vision-layers 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.data import astronaut


def build_clip_l14(folder: Path) -> Path:
    """CLIP ViT-L/14 (openai/clip-vit-large-patch14's sizes), random weights, saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from likeness.models.tiny_vision import _clip_tokenizer

    if (folder / "config.json").exists():
        return folder
    tok = _clip_tokenizer(folder / "_tokenizer", 77)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14),
        projection_dim=768,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
                              tokenizer=tok)
    processor.save_pretrained(folder)
    return folder


def make_samples(work: Path, count: int):
    from likeness.data.identities import Identity
    from likeness.data.prompts import open_prompts
    from likeness.metrics import Sample

    photo = Image.fromarray(astronaut())
    rng = np.random.default_rng(0)
    refs = []
    for k in range(2):
        path = work / f"ref{k}.png"
        (photo if k == 0 else photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)).resize((512, 512)).save(path)
        refs.append(path)
    person = Identity("astronaut", refs)
    prompts = open_prompts()
    samples = []
    for k in range(count):
        x, y = rng.integers(0, 200, size=2)
        path = work / f"gen{k}.png"
        photo.crop((x, y, x + 312, y + 312)).resize((256, 256)).save(path)
        p = prompts[k * 37 % len(prompts)]
        samples.append(Sample(f"g{k}", path, person, refs[k % 2], {"prompt_template": p.prompts, "detectables": list(p.detectables)}))
    return samples


def part_batching(folder: Path, samples, batch: int, repeats: int) -> dict:
    from likeness.models.vision_language import load_clip

    clip = load_clip("clip", str(folder), device="cpu", batch_size=batch)
    images = [Image.open(s.image).convert("RGB") for s in samples]
    clip.encode_images(images[:2])  # warm-up
    timings = {"batched": [], "one_at_a_time": []}
    for _ in range(repeats):  # interleaved, so load from other jobs hits both alike
        clip.batch_size = batch
        tic = time.perf_counter()
        a = clip.encode_images(images)
        timings["batched"].append(time.perf_counter() - tic)
        clip.batch_size = 1
        tic = time.perf_counter()
        b = clip.encode_images(images)
        timings["one_at_a_time"].append(time.perf_counter() - tic)
    per_s = {k: len(images) / statistics.median(v) for k, v in timings.items()}
    return {"images": len(images), "batch": batch, "images_per_s": per_s, "speedup": per_s["batched"] / per_s["one_at_a_time"],
            "max_abs_diff": float(np.abs(a - b).max())}


def part_sharing(folder: Path, samples) -> dict:
    from likeness.metrics import METRICS
    from likeness.metrics.features import FeatureExtractor
    from likeness.models.vision_language import VisionModels

    names = ["clip-t", "clip-i", "clip-n"]

    def run(metric_names):
        models = VisionModels({"clip": str(folder)}, device="cpu", batch_size=16)
        extractor = FeatureExtractor(models)
        metrics = [METRICS.create(n, models=models) for n in metric_names]
        features = extractor.extract(samples, [f for m in metrics for f in m.features])
        values = {m.name: [s.value for s in m.update_features(samples, features)] for m in metrics}
        clip = models.get("clip")
        return values, clip.images_encoded, sum(models.loads.values())

    tic = time.perf_counter()
    together, encoded_together, loads_together = run(names)
    seconds_together = time.perf_counter() - tic
    tic = time.perf_counter()
    separate, encoded_separate, loads_separate = {}, 0, 0
    for name in names:
        values, encoded, loads = run([name])
        separate.update(values)
        encoded_separate += encoded
        loads_separate += loads
    seconds_separate = time.perf_counter() - tic
    same = all(np.allclose(together[n], separate[n], atol=1e-5) for n in names)
    return {"metrics": names, "generated_images": len(samples), "reference_photos": 2,
            "together": {"seconds": seconds_together, "images_encoded": encoded_together, "model_loads": loads_together},
            "separate": {"seconds": seconds_separate, "images_encoded": encoded_separate, "model_loads": loads_separate},
            "time_ratio": seconds_separate / seconds_together, "same_values": bool(same)}


def part_judge(work: Path, samples, batch: int, text_layers: int, vision_layers: int, dtype: str) -> dict:
    """judge-prompt over the samples: a cold pass (generation) and a warm one (every answer from the cache)."""
    from likeness.metrics import METRICS
    from likeness.metrics.features import FeatureExtractor
    from likeness.models.tiny_judge import QWEN25_VL_3B, build_qwen_vl
    from likeness.models.vision_language import VisionModels

    sizes = {"text": dict(QWEN25_VL_3B["text"], num_hidden_layers=text_layers),
             "vision": dict(QWEN25_VL_3B["vision"], depth=vision_layers,
                            fullatt_block_indexes=[i for i in QWEN25_VL_3B["vision"]["fullatt_block_indexes"] if i < vision_layers]
                            or [vision_layers - 1])}
    folder = work / f"qwen25-vl-3b-sizes-t{text_layers}-v{vision_layers}"
    if not (folder / "config.json").exists():
        build_qwen_vl(folder, sizes, max_pixels=512 * 512)
    cache = work / "judge-answers.sqlite"
    cache.unlink(missing_ok=True)
    os.environ["LIKENESS_JUDGE_CACHE"] = str(cache)
    models = VisionModels({"judge": str(folder)}, device="cpu", batch_size=batch, dtype=dtype)
    tic = time.perf_counter()
    judge = models.get("judge")
    load_s = time.perf_counter() - tic
    params = sum(p.numel() for p in judge.model.parameters())
    metric = METRICS.create("judge-prompt", models=models)

    def run():
        tic = time.perf_counter()
        features = FeatureExtractor(models).extract(samples, metric.features)
        rows = metric.update_features(samples, features)
        return time.perf_counter() - tic, rows

    cold, rows = run()
    warm, _ = run()
    return {"params_m": params / 1e6, "text_layers": text_layers, "vision_layers": vision_layers, "dtype": str(judge.dtype),
            "batch": batch, "images": len(samples), "load_s": load_s, "cold_s": cold, "images_per_s": len(samples) / cold,
            "cached_images_per_s": len(samples) / warm, "generated": judge.generated,
            "statuses": sorted({r.status for r in rows})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12, help="generated images (default %(default)s)")
    parser.add_argument("--batch", type=int, default=12, help="batch size of the batched encoder (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of part A (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "likeness-bench-text-metrics")
    parser.add_argument("--parts", default="A,B", help="which parts: A, B, C (the judge) (default %(default)s)")
    parser.add_argument("--judge-batch", type=int, default=4, help="judge requests per generate call (default %(default)s)")
    parser.add_argument("--text-layers", type=int, default=36, help="judge text layers (Qwen2.5-VL-3B: %(default)s)")
    parser.add_argument("--vision-layers", type=int, default=32, help="judge vision layers (Qwen2.5-VL-3B: %(default)s)")
    parser.add_argument("--judge-dtype", default="fp32", help="judge dtype: fp32, bf16 (default %(default)s)")
    args = parser.parse_args()
    parts = {p.strip().upper() for p in args.parts.split(",")}
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    folder = build_clip_l14(args.workdir / "clip-vit-l14-random")
    params = sum(p.numel() for p in __import__("transformers").CLIPModel.from_pretrained(folder).parameters())
    print(f"CLIP ViT-L/14, random weights: {params / 1e6:.0f} M parameters ({time.perf_counter() - tic:.0f} s to build/load)")
    samples = make_samples(args.workdir, args.images)
    a = part_batching(folder, samples, args.batch, args.repeats)
    print(f"A. image encoder: batched (batch {a['batch']}) {a['images_per_s']['batched']:.2f} img/s vs one at a time "
          f"{a['images_per_s']['one_at_a_time']:.2f} img/s -> {a['speedup']:.2f}x (max |diff| {a['max_abs_diff']:.1e})")
    report = {"params_m": params / 1e6, "batching": a}
    if "B" in parts:
        b = report["sharing"] = part_sharing(folder, samples)
        t, s = b["together"], b["separate"]
        print(f"B. CLIP-T + CLIP-I + CLIP-N on {b['generated_images']} images + 2 reference photos: together {t['seconds']:.1f} s "
              f"({t['model_loads']} load, {t['images_encoded']} images encoded) vs each on its own {s['seconds']:.1f} s "
              f"({s['model_loads']} loads, {s['images_encoded']} images encoded) -> {b['time_ratio']:.2f}x; same values: {b['same_values']}")
    if "C" in parts:
        c = report["judge"] = part_judge(args.workdir, samples, args.judge_batch, args.text_layers, args.vision_layers,
                                         args.judge_dtype)
        clip = a["images_per_s"]["batched"]
        print(f"C. judge-prompt, Qwen2.5-VL-3B sizes ({c['text_layers']}/36 text, {c['vision_layers']}/32 vision layers, "
              f"{c['params_m']:.0f} M parameters, {c['dtype']}), batch {c['batch']}: {c['images_per_s']:.4f} img/s "
              f"({c['cold_s'] / c['images']:.1f} s per image, 128 new tokens each) vs CLIP ViT-L/14 {clip:.2f} img/s -> "
              f"{clip / c['images_per_s']:.0f}x slower; from the cache {c['cached_images_per_s']:.1f} img/s; statuses {c['statuses']}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
