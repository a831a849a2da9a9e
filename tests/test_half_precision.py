"""Issue 20, "show it": generation of the methods test_runtime.py does not cover (peers and editors included), and the
metric models, in bfloat16 and float16 on the CPU, each within a stated bound of float32. A dtype the CPU cannot run
must fail with a clear error, never switch silently; these all run, so each test also checks the weights really are
in the chosen dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from likeness.methods import load_artifact, personalize
from likeness.models.runtime import resolve_plan

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a photo of {}"
HALF = ("bfloat16", "float16")


def _images(artifact, denoiser: str, *also: str, **call) -> dict:
    """{dtype: pixels (float64)} of one image per dtype, the artifact loaded on a CPU plan of that dtype; the denoiser
    and the pipe's modules named in ``also`` (a method's own: ControlNet, fuse module) must be in that dtype."""
    out = {}
    for dtype in ("float32", *HALF):
        ours = load_artifact(artifact, plan=resolve_plan("cpu", dtype, "no"))
        for name in (denoiser, *also):  # no silent switch back to float32
            assert next(getattr(ours.pipe, name).parameters()).dtype == getattr(torch, dtype), (name, dtype)
        out[dtype] = np.asarray(ours.generate([PROMPT], [3], **call)[0], dtype=np.float64)
    return out


def _within(images: dict, mean: float = 2, peak: float = 24) -> dict:
    """Bound: a few denoising steps of a tiny random denoiser whose weights and activations are rounded to 8 (bf16) or
    11 (fp16) significant bits, VAE included, differ from float32 by rounding only: mean under 2 of 255 levels, no
    pixel over 24 (measured on an x86 CPU: bf16 mean <= 0.98, max <= 7; fp16 mean <= 0.12, max 1). The margin covers
    other CPUs' kernels; the weights' dtype itself is asserted in _images."""
    measured = {}
    for dtype in HALF:
        difference = np.abs(images[dtype] - images["float32"])
        measured[dtype] = (round(difference.mean(), 3), difference.max())
    for dtype, (m, p) in measured.items():
        assert m < mean and p <= peak, (dtype, measured)
    return measured


# -- generation ---------------------------------------------------------------------------------------


def test_ip_adapter_generates_in_half_precision(tiny_models, astronaut_path, tmp_path):
    from likeness.testing.peer_layouts import clip_vision_encoder, ip_adapter_state, save_published
    from likeness.methods.peers.common import empty_unet

    clip_vision_encoder(tmp_path / "h94" / "models" / "image_encoder")
    weights = save_published(ip_adapter_state(empty_unet("likeness/tiny-sd"), "plain", embed=32),
                             tmp_path / "h94" / "models" / "ip-adapter_sd15.safetensors")
    art = personalize("ip-adapter", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd", variant="plain",
                      weights=str(weights), scale=0.8)
    _within(_images(art, "unet", num_inference_steps=2))


def test_flux_ip_adapter_generates_in_half_precision(tiny_models, astronaut_path, tmp_path):
    from likeness.testing.flux_ip_adapter_layout import write_published_files

    files = write_published_files(tmp_path / "xlabs", "likeness/tiny-flux")
    art = personalize("flux-ip-adapter", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-flux", **files)
    _within(_images(art, "transformer", num_inference_steps=2, height=32, width=32))


def test_flux_lora_and_kontext_generate_in_half_precision(tiny_models, astronaut_path, tmp_path):
    art = personalize("dreambooth-lora", {"astro": [astronaut_path]}, tmp_path / "lora", "likeness/tiny-flux",
                      max_steps=2, resolution=32, progress=False)
    _within(_images(art, "transformer", num_inference_steps=2, guidance_scale=1.0, height=32, width=32))
    art = personalize("flux-kontext", {"astro": [astronaut_path]}, tmp_path / "kontext", "likeness/tiny-flux",
                      reference_size=64)
    images = _images(art, "transformer", num_inference_steps=2, height=32, width=32)
    _within(images)
    # The CLI: `likeness generate --dtype float16` is the same computation as above (exactly the same pixels), and
    # each image's sidecar records the dtype (a float32 one records none, as before).
    import json

    from PIL import Image

    from likeness.cli import main

    for dtype in ("float16", "float32"):
        assert main(["generate", "--artifact", str(art), "--prompt", PROMPT, "--seed", "3", "--steps", "2",
                     "--height", "32", "--width", "32", "--out", str(tmp_path / dtype), "--dtype", dtype,
                     "--device", "cpu", "--quiet"]) == 0
        (png,) = (tmp_path / dtype).rglob("*.png")
        np.testing.assert_array_equal(np.asarray(Image.open(png), dtype=np.float64), images[dtype])
        sidecar = json.loads(png.with_suffix(".json").read_text())
        assert sidecar.get("dtype") == (None if dtype == "float32" else dtype)


# -- metrics ------------------------------------------------------------------------------------------


def test_text_metrics_in_half_precision_within_bounds_and_protocol(tmp_path, monkeypatch):
    """clip-t/clip-i (CLIP), pickscore (CLIP), aesthetic (CLIP + head), goa (OWL-ViT), rfs (BLIP VQA) on tiny models in
    float32, bf16 and fp16. Roles whose loader follows the dtype (CLIP) run in it and the protocol name says so; the
    others stay float32, and the protocol says nothing of half precision for them (they are float32 numbers)."""
    from PIL import Image

    from likeness.data.identities import Identity
    from likeness.metrics import METRICS, Sample
    from likeness.metrics.features import FeatureExtractor
    from likeness.models.tiny_vision import build_tiny_aesthetic, build_tiny_blip_vqa, build_tiny_clip, build_tiny_owlvit
    from likeness.models.vision_language import VisionModels

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip, owl, vlm = build_tiny_clip(tmp_path / "clip"), build_tiny_owlvit(tmp_path / "owl"), build_tiny_blip_vqa(tmp_path / "blip")
    head = build_tiny_aesthetic(tmp_path / "aesthetic")
    rng = np.random.default_rng(0)

    def image(name, size=(48, 40)):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        return tmp_path / f"{name}.png"

    photos = [image("photo0"), image("photo1", (60, 60))]
    person = Identity("ann", photos)
    meta = {"prompt_template": "{} eating an apple in a library", "detectables": ["apple", "library"],
            "relations": [["person", "eating", "apple"]], "background": "a library"}
    samples = [Sample(f"i{k}", image(f"gen{k}"), person, photos[k % 2], meta) for k in range(3)]
    names = ["clip-t", "clip-i", "pickscore", "aesthetic", "goa", "rfs"]
    values, protocols = {}, {}
    for dtype in ("float32", *HALF):
        models = VisionModels({"clip": str(clip), "owlvit": str(owl), "vlm": str(vlm), "pickscore": str(clip),
                               "aesthetic-clip": str(clip), "aesthetic": str(head)}, device="cpu", dtype=dtype)
        metrics = [METRICS.create(n, models=models) for n in names]
        features = FeatureExtractor(models).extract(samples, [f for m in metrics for f in m.features])
        for m in metrics:
            values[dtype, m.name] = np.array([s.value for s in m.update_features(samples, features)], dtype=float)
            protocols[dtype, m.name] = m.protocol
        assert models.get("clip").model.dtype == getattr(torch, dtype)
        assert models.get("owlvit").model.dtype == torch.float32  # OWL-ViT's loader keeps float32 ...
    for dtype in HALF:
        for name in ("clip-t", "clip-i", "aesthetic"):
            # Cosines of unit embeddings (and the aesthetic head on one) from a tiny CLIP run in bf16 / fp16: 8 / 11
            # significant bits through a few layers move a cosine by ~1e-3 (measured: at most 0.0013 bf16, 8e-5
            # fp16); 0.01 leaves room for other CPUs' rounding and still catches a wrong dtype path.
            assert np.abs(values[dtype, name] - values["float32", name]).max() <= 0.01, (dtype, name, values)
        # PickScore is logit_scale (here ~14) times such a cosine (measured: 0.022 bf16, 0.011 fp16).
        assert np.abs(values[dtype, "pickscore"] - values["float32", "pickscore"]).max() <= 0.15, (dtype, values)
        for name in ("clip-t", "clip-i", "pickscore", "aesthetic"):
            protocol = protocols[dtype, name]
            assert protocol["name"].endswith(f"@{dtype}") and set(protocol["runtime"].values()) == {dtype}
            assert "@" not in protocols["float32", name]["name"] and "runtime" not in protocols["float32", name]
        assert list(protocols[dtype, "aesthetic"]["runtime"]) == ["aesthetic-clip"]  # the head itself stays float32
        for name in ("goa", "rfs"):
            # OWL-ViT and BLIP stay float32: the same float32 computation repeats, so equal; the protocol the same.
            np.testing.assert_array_equal(values[dtype, name], values["float32", name])
            assert protocols[dtype, name] == protocols["float32", name]


def test_reward_models_stay_float32_and_say_so(tmp_path, monkeypatch):
    """HPS v2 and ImageReward load float32 whatever the dtype (their loaders take none): the scores are the float32
    ones exactly, and the protocol does not claim half precision."""
    from PIL import Image

    from likeness.data.identities import Identity
    from likeness.metrics import METRICS, Sample
    from likeness.models.tiny_vision import build_tiny_hps, build_tiny_imagereward
    from likeness.models.vision_language import VisionModels

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hps, ir = build_tiny_hps(tmp_path / "hps"), build_tiny_imagereward(tmp_path / "ir")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "gen.png")
    samples = [Sample("i0", tmp_path / "gen.png", Identity("ann", []), None,
                      {"prompt_template": "{} riding a horse on the beach"})]
    rows = {}
    for dtype in ("float32", *HALF):
        models = VisionModels({"hps": str(hps), "imagereward": str(ir)}, device="cpu", dtype=dtype)
        for name in ("hpsv2", "imagereward"):
            rows[dtype, name] = METRICS.create(name, models=models).update(samples)[0]
        assert models.runtime(["hps", "imagereward"]) == {}
        assert next(models.get("hps").model.parameters()).dtype == torch.float32
    for dtype in HALF:
        for name in ("hpsv2", "imagereward"):
            half, full = rows[dtype, name], rows["float32", name]
            assert half.status == full.status == "ok" and half.value == full.value
            assert half.protocol == full.protocol and "@" not in half.protocol["name"]


def test_photoverse_generates_in_half_precision(tiny_models, astronaut_path, tmp_path):
    """An encoder trained one step on the built-in tiny base (its default tiny image encoder, no identity loss),
    an identity encoded in float32, then generation on bf16 / fp16 pipelines."""
    from PIL import Image, ImageOps

    from likeness.methods import get_method

    (tmp_path / "data" / "a").mkdir(parents=True)
    photo = Image.open(astronaut_path).convert("RGB")
    photo.save(tmp_path / "data" / "a" / "0.jpg")
    ImageOps.mirror(photo).save(tmp_path / "data" / "a" / "1.jpg")
    method = get_method("photoverse")
    encoder = method.train_encoder(tmp_path / "data", tmp_path / "encoder", "likeness/tiny-sd", identity_loss=None,
                                   max_steps=1, adapter_hidden=16, num_words=5, progress=False)
    art = method.personalize({"astro": [astronaut_path]}, tmp_path / "art", "likeness/tiny-sd", weights=str(encoder))
    _within(_images(art, "unet", num_inference_steps=2))


def test_stellarnet_generates_in_half_precision(tiny_models, astronaut_path, tmp_path):
    """StellarNet on tiny-sdxl (encoder trained one step with the tests' tiny CLIP vision tower and CelebAMask
    colour masks). In float16 SDXL's pipeline upcasts its VAE for decoding, as the VAE's config asks."""
    from stellarnet_helpers import build_portraits, build_tiny_clip_vision

    from likeness.methods import get_method

    method = get_method("stellarnet")
    weights = method.train_encoder(build_portraits(tmp_path / "data", astronaut_path), tmp_path / "weights",
                                   "likeness/tiny-sdxl", image_encoder=str(build_tiny_clip_vision(tmp_path / "clip")),
                                   max_steps=1, segmenter="celebamask", progress=False)
    art = method.personalize({"astro": [astronaut_path]}, tmp_path / "art", None, weights=str(weights))
    _within(_images(art, "unet", num_inference_steps=2))


def test_pulid_generates_in_half_precision(tiny_models, face_and_arcface, tmp_path):
    """PuLID v1.1 on tiny-sdxl with tiny published-layout weights, a tiny EVA02-CLIP and the tiny ArcFace: ID
    tokens computed at personalization, the ID attention processors then run in bf16 / fp16."""
    from likeness.testing.peer_layouts import eva_clip_state, pulid_state, save_flat
    from likeness.methods.peers.common import empty_unet

    face, arcface = face_and_arcface
    weights = save_flat(pulid_state(empty_unet("likeness/tiny-sdxl"), version="v1.1", seed=1),
                        tmp_path / "pulid_v1.1.safetensors")
    eva = save_flat(eva_clip_state(), tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt")
    art = personalize("pulid", {"ann": [face]}, tmp_path / "art", "likeness/tiny-sdxl", version="v1.1",
                      weights=str(weights), eva_clip=str(eva), face_model_dir=str(arcface))
    _within(_images(art, "unet", num_inference_steps=2))


def test_pulid_flux_generates_in_half_precision(tiny_models, face_and_arcface, tmp_path):
    """PuLID-FLUX on tiny-flux with tiny published-layout weights: ID tokens computed at personalization, the
    pulid_ca blocks hooked into the transformer then run in bf16 / fp16 (their own weights too)."""
    from likeness.testing.pulid_flux_layout import write_published_files

    face, arcface = face_and_arcface
    options = write_published_files(tmp_path / "w", "likeness/tiny-flux")
    art = personalize("pulid-flux", {"ann": [face]}, tmp_path / "art", "likeness/tiny-flux",
                      face_model_dir=str(arcface), **options)
    for dtype in HALF:
        ours = load_artifact(art, plan=resolve_plan("cpu", dtype, "no"))
        assert {p.dtype for p in ours.pipe.transformer.pulid_ca.parameters()} == {getattr(torch, dtype)}
    _within(_images(art, "transformer", num_inference_steps=2))


def test_judge_runs_in_half_precision_and_keys_its_answers_by_dtype(tmp_path, monkeypatch):
    """The tiny Qwen2.5-VL judge in float32, bf16 and fp16 with one answer cache: each dtype loads in it, generates
    its own answers (the cache key holds the dtype, so a bf16 answer is never served as a float32 one) and the
    protocol records it. Random weights answer garbage: the status is parse_failed in every dtype, never a score."""
    from PIL import Image

    from likeness.data.identities import Identity
    from likeness.metrics import METRICS, Sample
    from likeness.metrics.features import FeatureExtractor
    from likeness.models.tiny_judge import build_tiny_qwen_vl
    from likeness.models.vision_language import VisionModels

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LIKENESS_JUDGE_CACHE", str(tmp_path / "answers.sqlite"))
    folder = build_tiny_qwen_vl(tmp_path / "judge")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (72, 64, 3), dtype=np.uint8)).save(tmp_path / "gen.png")
    samples = [Sample("a", tmp_path / "gen.png", Identity("ann", []), tmp_path / "gen.png",
                      {"prompt_template": "{} playing a violin"})]
    for dtype in ("float32", *HALF):
        models = VisionModels({"judge": str(folder)}, device="cpu", dtype=dtype)
        metric = METRICS.create("judge-prompt", models=models)
        features = FeatureExtractor(models).extract(samples, metric.features)
        (score,) = metric.update_features(samples, features)
        judge = models.get("judge")
        assert judge.model.dtype == getattr(torch, dtype) and judge.generated == 1
        assert score.value is None and score.status == "parse_failed" and score.detail["cached"] is False
        assert metric.protocol["judge"]["dtype"] == dtype
        name = metric.protocol["name"]
        assert name.endswith(f"@{dtype}") if dtype != "float32" else "@" not in name  # half: another protocol


def test_judge_default_dtype_on_a_gpu_is_in_its_protocol_name(tmp_path, monkeypatch):
    """Without a dtype the judge loads in the plan's default: bf16 on an Ampere GPU. Its protocol name must say so
    (it said nothing: bf16 GPU scores shared the float32 name). Checked on a described A100, no CUDA touched.
    Short dtype spellings (bf16, fp32) are the plan's, and an unknown one is refused by name."""
    import likeness.models.runtime as runtime
    from likeness.metrics import METRICS
    from likeness.models.runtime import CudaDevice, Hardware, PlanError
    from likeness.models.tiny_judge import build_tiny_qwen_vl
    from likeness.models.vision_language import VisionModels

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = build_tiny_qwen_vl(tmp_path / "judge")
    a100 = Hardware(cuda=(CudaDevice("NVIDIA A100-SXM4-80GB", (8, 0)),))
    monkeypatch.setattr(runtime, "current_plan", lambda device=None, dtype="auto", mixed="auto", **kw:
                        runtime.resolve_plan(device, dtype, mixed, hardware=a100, **kw))
    models = VisionModels({"judge": str(folder)})
    assert models.runtime(["judge"]) == {"judge": "bfloat16"}
    protocol = METRICS.create("judge-identity", models=models).protocol
    assert protocol["name"].endswith("@bfloat16") and protocol["judge"]["dtype"] == "bfloat16"
    assert VisionModels({"judge": str(folder)}, dtype="fp32").runtime(["judge", "clip"]) == {}
    assert VisionModels(dtype="bf16").runtime(["clip", "owlvit"]) == {"clip": "bfloat16"}
    with pytest.raises(PlanError, match="--dtype 'fp8': unknown dtype"):
        VisionModels(dtype="fp8")


