"""One runtime plan per process: the plan on described machines (no CUDA touched), and half precision on the CPU
(every trained method trains and generates in bfloat16, Celeb Basis artifacts in bfloat16 and float16), the
plan recorded where its numbers land (likeness.json, run.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from likeness.bench.personalize_worker import child_environment
from likeness.models.runtime import CudaDevice, Hardware, PlanError, resolve_plan

pytestmark = pytest.mark.usefixtures("one_thread")

A100 = CudaDevice("NVIDIA A100-SXM4-80GB", (8, 0))
V100 = CudaDevice("Tesla V100-SXM2-16GB", (7, 0))
T4 = CudaDevice("Tesla T4", (7, 5))
L4 = CudaDevice("NVIDIA L4", (8, 9))


# -- the plan, on described hardware ----------------------------------------------------------------


def test_plan_on_each_described_machine():
    cpu = resolve_plan()
    assert (cpu.device, cpu.dtype, cpu.mixed_precision, cpu.tf32, cpu.offload) == ("cpu", "float32", "no", False, "none")
    ampere = resolve_plan(hardware=Hardware(cuda=(A100,)))
    assert (ampere.device, ampere.dtype, ampere.mixed_precision) == ("cuda:0", "bfloat16", "bf16")
    for old in (V100, T4):  # no native bf16 (torch.cuda.is_bf16_supported would say yes: emulation)
        plan = resolve_plan(hardware=Hardware(cuda=(old,)))
        assert (plan.device, plan.dtype, plan.mixed_precision) == ("cuda:0", "float16", "fp16")
    four = Hardware(cuda=(L4,) * 4)
    for rank in (0, 1):  # two ranks on four GPUs: each its LOCAL_RANK-th, never bare "cuda"
        plan = resolve_plan(env={"LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, hardware=four)
        assert plan.device == f"cuda:{rank}" and (plan.local_rank, plan.world_size) == (rank, 2)
    two = Hardware(cuda=(A100, A100))
    devices = [resolve_plan("cuda", env={"LOCAL_RANK": str(r), "WORLD_SIZE": "5"}, hardware=two).device for r in range(5)]
    assert devices == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]  # more ranks than GPUs: round-robin
    mps = resolve_plan(hardware=Hardware(mps=True))
    assert (mps.device, mps.dtype, mps.mixed_precision) == ("mps", "float16", "fp16")
    # Explicit choices win where the machine has them; mixed precision follows --dtype unless given.
    assert resolve_plan("cpu", "bfloat16").mixed_precision == "bf16"
    assert resolve_plan("cpu", "float16", "no").mixed_precision == "no"
    assert resolve_plan("cuda:1", "float32", hardware=two).to_dict()["device"] == "cuda:1"
    assert resolve_plan(env={"ACCELERATE_MIXED_PRECISION": "fp16"}, hardware=Hardware(cuda=(A100,))).mixed_precision == "fp16"
    assert resolve_plan(tf32=True).tf32 is False  # TF32 is a CUDA switch: recorded off elsewhere
    assert resolve_plan(tf32=True, hardware=Hardware(cuda=(A100,))).tf32 is True
    assert resolve_plan(offload="sequential", vae_tiling=True, hardware=Hardware(cuda=(T4,))).offload == "sequential"
    record = resolve_plan(hardware=Hardware(cuda=(A100,))).to_dict()
    assert record["hardware"] == "NVIDIA A100-SXM4-80GB (compute capability 8.0)" and json.dumps(record)


@pytest.mark.parametrize("call, words", [
    (dict(device="cuda:3", hardware=Hardware(cuda=(A100,))), ["--device cuda:3 does not exist", "cuda:0 NVIDIA A100"]),
    (dict(device="cuda"), ["asks for a CUDA GPU", "no CUDA GPU", "--device cpu"]),
    (dict(device="mps"), ["--device mps", "no CUDA GPU"]),
    (dict(device="tpu"), ["--device 'tpu' is not a device"]),
    (dict(dtype="bfloat16", hardware=Hardware(cuda=(V100,))), ["--dtype bfloat16", "Tesla V100", "7.0", "float16"]),
    (dict(mixed_precision="bf16", hardware=Hardware(cuda=(T4,))), ["--mixed-precision bf16", "Tesla T4", "fp16"]),
    (dict(dtype="fp8"), ["--dtype 'fp8': unknown dtype; use one of auto, float32, float16, bfloat16"]),
    (dict(mixed_precision="fp8"), ["--mixed-precision 'fp8'"]),
    (dict(offload="model"), ["--offload model", "device is cpu"]),
    (dict(env={"LOCAL_RANK": "x"}), ["LOCAL_RANK='x'"]),
])
def test_bad_choices_name_the_option_and_what_the_machine_has(call, words):
    with pytest.raises(PlanError) as caught:
        resolve_plan(**call)
    assert isinstance(caught.value, ValueError) and all(w in str(caught.value) for w in words), str(caught.value)


def test_personalization_child_gets_its_rank_gpu_modulo_the_gpus():
    env = {"LOCAL_RANK": "3", "WORLD_SIZE": "4", "PATH": "/bin"}
    assert child_environment(env, gpus=2)["CUDA_VISIBLE_DEVICES"] == "1"
    assert child_environment({**env, "CUDA_VISIBLE_DEVICES": "4,6"})["CUDA_VISIBLE_DEVICES"] == "6"
    assert child_environment({**env, "CUDA_VISIBLE_DEVICES": "4,6,7"})["CUDA_VISIBLE_DEVICES"] == "4"


def test_cli_refuses_a_missing_device_with_exit_code_2(tmp_path, capsys):
    from likeness.cli import main

    assert main(["generate", "--artifact", str(tmp_path), "--prompt", "{} x", "--out", str(tmp_path / "o"),
                 "--device", "cuda:3"]) == 2
    assert "--device cuda:3" in capsys.readouterr().err


# -- half precision on the CPU ------------------------------------------------------------------------


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _generate(artifact, dtype: str):
    from likeness.methods import load_artifact

    personalized = load_artifact(artifact, plan=resolve_plan("cpu", dtype, "no"))
    assert personalized.pipe.unet.dtype == getattr(torch, dtype)
    return _pixels(personalized.generate(["a photo of {}"], [0], num_inference_steps=2, height=64, width=64)[0])


@pytest.mark.parametrize("method, options", [
    ("textual-inversion", {}),
    ("dreambooth-lora", {"train_text_encoder": True}),
    ("custom-diffusion", {}),
    ("celeb-basis", {}),
])
def test_every_trained_method_trains_and_generates_in_bfloat16(method, options, tiny_models, astronaut_path, tmp_path):
    """Two steps in float32 and in bf16 (autocast, frozen parts bf16, trained tensors and VAE float32), then an image
    in float32 and in bf16. Bounds: the first step's loss is computed before any update on the same batch and noise,
    so it differs only by bf16 rounding (8 significant bits, ~0.4% per value): within 3%. The images pass 2 denoising
    steps of a tiny random UNet in bf16 with a (slightly) differently trained artifact: mean difference under 3 of
    255 levels, none over 40 (measured: max 9). Training float32 and then bf16 in one process is itself the check
    that a second precision works in a process (accelerate's process-wide precision refused it)."""
    from likeness.methods import personalize

    losses, images = {}, {}
    for precision, dtype in (("no", "float32"), ("bf16", "bfloat16")):
        out = personalize(method, {"astro": [astronaut_path]}, tmp_path / precision, "likeness/tiny-sd", progress=False,
                          max_steps=2, plan=resolve_plan("cpu", "float32", precision), **options)
        manifest = json.loads((out / "likeness.json").read_text())
        assert manifest["config"]["runtime"]["mixed_precision"] == precision
        assert manifest["config"]["training"]["mixed_precision"] == precision
        losses[precision] = [float(r.split(",")[1]) for r in (out / "loss.csv").read_text().splitlines()[1:]]
        assert np.isfinite(losses[precision]).all()
        images[precision] = _generate(out, dtype)
    assert abs(losses["bf16"][0] - losses["no"][0]) <= 0.03 * abs(losses["no"][0])
    difference = np.abs(images["bf16"] - images["no"])
    assert difference.mean() < 3 and difference.max() <= 40, (difference.mean(), difference.max())


def test_training_keeps_trainables_and_vae_float32_and_frozen_parts_half(tiny_models, astronaut_path, tmp_path):
    from likeness.methods import get_method
    from likeness.methods.preparation import Augmentation, photo_batches, prepare_identities
    from likeness.methods.training import TrainingConfig, train
    from likeness.models import load_pipeline

    method = get_method("dreambooth-lora")
    pipe = load_pipeline("likeness/tiny-sd", plan=resolve_plan("cpu", "float32"))
    prepared, _ = prepare_identities([("astro", [astronaut_path])], size=64, framing="face")
    setup = method.setup(pipe, ["astro"], {**method.defaults, "out_dir": tmp_path})
    make_batch = photo_batches(prepared, {"astro": setup.identities["astro"].subject}, batch_size=1, aug=Augmentation())
    result = train(pipe, setup.trainable, make_batch, TrainingConfig(max_steps=1, progress=False), tmp_path,
                   modules=setup.modules, plan=resolve_plan("cpu", "float16", "fp16"))
    assert np.isfinite(result.losses).all()
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in setup.trainable.values())
    assert pipe.vae.dtype == torch.float32
    assert pipe.unet.conv_in.weight.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16
    assert pipe.unet.conv_norm_out.weight.dtype == torch.float32  # norms stay float32 (see cast_frozen)


