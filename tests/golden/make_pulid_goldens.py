"""Goldens for PuLID SDXL (v1 and v1.1) from the official code, ToTheBeginning/PuLID at commit
1aa2fc7 (``REFERENCE_COMMIT``), on seeded random weights in the published key layouts at reduced size.

Run in a side environment, never in likeness's (the exact command, from the repository root):

    git --git-dir=<mirror of ToTheBeginning/PuLID> archive 1aa2fc7 eva_clip pulid app.py | tar -x -C /tmp/pulid-ref
    /work/refenv-goldens/bin/python tests/golden/make_pulid_goldens.py --ref /tmp/pulid-ref

Side environment (/work/refenv-goldens): python 3.11, torch 2.13.0 (CPU), diffusers 0.25.0 (PuLID's pin),
transformers 4.43.3 (its pin), huggingface_hub 0.25.2 (the last with ``cached_download``, which diffusers 0.25
imports), numpy 1.26.4, einops, safetensors, accelerate, ftfy, regex. torchvision, timm, insightface,
facexlib, basicsr, torchsde and cv2 are replaced by :mod:`ref_shims` (see there: torchvision's tensor
``resize`` and ``normalize`` are real, with 0.15's no-antialias default). Made, for all three golden scripts, with:

    python3.11 -m venv /work/refenv-goldens && . /work/refenv-goldens/bin/activate
    pip install torch==2.13.0 numpy==1.26.4 einops==0.8.2 safetensors==0.8.0 diffusers==0.25.0 \
        transformers==4.43.3 tokenizers==0.19.1 huggingface_hub==0.25.2 accelerate==1.16.0 peft==0.10.0 \
        ftfy==6.3.1 regex opencv-python-headless==4.10.0.84 pillow
    pip install --no-deps --target /work/refenv-goldens/diffusers-0.25.1 diffusers==0.25.1   # InstantID's pin
    pip install --no-deps --target /work/refenv-goldens/diffusers-0.29.2 diffusers==0.29.2   # for PhotoMaker

What runs of the reference, unchanged unless said here:
- EVA02-CLIP: ``eva_clip.create_model_and_transforms`` with a reduced copy of ``EVA02-CLIP-L-14-336.json`` (same
  options: rope, intp_freq, pt_hw_seq_len 16, naiveswiglu, subln, head width 64; width 128, 21 blocks, 56 px,
  patch 14, embedding 32), loading the checkpoint file through ``load_checkpoint`` (``strict=False``; the
  script checks every tensor arrived). The file carries the rope tables of the reference's own tower.
- ``pulid/encoders.py`` and ``pulid/encoders_transformer.py``: their hard-coded published widths (the 1024-wide
  EVA features and MLPs, the 1280-wide [ArcFace; EVA] input) are replaced in the source text by the reduced
  ones (``1024`` -> 128, ``1280`` -> 48) before it is executed; nothing else changes.
- ``PuLIDPipeline.hack_unet_attn_layers``, ``load_pretrain`` (the file read as the pipeline reads it) and
  ``get_id_embedding`` (v1 one photo, v1.1 two photos) of ``pulid/pipeline.py`` / ``pulid/pipeline_v1_1.py``,
  and for v1 with two photos the ``run`` function of the published ``app.py`` (its source, executed with this
  pipeline object; importing app.py would build the downloading pipeline and the UI), ID mix off
  on an object made without ``__init__`` (which downloads SDXL, antelopev2, facexlib): its face detector
  returns a fixed ArcFace embedding, facexlib's aligner a fixed 512 px face, the parser fixed BiSeNet labels.
- ``IDAttnProcessor2_0`` with the module switches ``NUM_ZERO`` / ``ORTHO`` / ``ORTHO_v2`` set as the published
  apps set them, called directly on one cross-attention layer, and inside one UNet call (the CFG batch
  [negative, positive], ``id_embedding`` = [uncond; cond] as ``PuLIDPipeline.inference`` passes it).
- v1's ``PuLIDPipeline.inference`` end to end (``run_pipeline``): a reduced SDXL (text encoders 64 + 192 wide,
  likeness's tiny tokenizer), the demo's DPM-Solver with trailing timesteps, 2 steps, guidance 1.2.

Outputs: ``tests/golden/pulid/goldens.safetensors`` (tensors), ``goldens.json`` (specs of every weight file,
digests, sizes, cases), ``eva_rope.safetensors`` (the reference tower's rotary tables).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import golden_weights as gw  # noqa: E402
import ref_shims  # noqa: E402

REFERENCE = "ToTheBeginning/PuLID"
COMMAND = "/work/refenv-goldens/bin/python tests/golden/make_pulid_goldens.py --ref /tmp/pulid-ref"
REFERENCE_COMMIT = "1aa2fc7"
OUT = HERE / "pulid"
SEED = 24
FACE_DIM = 16  # ArcFace width (512 published)
EVA = dict(width=128, layers=21, image_size=56, patch_size=14, embed_dim=32)  # 1024, 24, 336, 14, 768 published
HIDDEN = EVA["width"]  # the MLPs' hidden width, = EVA width as published (1024 both)
COND = FACE_DIM + EVA["embed_dim"]
UNET_CONFIG = dict(block_out_channels=[32, 64], layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                   down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                   up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], norm_num_groups=32, attention_head_dim=[2, 4],
                   use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                   transformer_layers_per_block=[1, 2], projection_class_embeddings_input_dim=80,
                   cross_attention_dim=64)
IDFORMER = dict(dim=128, depth=10, dim_head=64, heads=2, num_id_token=5, num_queries=8, output_dim=64)
ATTN_LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
ID_SCALE = 0.8
CASES = {"v1": [("v2", 8), ("v1", 16), ("off", 0)], "v1.1": [("v2", 20), ("v1", 20), ("off", 20)]}
PHOTOS = {"v1": 1, "v1.1": 2}
# facexlib's BiSeNet (CelebAMask-HQ) label order; PuLID whitens ids 0, 16, 18, 7, 8, 9, 14, 15.
BISENET = ["background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r", "nose", "mouth",
           "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"]


# -- fixed inputs (regenerated identically by the test) -----------------------------------------------------


def face_inputs(index: int) -> dict:
    """The aligned 512 px face (RGB uint8), its parsing labels (16 px blocks), the ArcFace embedding."""
    face = gw.integers(SEED, f"face{index}", (512, 512, 3), 0, 256).to(torch.uint8)
    labels = gw.integers(SEED, f"labels{index}", (16, 16), 0, len(BISENET))
    labels = labels.repeat_interleave(32, 0).repeat_interleave(32, 1)
    arcface = gw.uniform(SEED, f"arcface{index}", (FACE_DIM,), 0.0, 3.0)  # raw antelopev2 embeddings are not unit length
    return {"face": face, "labels": labels, "arcface": arcface}


def unet_inputs() -> dict:
    return {"latents": gw.uniform(SEED, "latents", (1, 4, 8, 8)),
            "timestep": torch.tensor(500),
            "text": gw.uniform(SEED, "text", (2, 7, 64)),
            "pooled": gw.uniform(SEED, "pooled", (2, 32)),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2),
            "attn_hidden": gw.uniform(SEED, "attn_hidden", (2, 16, 32 * 2))}


# -- the reference --------------------------------------------------------------------------------------------


def import_reference(ref: Path):
    ref_shims.install()
    sys.path.insert(0, str(ref))
    import pulid  # noqa: F401  (the package; its modules are imported below)

    replaced = {}
    for name in ("pulid.encoders", "pulid.encoders_transformer"):
        source = (ref / (name.replace(".", "/") + ".py")).read_text()
        replaced[name] = {"1024": source.count("1024"), "1280": source.count("1280")}
        source = source.replace("1024", str(HIDDEN)).replace("1280", str(COND))
        module = types.ModuleType(name)
        module.__file__ = str(ref / (name.replace(".", "/") + ".py"))
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        sys.modules[name] = module
    from pulid import utils

    sys.modules["basicsr.utils"].img2tensor = utils.img2tensor  # basicsr's img2tensor, which pulid/utils.py copies
    sys.modules["basicsr.utils"].tensor2img = utils.tensor2img
    from pulid import attention_processor, pipeline, pipeline_v1_1
    return attention_processor, pipeline, pipeline_v1_1, replaced


def eva_model(tmp: Path):
    """The reduced EVA02-CLIP (CustomCLIP) built by the reference factory; returns (model, checkpoint path, spec)."""
    import json

    from eva_clip import create_model_and_transforms
    from eva_clip.factory import add_model_config

    config = json.loads(Path(sys.modules["eva_clip"].__file__).with_name("model_configs").joinpath(
        "EVA02-CLIP-L-14-336.json").read_text())
    config["embed_dim"] = EVA["embed_dim"]
    config["vision_cfg"].update(image_size=EVA["image_size"], layers=EVA["layers"], width=EVA["width"],
                                patch_size=EVA["patch_size"])
    config["text_cfg"].update(context_length=8, vocab_size=64, width=64, heads=1, layers=1)
    (tmp / "configs").mkdir()
    (tmp / "configs" / "EVA02-CLIP-L-14-336-golden.json").write_text(json.dumps(config))
    add_model_config(tmp / "configs")
    model, _, _ = create_model_and_transforms("EVA02-CLIP-L-14-336-golden", None, force_custom_clip=True)
    full = model.state_dict()
    rope = {k: v.clone() for k, v in full.items() if "freqs_" in k}
    shapes = {k: tuple(v.shape) for k, v in full.items() if k not in rope}
    spec = gw.make_spec(shapes, **{k: (0.0, 0.05) for k in shapes if k.endswith(("pos_embed", "cls_token"))})
    state = gw.state_from_spec(spec, SEED)
    digest = gw.digest(state)  # of the seeded tensors; the rope tables are committed as they are
    state.update(rope)
    path = tmp / "EVA02_CLIP_L_336_psz14_s6B.pt"
    torch.save(state, path)
    model, _, _ = create_model_and_transforms("EVA02-CLIP-L-14-336-golden", str(path), force_custom_clip=True)
    loaded = model.state_dict()
    for key, value in state.items():  # load_checkpoint is strict=False: check every tensor really arrived
        if "freqs_" not in key:
            assert torch.equal(loaded[key], value), key
    return model.eval(), spec, rope, digest


class Recorder(torch.nn.Module):
    """Wraps the EVA tower to keep what it returned (the goldens of the tower itself)."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.image_size = visual.image_size
        self.calls = []

    def forward(self, x, **kwargs):
        embedding, hidden = self.visual(x, **kwargs)
        self.calls.append((x.clone(), embedding.clone(), [h.clone() for h in hidden]))
        return embedding, hidden