# -- the peers on published-layout tiny weights, and the FLUX.2 / Qwen-Image editors ----------------------


@pytest.fixture(scope="module")
def face_and_arcface(face_photos, arcface_dir):
    """A face the tiny ArcFace detector finds, and that ArcFace's folder (the shared fixtures of conftest.py)."""
    return face_photos["ann"], arcface_dir


def test_ip_adapter_faceid_generates_in_half_precision(tiny_models, face_and_arcface, tmp_path):
    """FaceID (ArcFace embedding + its LoRA fused into the UNet) on tiny-sd with tiny published-layout weights."""
    from likeness.testing.peer_layouts import ip_adapter_state, save_published
    from likeness.methods.peers.common import empty_unet

    face, arcface = face_and_arcface
    weights = save_published(ip_adapter_state(empty_unet("likeness/tiny-sd"), "faceid", embed=32, face_dim=16,
                                              lora_rank=4, seed=3), tmp_path / "ip-adapter-faceid_sd15.bin")
    art = personalize("ip-adapter-faceid", {"ann": [face]}, tmp_path / "a", "likeness/tiny-sd", variant="faceid",
                      weights=str(weights), face_model_dir=str(arcface))
    _within(_images(art, "unet", num_inference_steps=2))


def test_photomaker_generates_in_half_precision(tiny_models, astronaut_path, tmp_path):
    """PhotoMaker v1 on tiny-sdxl: the ID embedding stacked at personalization, merged into the class word and the
    LoRA'd UNet then run in bf16 / fp16 (style_strength 0: the merged prompt from the first step)."""
    from likeness.testing.peer_layouts import photomaker_state, save_published

    weights = save_published(photomaker_state("likeness/tiny-sdxl"), tmp_path / "photomaker-v1.bin")
    art = personalize("photomaker", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sdxl",
                      weights=str(weights), style_strength=0.0)
    _within(_images(art, "unet", "photomaker_fuse", num_inference_steps=2))


