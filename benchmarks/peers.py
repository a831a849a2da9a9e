"""Tuning-free peers on real-size SD-1.5 / SDXL and real-width FLUX.1 architectures (random weights, CPU): what they add per image and per person.

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

- FLUX.1 [dev] family (``--only flux-ip-adapter,pulid-flux,infiniteyou``): the full FLUX.1 [dev] transformer (12 B
  parameters: 48 GB in fp32, 24 GB in bf16) does not fit this 24 GB shared machine, so the pipeline is
  ``benchmarks/flux.py``'s **real-width, reduced-depth** FLUX.1 (24 heads x 128, joint dim 4096, real VAE;
  ``--flux-depth-scale`` of the 19 double + 38 single blocks, default 0.1: 2 + 4, 1.31 B parameters) in bf16, with
  one-layer text encoders of the real widths and ``--text-tokens`` T5 tokens. Each method's files come from
  ``likeness.testing.<method>_layout.write_published_files(..., size="published")`` (its published widths, one IP /
  ID layer per block of this depth). Each method generates in its own process (plain, the method, plain again when
  the method left the transformer as it was), so its peak memory is its own; ``flux-ip-adapter`` is also measured
  without true CFG (its published setting runs the transformer twice per step).

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
    flock /tmp/likeness-heavy.lock python benchmarks/peers.py --only flux-ip-adapter,pulid-flux,infiniteyou \
        --flux-depth-scale 0.1 --resolution 128 --gen-steps 2 --images 3 --text-tokens 64 --threads 1

FLUX.1 (last run, on main at dedfe7c with this branch merged in, quiet machine: wall = CPU seconds; CPU bf16,
1 thread, 128 px, 2 steps, 64 T5 tokens; median of 3; each method's plain before / after in its own process):

| pipeline | s/image | / plain | peak RSS | per person: face + encode s (``personalize`` s) |
|---|---|---|---|---|
| flux-ip-adapter, published (true CFG 4.0) | 5.44 vs 3.10 / 3.08 | **1.76x** | 3.81 vs 3.46 GB | 0.09 + 3.89 (8.9) |
| flux-ip-adapter, ``true_cfg_scale=1`` | 3.18 | **1.03x** | 3.82 GB | |
| pulid-flux (v0.9.1) | 3.24 vs 3.14 (no plain after: it changed the transformer) | **1.03x** | 3.78 vs 3.47 GB | 0.02 + 6.42 (17.1) |
| infiniteyou (sim_stage1) | 5.03 vs 3.14 / 3.16 | **1.59x** | 8.15 vs 3.47 GB | 0.01 + 0.17 (5.0) |

flux-ip-adapter's published true CFG runs the transformer twice per step (VAE and text encoders are paid once, so
2-step 128 px runs show less than 2x); InfuseNet is a 4 + 10-block FLUX ControlNet run at every step. The encode
part's peak RSS with all three: 4.76 GB.
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
FAMILY = {"ip-adapter": "sd15", "ip-adapter-faceid": "sd15", "photomaker": "sdxl", "instantid": "sdxl", "pulid": "sdxl",
          "flux-ip-adapter": "flux1", "pulid-flux": "flux1", "infiniteyou": "flux1"}
GUIDANCE = {"sd15": 7.5, "sdxl": 5.0, "flux1": 3.5}  # FLUX.1 [dev]: its distilled-guidance input
LABELS = {"sd15": "SD-1.5", "sdxl": "SDXL", "flux1": "FLUX.1 [dev]"}
# The FLUX methods' published-size files come from these builders (likeness.testing.<module>.write_published_files).
FLUX_LAYOUTS = {"flux-ip-adapter": "flux_ip_adapter_layout", "pulid-flux": "pulid_flux_layout",
                "infiniteyou": "infiniteyou_layout"}
# Extra settings measured beside a method's published one: {method: {label: option overrides}}.
FLUX_VARIANTS = {"flux-ip-adapter": {"flux-ip-adapter (no true CFG)": {"true_cfg_scale": 1.0}}}
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
    from likeness.testing.peer_layouts import EVA_SIZES, eva_clip_state, pulid_state, save_flat

    files = {"pulid": work / "pulid" / "pulid_v1.bin", "eva": work / "pulid" / "EVA02_CLIP_L_336_psz14_s6B.pt"}
    if not files["pulid"].exists():
        save_flat(pulid_state(unet, version="v1", face_dim=512, eva_width=1024, eva_embed=768, hidden=1024, std=0.02),
                  files["pulid"])
    if not files["eva"].exists():
        save_flat(eva_clip_state(**EVA_SIZES["published"]), files["eva"])
    return files


# -- FLUX.1 ----------------------------------------------------------------------------------------------


def build_flux1_random(folder: Path, depth_scale: float) -> Path:
    """A FLUX.1 [dev]-shaped pipeline with random weights in bf16, saved with save_pretrained: ``benchmarks/flux.py``'s
    real-width transformer (24 heads x 128, joint dim 4096, pooled 768) and real VAE at ``depth_scale`` of the
    19 + 38 blocks, plus one-layer text encoders of the real widths (CLIP-L text 768, T5-XXL 4096; their cost is
    once per prompt) on the tiny word-list tokenizers."""
    from types import SimpleNamespace

    import torch
    from diffusers import FluxPipeline
    from flux import flux1_pipe
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from likeness.models.tiny import build_tokenizer
    from likeness.models.tiny_flow import build_t5_tokenizer

    pipe = flux1_pipe(SimpleNamespace(depth_scale=depth_scale, device=torch.device("cpu"), dtype=torch.bfloat16))
    tokenizer = build_tokenizer(folder.parent / f"{folder.name}-tokenizers" / "clip")
    tokenizer_2 = build_t5_tokenizer(folder.parent / f"{folder.name}-tokenizers" / "t5")
    torch.manual_seed(1)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                       num_hidden_layers=1, num_attention_heads=12, max_position_embeddings=77,
                                       projection_dim=768, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=4096, d_kv=64, d_ff=10240, num_layers=1,
                                 num_heads=64, feed_forward_proj="gated-gelu", pad_token_id=tokenizer_2.pad_token_id,
                                 eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id))
    full = FluxPipeline(scheduler=pipe.scheduler, vae=pipe.vae, transformer=pipe.transformer, tokenizer=tokenizer,
                        tokenizer_2=tokenizer_2, text_encoder=clip.to(torch.bfloat16), text_encoder_2=t5.to(torch.bfloat16))
    full.save_pretrained(folder)
    return folder


def flux_weights(methods: list[str], model: Path, work: Path) -> dict:
    """Published-size random files for each FLUX method (written once): ``{method: its options}``."""
    import importlib

    from likeness.methods import get_method

    options = {}
    for method in methods:
        layout = importlib.import_module(f"likeness.testing.{FLUX_LAYOUTS[method]}")
        chosen = dict(layout.write_published_files(work / method, str(model), size="published"))
        if get_method(method).defaults.get("face_backend") == "arcface" and "face_model_dir" not in chosen:
            chosen["face_model_dir"] = str(arcface_folder(work, "r100"))
        options[method] = chosen
    return options


def encode_generic(method_name: str, options: dict, model: str, photo: Path) -> tuple[float, float]:
    """(face detection seconds, the rest of the encode step) with the method's encoders loaded (one untimed
    warm-up); detection is timed where the method's context holds its face backend (``context["backend"]``)."""
    import tempfile

    from likeness.data.images import image_to_array, load_image
    from likeness.methods import get_method
    from likeness.models import base_model_info

    method = get_method(method_name)
    chosen = {"device": None, "overwrite": False, **method.defaults, **options}
    context, _ = method.prepare(model, base_model_info(model), chosen)
    with tempfile.TemporaryDirectory() as out:
        method.encode("astro", [photo], context, chosen, Path(out))  # warm-up
        face_s = 0.0
        backend = context.get("backend") if isinstance(context, dict) else None
        if backend is not None and hasattr(backend, "detect"):
            array = image_to_array(load_image(photo))
            tic = time.perf_counter()
            backend.detect(array)
            face_s = time.perf_counter() - tic
        tic = time.perf_counter()
        method.encode("astro", [photo], context, chosen, Path(out))
        total = time.perf_counter() - tic
    return face_s, total - face_s