def test_celeb_basis_artifact_generates_in_bfloat16_and_float16(tiny_models, astronaut_path, tmp_path):
    """A float32-trained artifact on half-precision pipelines: the basis check accepts the table rounded to the
    pipeline's dtype. Image bound as above (fp16 has 11 significant bits, tighter than bf16)."""
    from likeness.methods import personalize
    from likeness.methods.celeb_basis.basis import BasisMismatchError, CelebBasis
    from likeness.methods.celeb_basis.method import encoders
    from likeness.models import load_pipeline

    out = personalize("celeb-basis", {"astro": [astronaut_path]}, tmp_path / "a", "likeness/tiny-sd", progress=False,
                      max_steps=1)
    reference = _generate(out, "float32")
    for dtype in ("bfloat16", "float16"):
        difference = np.abs(_generate(out, dtype) - reference)
        assert difference.mean() < 3 and difference.max() <= 40, (dtype, difference.mean(), difference.max())
    # Another table in half precision is still refused.
    basis = CelebBasis.load(out / "celeb_basis.safetensors")
    pipe = load_pipeline("likeness/tiny-sd", plan=resolve_plan("cpu", "bfloat16"))
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[10] *= -1
    with pytest.raises(BasisMismatchError, match="half-precision rounding"):
        basis.check_compatible([enc for _, enc, _ in encoders(pipe)])