class FaceHelper:
    """facexlib's FaceRestoreHelper as far as get_id_embedding uses it: a fixed aligned face and fixed parsing."""

    def __init__(self, inputs):
        self.inputs, self.index, self.cropped_faces = inputs, -1, []

    def clean_all(self):
        self.cropped_faces = []

    def read_image(self, image):
        self.index += 1

    def get_face_landmarks_5(self, only_center_face=True):
        pass

    def align_warp_face(self):
        self.cropped_faces = [self.inputs[self.index]["face"].numpy()[..., ::-1].copy()]  # BGR, as cv2 gives it

    def face_parse(self, x):
        labels = self.inputs[self.index]["labels"]
        return (torch.nn.functional.one_hot(labels, len(BISENET)).permute(2, 0, 1)[None].float(),)


class FaceApp:
    def __init__(self, inputs):
        self.inputs, self.index = inputs, -1

    def get(self, image_bgr):
        self.index += 1
        return [{"bbox": np.array([0, 0, 512, 512]), "embedding": self.inputs[self.index]["arcface"].numpy()}]


def app_run(ref: Path):
    """``run`` of the published v1 app (app.py), taken from its source: app.py itself builds the whole pipeline
    (downloads) and the gradio UI when imported."""
    import ast

    source = (ref / "app.py").read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "run")
    return ast.get_source_segment(source, node)