def part_generate_flux(labels: dict, model: Path, resolution: int, steps: int, images: int, dtype: str, device: str,
                       text_tokens: int) -> dict:
    """One FLUX method (and its extra settings) on one pipeline: plain, the method, plain again when the method
    left the transformer as it found it; seconds per image, and peak memory after plain and after each setting
    (max RSS on CPU: it only grows, so the step is what the method adds; ``max_memory_allocated`` on CUDA, reset
    before each setting)."""
    import torch
    from safetensors.torch import load_file

    from likeness.methods import Manifest, get_method
    from likeness.methods.peers.common import EMBEDDINGS_FILE, PeerPersonalized
    from likeness.models import load_pipeline

    dev = torch.device(device)
    pipe = load_pipeline(str(model), device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    sampling = dict(num_inference_steps=steps, height=resolution, width=resolution, guidance_scale=GUIDANCE["flux1"],
                    max_sequence_length=text_tokens)

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / 1024**3 if dev.type == "cuda" else peak_rss_gb()

    cpu: dict[str, list[float]] = {}

    def timed(run, label: str) -> list[float]:
        times = []
        for seed in range(images + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            tic, cpu_tic = time.perf_counter(), time.process_time()
            run(seed)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if seed:
                times.append(time.perf_counter() - tic)
                cpu.setdefault(label, []).append(time.process_time() - cpu_tic)
        return times

    def plain(seed):
        pipe(TEMPLATE.replace("{}", "a person"), generator=torch.Generator("cpu").manual_seed(seed), **sampling)

    def shape() -> tuple:
        return (sum(p.numel() for p in pipe.transformer.parameters()),
                tuple(type(p).__name__ for p in pipe.transformer.attn_processors.values()))

    before, processors = shape(), dict(pipe.transformer.attn_processors)
    timings = {"plain": timed(plain, "plain")}
    memory = {"plain": peak()}
    for label, folder in labels.items():
        folder = Path(folder)
        manifest = Manifest.load(folder)
        peer = get_method(manifest.method)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        peer_pipe = peer.apply(pipe, folder, manifest) or pipe
        tensors = {k: v.to(peer_pipe.device) for k, v in load_file(str(folder / EMBEDDINGS_FILE)).items()}
        person = PeerPersonalized(peer_pipe, manifest, folder, peer, tensors)
        text = person.prompt(TEMPLATE)
        timings[label] = timed(lambda seed: person.call_pipe([text], generator=[torch.Generator("cpu").manual_seed(seed)],
                                                             **sampling), label)
        memory[label] = peak()
        if getattr(pipe.transformer, "encoder_hid_proj", None) is not None:
            pipe.unload_ip_adapter()
        pipe.transformer.set_attn_processor(dict(processors))
        del person, peer_pipe, tensors
    if shape() == before:  # the transformer is as it was: the sandwich shows drift from other jobs
        timings["plain (again)"] = timed(plain, "plain (again)")
    return {k: statistics.median(v) for k, v in timings.items()} | {
        "all": timings, "cpu": {k: statistics.median(v) for k, v in cpu.items()}, "memory_gb": memory,
        "transformer_params_m": before[0] / 1e6}


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
    """Per person: personalize wall time, and the encode step alone (timed again after the models are loaded).
    FLUX methods: ``files`` holds each method's options (from its layout builder); their extra settings
    (``FLUX_VARIANTS``) get artifacts of their own, encoded the same way."""
    from likeness.methods import personalize

    photo = face_photo(work)
    out = {}
    for method in methods:
        flux = FAMILY[method] == "flux1"
        options = files[method] if flux else peer_options(method, files)
        tic = time.perf_counter()
        artifact = personalize(method, {"astro": [photo]}, work / f"artifact-{method}", str(model), overwrite=True,
                               **options)
        out[method] = {"personalize_s": time.perf_counter() - tic, "artifact": str(artifact),
                       "artifacts": {method: str(artifact)}}
        for i, (label, overrides) in enumerate(FLUX_VARIANTS.get(method, {}).items() if flux else ()):
            out[method]["artifacts"][label] = str(personalize(method, {"astro": [photo]}, work / f"artifact-{method}-{i}",
                                                              str(model), overwrite=True, **{**options, **overrides}))
        if flux:
            face_s, encode_s = encode_generic(method, options, str(model), photo)
        else:
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


def build_model(family: str, model: Path, depth_scale: float = 1.0) -> None:
    if (model / "model_index.json").exists():
        return
    builder = {"sd15": "from generation import build_sd15_random as build",
               "sdxl": "from stellarnet import build_sdxl_random as build",
               "flux1": f"from peers import build_flux1_random; build = lambda f: build_flux1_random(f, {depth_scale!r})"}[family]
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); {builder}; "
                    f"from pathlib import Path; build(Path({str(model)!r}))"], check=True)