def test_cli_device_and_dtype_reach_training(tiny_models, astronaut_path, tmp_path):
    from likeness.cli import main

    out = tmp_path / "artifact"
    assert main(["personalize", "--method", "textual-inversion", "--identity", str(astronaut_path), "--out", str(out),
                 "--steps", "1", "--device", "cpu", "--dtype", "bfloat16", "--quiet"]) == 0
    config = json.loads((out / "likeness.json").read_text())["config"]
    assert config["runtime"]["device"] == "cpu" and config["runtime"]["dtype"] == "bfloat16"
    assert config["training"]["mixed_precision"] == "bf16" and "device" not in config["options"]


def test_default_bench_in_bfloat16_finishes_every_item(tiny_models, tmp_path, capsys):
    from likeness.cli import main

    run = tmp_path / "run"
    assert main(["bench", "--out", str(run), "--limit", "2", "--train-steps", "2", "--metrics", "ips",
                 "--dtype", "bfloat16", "--mixed-precision", "bf16", "--quiet", "--no-report"]) == 0
    assert capsys.readouterr().out.count("2/2 items done") == 2  # the default: the method and copy-reference
    record = json.loads((run / "textual-inversion" / "run.json").read_text())
    assert record["config"]["runtime"] == {"dtype": "bfloat16", "mixed_precision": "bf16"}
    assert record["runtime"]["dtype"] == "bfloat16" and record["runtime"]["device"] == "cpu"
    manifest = json.loads(next((run / "textual-inversion" / "artifacts").glob("*/likeness.json")).read_text())
    assert manifest["config"]["runtime"]["mixed_precision"] == "bf16"


def test_clip_metric_models_in_half_precision_within_bounds_and_protocol(tmp_path, monkeypatch):
    """Metric models follow an explicit dtype. Bound: L2-normalised embeddings of a tiny CLIP in bf16 / fp16 keep a
    cosine >= 0.99 with float32 ones (8 / 11 significant bits through a few layers; measured >= 0.9999). The
    protocol name says the dtype, so these scores never mix with float32 ones; float32 keeps the old name."""
    from PIL import Image

    from likeness.metrics import METRICS
    from likeness.models.tiny_vision import build_tiny_clip
    from likeness.models.vision_language import VisionModels

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = build_tiny_clip(tmp_path / "clip")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    texts = ["a person eating an apple", "a dog in a library"]
    out = {}
    for dtype in (None, "bfloat16", "float16"):
        models = VisionModels({"clip": str(folder)}, device="cpu", dtype=dtype)
        clip = models.get("clip")
        assert clip.model.dtype == (getattr(torch, dtype) if dtype else torch.float32)
        out[dtype] = clip.encode_images(images), clip.encode_texts(texts)[0]
        name = METRICS.create("clip-t", models=models).protocol["name"]
        assert name.endswith(f"@{dtype}") if dtype else "@" not in name
    for dtype in ("bfloat16", "float16"):
        for half, full in zip(out[dtype], out[None]):
            assert half.dtype == np.float32 and (half * full).sum(axis=1).min() >= 0.99