APP_RUN: str | None = None


def run_app(args_ref):
    """The app's ``run`` with the first photo as ID image and the second as supplementary one, fidelity mode; the
    pipeline's ``inference`` records the ID embeddings it is given (batch [uncond, cond])."""
    import pulid.utils as utils
    from pulid import attention_processor

    given = {}
    obj = args_ref
    inputs = [face_inputs(i) for i in range(2)]
    obj.face_helper, obj.app = FaceHelper(inputs), FaceApp(inputs)
    obj.inference = lambda prompt, size, neg, embedding, *rest: given.update(embedding=embedding) or [np.zeros((8, 8, 3))]
    namespace = {"pipeline": obj, "attention": attention_processor, "torch": torch, "np": np,
                 "resize_numpy_image_long": utils.resize_numpy_image_long, "seed_everything": utils.seed_everything}
    exec(APP_RUN, namespace)
    with torch.no_grad():
        namespace["run"](inputs[0]["face"].numpy(), inputs[1]["face"].numpy(), None, None, "prompt", "", 1.2, 1, 0, 4,
                         64, 64, ID_SCALE, "fidelity", False)
    return given["embedding"][:1], given["embedding"][1:]


def run_version(version, modules, eva, unet_cls, tmp, out, record):
    attention_processor, pipeline, pipeline_v1_1, _ = modules
    cls = pipeline.PuLIDPipeline if version == "v1" else pipeline_v1_1.PuLIDPipeline
    obj = cls.__new__(cls)
    obj.device = "cpu"
    obj.debug_img_list = []
    torch.manual_seed(0)
    unet = unet_cls(**UNET_CONFIG)
    unet_spec = gw.make_spec({k: tuple(v.shape) for k, v in unet.state_dict().items()})
    unet_state = gw.state_from_spec(unet_spec, SEED)
    unet.load_state_dict(unet_state)
    obj.hack_unet_attn_layers(unet)
    if version == "v1":
        obj.id_adapter = sys.modules["pulid.encoders"].IDEncoder(width=COND, context_dim=UNET_CONFIG["cross_attention_dim"])
    else:
        obj.id_adapter = sys.modules["pulid.encoders_transformer"].IDFormer(**IDFORMER)
    shapes = {f"id_adapter.{k}": tuple(v.shape) for k, v in obj.id_adapter.state_dict().items()}
    shapes.update({f"id_adapter_attn_layers.{k}": tuple(v.shape) for k, v in obj.id_adapter_attn_layers.state_dict().items()})
    overrides = {}
    if version == "v1.1":
        overrides = {"id_adapter.latents": (0.0, 3 ** 0.5 * IDFORMER["dim"] ** -0.5),
                     "id_adapter.proj_out": (0.0, (3.0 / IDFORMER["dim"]) ** 0.5)}
    spec = gw.make_spec(shapes, **overrides)
    state = gw.state_from_spec(spec, SEED)
    name = "pulid_v1.bin" if version == "v1" else "pulid_v1.1.safetensors"
    (tmp / "models").mkdir(exist_ok=True)
    if version == "v1":
        torch.save(state, tmp / "models" / name)
    else:
        from safetensors.torch import save_file

        save_file(state, str(tmp / "models" / name))
    module = pipeline if version == "v1" else pipeline_v1_1
    module.hf_hub_download = lambda *args, **kwargs: None  # the file is already where load_pretrain reads it
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        obj.load_pretrain()
    finally:
        os.chdir(cwd)
    for key, value in state.items():
        head, _, rest = key.partition(".")
        assert torch.equal(getattr(obj, head).state_dict()[rest], value), key

    inputs = [face_inputs(i) for i in range(PHOTOS[version])]
    obj.clip_vision_model = Recorder(eva.visual)
    obj.eva_transform_mean, obj.eva_transform_std = eva.visual.image_mean, eva.visual.image_std
    obj.face_helper, obj.app = FaceHelper(inputs), FaceApp(inputs)
    with torch.no_grad():
        if version == "v1":
            both = obj.get_id_embedding(inputs[0]["face"].numpy())
            uncond, cond = both[:1], both[1:]
        else:
            uncond, cond = obj.get_id_embedding([x["face"].numpy() for x in inputs])
    for i, (pixels, embedding, hidden) in enumerate(obj.clip_vision_model.calls):
        out[f"{version}/eva{i}/pixels"] = pixels
        out[f"{version}/eva{i}/embedding"] = embedding
        for level, h in enumerate(hidden):
            out[f"{version}/eva{i}/hidden{level}"] = h
    out[f"{version}/id_embedding"], out[f"{version}/uncond_id_embedding"] = cond, uncond

    if version == "v1":  # several photos: the published app's ``run`` (ID mix off, its default)
        out["v1/mix/uncond_id_embedding"], out["v1/mix/id_embedding"] = run_app(args_ref=obj)
    x = unet_inputs()
    attn = unet.get_submodule(ATTN_LAYER)
    processor = unet.attn_processors[ATTN_LAYER + ".processor"]
    id_embedding = torch.cat([uncond, cond])
    for ortho, num_zero in CASES[version]:
        attention_processor.NUM_ZERO = num_zero
        attention_processor.ORTHO = ortho == "v1"
        attention_processor.ORTHO_v2 = ortho == "v2"
        with torch.no_grad():
            out[f"{version}/attn/{ortho}-{num_zero}"] = processor(attn, x["attn_hidden"], x["text"],
                                                                  id_embedding=id_embedding, id_scale=ID_SCALE)
            out[f"{version}/unet/{ortho}-{num_zero}"] = unet(
                x["latents"].repeat(2, 1, 1, 1), x["timestep"], encoder_hidden_states=x["text"],
                added_cond_kwargs={"text_embeds": x["pooled"], "time_ids": x["time_ids"]},
                cross_attention_kwargs={"id_embedding": id_embedding, "id_scale": ID_SCALE}).sample
    with torch.no_grad():  # no ID embedding: the processors are plain attention
        out[f"{version}/unet/none"] = unet(x["latents"].repeat(2, 1, 1, 1), x["timestep"], encoder_hidden_states=x["text"],
                                           added_cond_kwargs={"text_embeds": x["pooled"], "time_ids": x["time_ids"]}).sample
    record[version] = {"file": name, "spec": spec, "digest": gw.digest(state), "cases": CASES[version],
                       "photos": PHOTOS[version]}
    record["unet"] = {"config": UNET_CONFIG, "spec": unet_spec, "digest": gw.digest(unet_state)}