def main() -> int:
    import argparse

    parser = benchmark_parser(__doc__, images=3, workdir="likeness-bench-generation")
    parser.add_argument("--only", default="ip-adapter,ip-adapter-faceid",
                        help=f"peers to measure, comma-separated (default the SD-1.5 ones); any of {', '.join(FAMILY)}")
    parser.add_argument("--sdxl-model", type=Path, help="an SDXL-shaped pipeline folder to reuse (default WORKDIR/sdxl-random)")
    parser.add_argument("--dtype", help="generation dtype (default fp32; bf16 for the FLUX methods)")
    parser.add_argument("--threads", type=int, help="torch threads per part (1 keeps timings steady on a shared machine: "
                                                     "a core taken by another job then slows nothing but that core)")
    parser.add_argument("--flux-depth-scale", type=float, default=0.1,
                        help="FLUX methods: fraction of FLUX.1's 19 double + 38 single blocks built (default 0.1: 2 + 4; "
                             "the whole 12 B transformer does not fit a 24 GB machine)")
    parser.add_argument("--text-tokens", type=int, default=64,
                        help="FLUX methods: T5 prompt length (max_sequence_length; FLUX.1 [dev] uses 512; default 64)")
    parser.add_argument("--device", default="cpu", help="FLUX methods: device of the generate part (default cpu; the encode part runs on the CPU)")
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    parser.add_argument("--family", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in methods if m not in FAMILY]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(FAMILY)}")
    models = {"sd15": args.workdir / "sd15-random", "sdxl": args.sdxl_model or args.workdir / "sdxl-random",
              "flux1": args.workdir / f"flux1-random-depth{args.flux_depth_scale:g}"}
    if args.part:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        family = args.family
        chosen = [m for m in methods if FAMILY[m] == family]
        dtype = args.dtype or ("bf16" if family == "flux1" else "fp32")
        if args.part == "weights":
            result = flux_weights(chosen, models[family], args.workdir) if family == "flux1" else \
                build_weights(family, models[family], args.workdir)
        elif args.part == "encode":
            result = part_encode(chosen, models[family], json.loads(args.files), args.workdir)
        elif family == "flux1":
            result = part_generate_flux(json.loads(args.artifacts), models[family], args.resolution, args.gen_steps,
                                        args.images, dtype, args.device, args.text_tokens)
        else:
            result = part_generate(chosen, models[family], json.loads(args.artifacts), args.resolution, args.gen_steps,
                                   args.images, GUIDANCE[family], dtype)
        print(json.dumps(result))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    for family in ("sd15", "sdxl", "flux1"):
        chosen = [m for m in methods if FAMILY[m] == family]
        if not chosen:
            continue
        dtype = args.dtype or ("bf16" if family == "flux1" else "fp32")
        tic = time.perf_counter()
        build_model(family, models[family], args.flux_depth_scale)
        common = ["--workdir", str(args.workdir), "--family", family, "--resolution", str(args.resolution),
                  "--gen-steps", str(args.gen_steps), "--images", str(args.images), "--dtype", dtype]
        if args.sdxl_model:
            common += ["--sdxl-model", str(args.sdxl_model)]
        if args.threads:
            common += ["--threads", str(args.threads)]
        if family == "flux1":
            common += ["--flux-depth-scale", str(args.flux_depth_scale), "--text-tokens", str(args.text_tokens),
                       "--device", args.device]
        files = subprocess_part(__file__, ["--part", "weights", "--only", ",".join(chosen), *common])
        print(f"{family}: model and published-size weights ready in {time.perf_counter() - tic:.0f} s", flush=True)
        only = ["--only", ",".join(chosen)]
        enc = subprocess_part(__file__, ["--part", "encode", "--files", json.dumps(files), *only, *common])
        print(f"{family}: encode part done (peak RSS {enc['peak_rss_gb']:.2f} GB)", flush=True)
        if family == "flux1":  # each method on its own pipeline process: its own peak memory, no state left behind
            gens = {m: subprocess_part(__file__, ["--part", "generate", "--artifacts", json.dumps(enc[m]["artifacts"]),
                                                  "--only", m, *common]) for m in chosen}
            report_flux(args, chosen, enc, gens, dtype)
            continue
        artifacts = {m: enc[m]["artifact"] for m in chosen}
        gen = subprocess_part(__file__, ["--part", "generate", "--artifacts", json.dumps(artifacts), *only, *common])
        print(f"\n{LABELS[family]}-shaped pipeline, random weights, CPU {dtype}, {args.threads or 'default'} thread(s) "
              f"({args.resolution} px, {args.gen_steps} steps, guidance {GUIDANCE[family]})")
        report_encode(chosen, enc)
        plain = (gen["plain"] + gen["plain (again)"]) / 2
        plain_cpu = (gen["cpu"]["plain"] + gen["cpu"]["plain (again)"]) / 2
        print(f"per image (median of {args.images} after a warm-up; peak RSS {gen['peak_rss_gb']:.2f} GB):")
        print(f"  {'pipeline':<20} {'s/image':>8} {'ratio':>6} {'CPU s/image':>12} {'CPU ratio':>10}   all s/image")
        for name in ("plain", *chosen, "plain (again)"):
            print(f"  {name:<20} {gen[name]:>8.2f} {gen[name] / plain:>6.3f} {gen['cpu'][name]:>12.2f} "
                  f"{gen['cpu'][name] / plain_cpu:>10.3f}   {', '.join(f'{t:.2f}' for t in gen['all'][name])}", flush=True)
    return 0