def test_instantid_generates_in_half_precision(tiny_models, face_and_arcface, tmp_path):
    """InstantID on tiny-sdxl: IdentityNet (a ControlNet) and the UNet's IP-Adapter, both in bf16 / fp16."""
    from likeness.testing.peer_layouts import identitynet, ip_adapter_state, save_published
    from likeness.methods.peers.common import empty_unet

    face, arcface = face_and_arcface
    identitynet("likeness/tiny-sdxl", tmp_path / "w" / "ControlNetModel", conditioning_channels=(16, 32))
    save_published(ip_adapter_state(empty_unet("likeness/tiny-sdxl"), "resampler", embed=16, queries=16, seed=5),
                   tmp_path / "w" / "ip-adapter.bin")
    art = personalize("instantid", {"ann": [face]}, tmp_path / "a", "likeness/tiny-sdxl", weights=str(tmp_path / "w"),
                      face_model_dir=str(arcface))
    _within(_images(art, "unet", "controlnet", num_inference_steps=2))


def test_infiniteyou_generates_in_half_precision(tiny_models, face_and_arcface, tmp_path):
    """InfiniteYou on tiny-flux: FLUX's transformer, InfuseNet (a FLUX ControlNet) and the ID projection, all in
    bf16 / fp16 (tiny published-layout weights)."""
    from likeness.testing.infiniteyou_layout import write_published_files

    face, arcface = face_and_arcface
    weights = write_published_files(tmp_path / "w", "likeness/tiny-flux")
    art = personalize("infiniteyou", {"ann": [face]}, tmp_path / "a", "likeness/tiny-flux", face_model_dir=str(arcface),
                      **weights)
    _within(_images(art, "transformer", "controlnet", "id_projection", num_inference_steps=2, height=32, width=32))


def test_flux2_and_qwen_editors_generate_in_half_precision(tiny_models, astronaut_path, tmp_path, monkeypatch):
    """FLUX.2 [klein] reference editing and Qwen-Image-Edit-2509 (its reference and the Qwen2.5-VL prompt encoder
    through the pipeline) on their tiny bases."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as edit_plus

    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", 64 * 64)  # as test_flow_bases: 1024x1024 is 40 s on the tiny model
    for method, base in (("flux2-reference", "likeness/tiny-flux2-klein"), ("qwen-image-edit", "likeness/tiny-qwen-image-edit")):
        art = personalize(method, {"astro": [astronaut_path]}, tmp_path / method, base, reference_size=64)
        _within(_images(art, "transformer", num_inference_steps=2, height=32, width=32))