PIPELINE = {"prompt": "a photo of a man in the park", "negative_prompt": "", "size": 16, "steps": 2, "guidance": 1.2,
            "ortho": "v2", "num_zero": 8,
            "scheduler": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              steps_offset=1, timestep_spacing="trailing", prediction_type="epsilon")}


def run_pipeline(modules, eva, tmp: Path, out: dict, record: dict) -> None:
    """v1's ``PuLIDPipeline.inference`` end to end on a reduced SDXL (PhotoMaker's goldens' shape: text tokens 256
    wide): the published demo's DPM-Solver with trailing timesteps (SDXL-Lightning's sampler; 2 steps here, guidance
    1.2, the empty negative prompt), fidelity mode (ortho v2, 8 zero tokens), one photo. The latents it drew, the
    UNet's inputs and outputs and the latents it decodes are kept."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from make_photomaker_goldens import TEXT, UNET_CONFIG as SDXL_UNET, VAE_CONFIG, text_config, tiny_tokenizer

    attention_processor, pipeline, _, _ = modules
    tokenizers = [tiny_tokenizer(tmp / f"pipeline-tokenizer{i}") for i in range(2)]
    encoders = [CLIPTextModel(text_config(tokenizers[0], 0)), CLIPTextModelWithProjection(text_config(tokenizers[1], 1))]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SDXL_UNET)
    vae = AutoencoderKL(**VAE_CONFIG)  # its own seeded initialisation: only its input is compared
    parts, digests = {}, {}
    for part, module in (("unet", unet), ("text_encoder", encoders[0]), ("text_encoder_2", encoders[1])):
        parts[part] = gw.make_spec({k: tuple(v.shape) for k, v in module.state_dict().items()})
        state = gw.state_from_spec(parts[part], SEED)
        module.load_state_dict(state, strict=True)
        digests[part] = gw.digest(state)
    obj = pipeline.PuLIDPipeline.__new__(pipeline.PuLIDPipeline)
    obj.device, obj.debug_img_list = "cpu", []
    obj.hack_unet_attn_layers(unet)
    obj.id_adapter = sys.modules["pulid.encoders"].IDEncoder(width=COND, context_dim=SDXL_UNET["cross_attention_dim"])
    shapes = {f"id_adapter.{k}": tuple(v.shape) for k, v in obj.id_adapter.state_dict().items()}
    shapes.update({f"id_adapter_attn_layers.{k}": tuple(v.shape) for k, v in obj.id_adapter_attn_layers.state_dict().items()})
    spec = gw.make_spec(shapes)
    state = gw.state_from_spec(spec, SEED)
    folder = tmp / "pipeline"
    (folder / "models").mkdir(parents=True)
    torch.save(state, folder / "models" / "pulid_v1.bin")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        obj.load_pretrain()
    finally:
        os.chdir(cwd)
    obj.pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                                         scheduler=DPMSolverMultistepScheduler(**PIPELINE["scheduler"]))
    obj.pipe.set_progress_bar_config(disable=True)
    obj.pipe.watermark = None
    inputs = [face_inputs(0)]
    obj.clip_vision_model = Recorder(eva.visual)
    obj.eva_transform_mean, obj.eva_transform_std = eva.visual.image_mean, eva.visual.image_std
    obj.face_helper, obj.app = FaceHelper(inputs), FaceApp(inputs)
    attention_processor.NUM_ZERO, attention_processor.ORTHO, attention_processor.ORTHO_v2 = PIPELINE["num_zero"], False, True
    captured = {"unet": []}

    def unet_hook(module, args, kwargs, output):
        captured["unet"].append((args[0].clone(), output[0].clone()))

    unet.register_forward_hook(unet_hook, with_kwargs=True)
    decode = vae.decode
    vae.decode = lambda z, *a, **k: (captured.update(decoded=z.clone()), decode(z, *a, **k))[1]
    size = PIPELINE["size"]
    with torch.no_grad():
        embedding = obj.get_id_embedding(inputs[0]["face"].numpy())
        torch.manual_seed(SEED)  # the pipeline draws its latents from the global generator
        obj.inference(PIPELINE["prompt"], (1, size, size), PIPELINE["negative_prompt"], embedding, ID_SCALE,
                      PIPELINE["guidance"], PIPELINE["steps"])
    out["pipeline/id_embedding"] = embedding
    out["pipeline/latents"] = captured["unet"][0][0][:1].clone()  # DPM-Solver's first model input is the drawn latents
    for step, (unet_in, unet_out) in enumerate(captured["unet"]):
        out[f"pipeline/step{step}/unet_in"], out[f"pipeline/step{step}/unet_out"] = unet_in, unet_out
    out["pipeline/decoded"] = captured["decoded"]
    record["pipeline"] = {**PIPELINE, "text": TEXT, "unet_config": SDXL_UNET, "vae_config": VAE_CONFIG, "parts": parts,
                          "part_digests": digests, "file": "pulid_v1.bin", "spec": spec, "digest": gw.digest(state)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="a checkout of ToTheBeginning/PuLID at " + REFERENCE_COMMIT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    modules = import_reference(args.ref.resolve())
    global APP_RUN
    APP_RUN = app_run(args.ref.resolve())
    import diffusers
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    record = {"reference": REFERENCE, "commit": REFERENCE_COMMIT, "command": COMMAND, "seed": SEED,
              "source_replacements": modules[3],
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__},
              "face_dim": FACE_DIM, "eva": EVA, "idformer": IDFORMER, "attn_layer": ATTN_LAYER, "id_scale": ID_SCALE,
              "bisenet_labels": BISENET}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        eva, eva_spec, rope, eva_digest = eva_model(tmp)
        record["eva_file"] = {"spec": eva_spec, "digest": eva_digest}
        for version in ("v1", "v1.1"):
            run_version(version, modules, eva, UNet2DConditionModel, tmp, out, record)
        run_pipeline(modules, eva, tmp, out, record)
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in rope.items()}, str(OUT / "eva_rope.safetensors"))
    save_file({k: v.contiguous().float() for k, v in out.items()}, str(OUT / "goldens.safetensors"))
    gw.save_json(OUT / "goldens.json", record)
    print(f"wrote {len(out)} tensors to {OUT}")


if __name__ == "__main__":
    main()