def report_encode(chosen: list[str], enc: dict) -> None:
    print(f"per person (peak RSS {enc['peak_rss_gb']:.2f} GB):")
    print(f"  {'method':<20} {'personalize s':>14} {'face s':>7} {'encode s':>9}")
    for method in chosen:
        r = enc[method]
        print(f"  {method:<20} {r['personalize_s']:>14.2f} {r['face_s']:>7.2f} {r['encode_s']:>9.2f}")


def report_flux(args, chosen: list[str], enc: dict, gens: dict, dtype: str) -> None:
    print(f"\nFLUX.1 [dev]-shaped pipeline (real width, {args.flux_depth_scale:g} of the depth), random weights, "
          f"{args.device} {dtype}, {args.threads or 'default'} thread(s) ({args.resolution} px, {args.gen_steps} steps, "
          f"distilled guidance {GUIDANCE['flux1']}, {args.text_tokens} T5 tokens)")
    report_encode(chosen, enc)
    memory = "peak memory (GB, max allocated)" if args.device.startswith("cuda") else "peak RSS (GB, after)"
    print(f"per image (median of {args.images} after a warm-up), each method on its own pipeline process:")
    print(f"  {'pipeline':<32} {'s/image':>8} {'ratio':>6} {'CPU s/image':>12} {'CPU ratio':>10} {memory:>22}   all s/image")
    for method in chosen:
        gen = gens[method]
        again = "plain (again)" in gen
        plain = (gen["plain"] + gen["plain (again)"]) / 2 if again else gen["plain"]
        plain_cpu = (gen["cpu"]["plain"] + gen["cpu"]["plain (again)"]) / 2 if again else gen["cpu"]["plain"]
        rows = ["plain", *enc[method]["artifacts"], *(["plain (again)"] if again else [])]
        for name in rows:
            mem = gen["memory_gb"].get(name)
            print(f"  {name:<32} {gen[name]:>8.2f} {gen[name] / plain:>6.3f} {gen['cpu'][name]:>12.2f} "
                  f"{gen['cpu'][name] / plain_cpu:>10.3f} {'' if mem is None else f'{mem:.2f}':>22}   "
                  f"{', '.join(f'{t:.2f}' for t in gen['all'][name])}", flush=True)
        if not again:
            print(f"  ({method} changed the transformer, so plain was not run again after it)")
        print(f"  (transformer: {gen['transformer_params_m']:.0f} M parameters)")


if __name__ == "__main__":
    sys.exit(main())
