"""Goldens for PhotoMaker v1 and v2 (SDXL) from the official code, TencentARC/PhotoMaker at commit 060b4fc
(``REFERENCE_COMMIT``), on seeded random weights in the published layout at reduced size.

Run in a side environment, never in likeness's (the exact command, from the repository root):

    git --git-dir=<mirror of TencentARC/PhotoMaker> archive 060b4fc photomaker | tar -x -C /tmp/photomaker-ref
    PYTHONPATH=/work/refenv-goldens/diffusers-0.29.2 /work/refenv-goldens/bin/python \
        tests/golden/make_photomaker_goldens.py --ref /tmp/photomaker-ref

Side environment: as for make_pulid_goldens.py, with diffusers 0.29.2 first on the path (PhotoMaker pins no
version; its pipeline at 060b4fc needs ``diffusers.callbacks`` and ``StableDiffusionMixin``, and 0.29.2 is the
release current when that code was written, July 2024) and peft 0.10.0 (``load_lora_weights``). insightface is
a name only (:mod:`ref_shims`): v2's ArcFace embedding is a fixed input, as its ``id_embeds`` argument allows.

What runs of the reference, unchanged unless said here:
- ``photomaker/model.py`` / ``model_v2.py`` with their hard-coded published sizes replaced in the source text by
  reduced ones (CLIP ViT hidden 1024 -> 128, MLP 4096 -> 512, 24 layers -> 2, 16 heads -> 2 (64 wide, as published),
  projection 768 -> 64, second projection 1280 -> 192, SDXL's 2048-wide text tokens -> 256 (64 + 192), ArcFace
  512 -> 32); the v2 perceiver keeps its 128-wide heads (256 / 128 = 2 heads). 224 px input, patch 14 as published.
- ``PhotoMakerStableDiffusionXLPipeline`` built from reduced SDXL parts (two CLIP text encoders 64 and 192 wide,
  the tokenizer of likeness's tiny SDXL (likeness/models/tiny.py, loaded by path), a UNet with cross-attention
  256), ``load_photomaker_adapter`` reading the published ``.bin`` container (``{"id_encoder": ..., "lora_weights":
  ...}``, the LoRA in the attention-processor key format diffusers converts), then ``set_adapters`` +
  ``fuse_lora`` as the published demo does, and ``__call__``: 2 Euler steps, guidance 5, ``start_merge_step=0``
  (step 0 text-only, step 1 with the merged prompt), fixed latents, ``output_type="latent"``.
- v1 at this commit cannot run as published: ``load_photomaker_adapter`` sets ``self.num_tokens = 2`` for both
  versions (since 48ec26d, PhotoMaker V2), so a v1 prompt gets two class-token copies per photo while the v1
  encoder gives one embedding per photo, and the fuse module's assertion fails. The script sets
  ``pipe.num_tokens = 1`` after loading a v1 file: the v1 behaviour before 48ec26d (one copy per photo).

Outputs (tests/golden/photomaker/): ``goldens.safetensors``: per version the merged prompt embeddings and mask
(captured at the id_encoder's output), the text-only embeddings, the UNet's inputs and outputs of both steps,
and the final latents (the UNet's text input is [zeros; text-only] then [zeros; merged]: not stored);
``goldens.json``: weight specs and digests, configs, prompt, sizes.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import golden_weights as gw  # noqa: E402
import ref_shims  # noqa: E402

REFERENCE = "TencentARC/PhotoMaker"
COMMAND = ("PYTHONPATH=/work/refenv-goldens/diffusers-0.29.2 /work/refenv-goldens/bin/python "
           "tests/golden/make_photomaker_goldens.py --ref /tmp/photomaker-ref")
REFERENCE_COMMIT = "060b4fc"
OUT = HERE / "photomaker"
SEED = 24
TEXT = [dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
        dict(hidden_size=192, intermediate_size=384, num_hidden_layers=2, num_attention_heads=3, projection_dim=32)]
CROSS = 64 + 192
UNET_CONFIG = dict(block_out_channels=[32, 64], layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                   down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                   up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], norm_num_groups=32, attention_head_dim=[2, 4],
                   use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                   transformer_layers_per_block=[1, 2], projection_class_embeddings_input_dim=80,
                   cross_attention_dim=CROSS)
VAE_CONFIG = dict(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                  down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                  up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"])
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")
SOURCE = [("1024", "128"), ("4096", "512"), ('"num_attention_heads": 16', '"num_attention_heads": 2'),
          ('"num_hidden_layers": 24', '"num_hidden_layers": 2'), ('"projection_dim": 768', '"projection_dim": 64'),
          ("1280", "192"), ("2048", "256"), ("id_embeddings_dim=512", "id_embeddings_dim=32")]
FACE_DIM = 32
PHOTOS = 2
PROMPT = "a photo of a man img wearing a hat in the park"
SIZE = 16  # pixels; latents 8 x 8 (the VAE halves)
STEPS, GUIDANCE, LORA_RANK = 2, 5.0, 4


def text_config(tokenizer, index):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TEXT[index])


def photos() -> list[np.ndarray]:
    """The ID photos (224 px RGB uint8, the tower's input size: CLIP preprocessing only rescales and normalises)."""
    return [gw.integers(SEED, f"photo{i}", (224, 224, 3), 0, 256).to(torch.uint8).numpy() for i in range(PHOTOS)]


def arcface() -> torch.Tensor:
    return gw.uniform(SEED, "arcface", (PHOTOS, FACE_DIM), 0.0, 3.0)


def latents() -> torch.Tensor:
    return gw.uniform(SEED, "latents", (1, 4, SIZE // 2, SIZE // 2))


def tiny_tokenizer(folder: Path):
    """likeness's tiny SDXL tokenizer (whole-word CLIP BPE over likeness/models/tiny_words.txt), built by its own code."""
    spec = importlib.util.spec_from_file_location("likeness_tiny", ROOT / "likeness" / "models" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tokenizer(folder)


def lora_shapes(unet) -> dict:
    """The LoRA in the attention-processor key layout (``unet.<attention>.processor.to_q_lora.down.weight``)."""
    shapes = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            for projection in ("to_q", "to_k", "to_v", "to_out"):
                linear = module.to_out[0] if projection == "to_out" else getattr(module, projection)
                prefix = f"unet.{name}.processor.{projection}_lora"
                shapes[f"{prefix}.down.weight"] = (LORA_RANK, linear.in_features)
                shapes[f"{prefix}.up.weight"] = (linear.out_features, LORA_RANK)
    return shapes


def import_reference(ref: Path) -> dict:
    """The package without its ``__init__`` (which imports the ControlNet / T2I-Adapter pipelines and insightface);
    the two model files with reduced sizes; then the pipeline, which takes the encoders from the package."""
    ref_shims.install()
    package = types.ModuleType("photomaker")
    package.__path__ = [str(ref / "photomaker")]
    sys.modules["photomaker"] = package
    import photomaker.resampler  # noqa: F401  (model_v2's relative import)

    counts = {}
    for name in ("photomaker.model", "photomaker.model_v2"):
        path = ref / (name.replace(".", "/") + ".py")
        source = path.read_text()
        counts[name] = {}
        for old, new in SOURCE:
            counts[name][old] = source.count(old)
            source = source.replace(old, new)
        module = types.ModuleType(name)
        module.__file__, module.__package__ = str(path), "photomaker"
        sys.modules[name] = module
        exec(compile(source, str(path), "exec"), module.__dict__)
        setattr(package, name.rsplit(".", 1)[1], module)
    package.PhotoMakerIDEncoder = sys.modules["photomaker.model"].PhotoMakerIDEncoder
    package.PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken = \
        sys.modules["photomaker.model_v2"].PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken
    return counts


def run_version(version: str, tmp: Path, out: dict, record: dict) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from photomaker import model, model_v2
    from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline

    tokenizers = [tiny_tokenizer(tmp / f"tokenizer-{version}-{i}") for i in range(2)]
    encoders = [CLIPTextModel(text_config(tokenizers[0], 0)), CLIPTextModelWithProjection(text_config(tokenizers[1], 1))]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    vae = AutoencoderKL(**VAE_CONFIG)  # unused (latent output); its own seeded initialisation
    specs = {"unet": gw.make_spec({k: tuple(v.shape) for k, v in unet.state_dict().items()}),
             "text_encoder": gw.make_spec({k: tuple(v.shape) for k, v in encoders[0].state_dict().items()}),
             "text_encoder_2": gw.make_spec({k: tuple(v.shape) for k, v in encoders[1].state_dict().items()})}
    digests = {}
    for part, module in (("unet", unet), ("text_encoder", encoders[0]), ("text_encoder_2", encoders[1])):
        state = gw.state_from_spec(specs[part], SEED)
        module.load_state_dict(state, strict=True)
        digests[part] = gw.digest(state)
    id_encoder = model.PhotoMakerIDEncoder() if version == "v1" else model_v2.PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken()
    shapes = {f"id_encoder.{k}": tuple(v.shape) for k, v in id_encoder.state_dict().items()}
    shapes.update({f"lora_weights.{k}": v for k, v in lora_shapes(unet).items()})
    spec = gw.make_spec(shapes, **{k: (0.0, 0.05) for k in shapes if k.endswith(("position_embedding.weight", "class_embedding"))})
    state = gw.state_from_spec(spec, SEED)
    name = f"photomaker-{version}.bin"
    nested: dict = {"id_encoder": {}, "lora_weights": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        nested[head][rest] = value
    torch.save(nested, tmp / name)

    pipe = PhotoMakerStableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                               tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                                               scheduler=EulerDiscreteScheduler(**SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_photomaker_adapter(str(tmp), weight_name=name, trigger_word="img", pm_version=version)
    if version == "v1":
        pipe.num_tokens = 1  # the v1 behaviour before 48ec26d (see the module docstring)
    pipe.set_adapters(["photomaker"], adapter_weights=[1.0])
    pipe.fuse_lora()
    lora_unet = pipe.unet.state_dict()
    fused = {k.replace(".base_layer.", "."): v for k, v in lora_unet.items() if "lora_" not in k}  # peft keeps the layers
    changed = [k for k, v in gw.state_from_spec(specs["unet"], SEED).items() if not torch.equal(fused[k], v)]
    assert len(changed) == len(lora_shapes(unet)) // 2, f"the LoRA changed {len(changed)} UNet weights"  # every projection
    for key, value in nested["id_encoder"].items():
        assert torch.equal(pipe.id_encoder.state_dict()[key], value), key

    captured = {"unet_in": [], "unet_out": []}
    pipe.id_encoder.register_forward_hook(lambda m, args, output: captured.update(merged=output.clone(), mask=args[2].clone()))

    def unet_hook(module, args, kwargs, output):
        captured["unet_in"].append(args[0].clone())
        captured["unet_out"].append(output[0].clone())

    pipe.unet.register_forward_hook(unet_hook, with_kwargs=True)
    kwargs = {"id_embeds": arcface()} if version == "v2" else {}
    with torch.no_grad():
        result = pipe(PROMPT, input_id_images=[Image.fromarray(p) for p in photos()], num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, start_merge_step=0, latents=latents(), height=SIZE, width=SIZE,
                      output_type="latent", **kwargs).images
    out[f"{version}/merged"] = captured["merged"]
    out[f"{version}/mask"] = captured["mask"].float()
    for step in range(STEPS):
        out[f"{version}/step{step}/unet_in"] = captured["unet_in"][step]
        out[f"{version}/step{step}/unet_out"] = captured["unet_out"][step]
    out[f"{version}/latents"] = result
    record[version] = {"file": name, "spec": spec, "digest": gw.digest(state), "parts": specs, "part_digests": digests,
                       "num_tokens": pipe.num_tokens}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="a checkout of TencentARC/PhotoMaker at " + REFERENCE_COMMIT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts = import_reference(args.ref.resolve())
    import diffusers
    import transformers
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    record = {"reference": REFERENCE, "commit": REFERENCE_COMMIT, "command": COMMAND, "seed": SEED,
              "source_replacements": counts,
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                           "transformers": transformers.__version__, "numpy": np.__version__},
              "text": TEXT, "unet_config": UNET_CONFIG, "vae_config": VAE_CONFIG, "scheduler": SCHEDULER,
              "face_dim": FACE_DIM, "photos": PHOTOS, "prompt": PROMPT, "size": SIZE, "steps": STEPS,
              "guidance": GUIDANCE, "start_merge_step": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for version in ("v1", "v2"):
            run_version(version, Path(tmp), out, record)
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().float() for k, v in out.items()}, str(OUT / "goldens.safetensors"))
    gw.save_json(OUT / "goldens.json", record)
    print(f"wrote {len(out)} tensors to {OUT}")


if __name__ == "__main__":
    main()
