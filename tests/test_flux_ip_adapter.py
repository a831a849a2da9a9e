"""FLUX IP-Adapter (XLabs) on the tiny FLUX.1 with a tiny file in the published key layout: loaded by diffusers' own
``load_ip_adapter``, it changes the image with the person, gives diffusers' own pixels, reproduces after save/load,
gives plain FLUX's pixels at scale 0, and refuses wrong files, bases and photos by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from likeness.methods import ArtifactError, load_artifact, personalize
from likeness.methods.peers.common import CheckpointError
from likeness.methods.preparation import NoFaceError
from likeness.models.runtime import resolve_plan
from likeness.testing.flux_ip_adapter_layout import write_published_files

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = "likeness/tiny-flux"
PROMPT = "a photo of {}"
SAMPLING = dict(num_inference_steps=2, height=32, width=32)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory):
    return write_published_files(tmp_path_factory.mktemp("xlabs"), BASE)


@pytest.fixture(scope="module")
def photos(astronaut_path, tmp_path_factory):
    """The astronaut, a second 'person' (her photo mirrored with the colour channels swapped: dlib still finds the
    face, the CLIP embedding differs) and a photo without a face."""
    folder = tmp_path_factory.mktemp("people")
    image = np.asarray(Image.open(astronaut_path).convert("RGB"))
    Image.fromarray(np.ascontiguousarray(image[:, ::-1, ::-1])).save(folder / "other.png")
    Image.fromarray(np.random.default_rng(0).integers(90, 110, (128, 128, 3), dtype=np.uint8)).save(folder / "wall.png")
    return {"astro": astronaut_path, "other": folder / "other.png", "wall": folder / "wall.png"}


def _plain():
    from likeness.models.loading import resolve_model_path

    pipe = FluxPipeline.from_pretrained(resolve_model_path(BASE))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, seed, **kwargs):
    # The published usage: true CFG 4.0 with an empty negative prompt (the method's defaults).
    return _pixels(pipe("a photo of a person", negative_prompt="", true_cfg_scale=4.0,
                        generator=torch.Generator("cpu").manual_seed(seed), **SAMPLING, **kwargs).images[0])


def test_identity_drives_the_image_as_in_diffusers_and_reproduces(files, photos, tmp_path):
    art = personalize("flux-ip-adapter", {"astro": [photos["astro"]], "other": [photos["other"]]}, tmp_path / "a", BASE,
                      **files)
    manifest = json.loads((art / "likeness.json").read_text())
    record = manifest["config"]["weights"][0]
    assert record["path"] == str(Path(files["weights"]).resolve()) and len(record["sha256"]) == 64
    assert manifest["config"]["weights"][1]["needed_at_generation"] is False  # the image encoder: embeddings stored
    assert manifest["sampling"] == {"num_inference_steps": 28, "guidance_scale": 3.5}
    embeds = load_file(str(art / "embeddings.safetensors"))
    assert embeds["astro.image_embeds"].shape == (1, 1, 16) == embeds["astro.negative_image_embeds"].shape

    ours = load_artifact(art)
    astro = _pixels(ours.generate([PROMPT], [3], identity="astro", **SAMPLING)[0])
    other = _pixels(ours.generate([PROMPT], [3], identity="other", **SAMPLING)[0])
    assert np.abs(astro - other).max() > 10  # another person, another image
    two = ours.generate([PROMPT, PROMPT], [3, 3], identity="astro", batch_size=2, **SAMPLING)
    # each image of a batch gets the person; two rows of one batched product may round differently on some CPUs
    assert np.abs(_pixels(two[0]) - _pixels(two[1])).max() <= 1
    assert np.abs(_pixels(two[0]) - astro).max() <= 2  # batch of 2 vs 1: float reduction order only
    again = load_artifact(art).generate([PROMPT], [3], identity="astro", **SAMPLING)[0]
    np.testing.assert_array_equal(astro, _pixels(again))  # save/load reproduces the pixels exactly

    plain = _plain()
    assert np.abs(astro - _run(plain, 3)).max() > 10  # the adapter changes the image
    # Plain diffusers, as its docs use it: the saved crop through its own CLIP encoder, black-image negative.
    plain.load_ip_adapter(str(Path(files["weights"]).parent), weight_name="ip_adapter.safetensors",
                          image_encoder_pretrained_model_name_or_path=files["image_encoder"], image_encoder_dtype=torch.float32)
    plain.set_ip_adapter_scale(1.0)
    np.testing.assert_array_equal(astro, _run(plain, 3, ip_adapter_image=Image.open(art / "astro-crop.png")))


def test_scale_zero_gives_plain_flux_pixels(files, photos, tmp_path):
    """Exact: at scale 0 diffusers' processor adds 0 * (image attention), exactly zero, to the same text/image
    attention arithmetic FluxAttnProcessor does (the same kernels on the same CPU, so it holds on any CPU)."""
    art = personalize("flux-ip-adapter", {"astro": [photos["astro"]]}, tmp_path / "a", BASE, scale=0.0, **files)
    zero = _pixels(load_artifact(art).generate([PROMPT], [4], **SAMPLING)[0])
    np.testing.assert_array_equal(zero, _run(_plain(), 4))


def test_device_dtype_and_whole_photo(files, photos, tmp_path):
    """framing=full takes the whole photo (no face needed); a bfloat16 plan puts the adapter in bfloat16 too."""
    art = personalize("flux-ip-adapter", {"wall": [photos["wall"]]}, tmp_path / "a", BASE, framing="full", device="cpu",
                      **files)
    assert Image.open(art / "wall-crop.png").size == (128, 128)
    ours = load_artifact(art, plan=resolve_plan("cpu", "bfloat16", "no"))
    processor = ours.pipe.transformer.attn_processors["transformer_blocks.0.attn.processor"]
    assert type(processor).__name__ == "FluxIPAdapterAttnProcessor"
    for module in (processor, ours.pipe.transformer.encoder_hid_proj):
        assert {(p.device.type, p.dtype) for p in module.parameters()} == {("cpu", torch.bfloat16)}
    assert ours.generate([PROMPT], [3], **SAMPLING)[0].size == (32, 32)


def _refused(tmp_path, match, *, photo, base=BASE, error=CheckpointError, **options):
    out = tmp_path / "refused"
    with pytest.raises(error, match=match):
        personalize("flux-ip-adapter", {"p": [photo]}, out, base, **options)
    assert not (out / "likeness.json").exists()


def test_bad_input_is_named(tiny_models, files, photos, tmp_path):
    astro, weights = photos["astro"], files["weights"]
    for base, family in (("likeness/tiny-sdxl", "SDXL"), ("likeness/tiny-flux2-klein", "FLUX.2")):
        _refused(tmp_path, f"ip_adapter.safetensors.*made for FLUX.1.*is {family}.*Use a FLUX.1 base", photo=astro,
                 base=base, error=ValueError, **files)
    state = load_file(weights)
    renamed = dict(state)
    renamed["double_blocks.0.processor.ip_adapter_double_stream_k_projx.weight"] = \
        renamed.pop("double_blocks.0.processor.ip_adapter_double_stream_k_proj.weight")
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    _refused(tmp_path, r"renamed.safetensors: not a valid XLabs FLUX IP-Adapter.*missing keys: double_blocks\.0\.processor"
             r"\.ip_adapter_double_stream_k_proj\.weight; unexpected keys: .*k_projx", photo=astro,
             weights=str(tmp_path / "renamed.safetensors"), image_encoder=files["image_encoder"])
    reshaped = {**state, "ip_adapter_proj_model.norm.bias": torch.zeros(7)}
    save_file(reshaped, str(tmp_path / "reshaped.safetensors"))
    _refused(tmp_path, r"wrong shapes: ip_adapter_proj_model\.norm\.bias is \(7,\), expected \(32,\)", photo=astro,
             weights=str(tmp_path / "reshaped.safetensors"), image_encoder=files["image_encoder"])
    deeper = {**state, **{k.replace("double_blocks.0.", "double_blocks.1."): v.clone() for k, v in state.items()
                          if k.startswith("double_blocks.0.")}}
    save_file(deeper, str(tmp_path / "deeper.safetensors"))
    _refused(tmp_path, "deeper.safetensors: made for a FLUX transformer with 2 double-stream blocks of width 32.*"
             "has 1 of width 32", photo=astro, weights=str(tmp_path / "deeper.safetensors"),
             image_encoder=files["image_encoder"])
    save_file({"image_proj.proj.weight": torch.zeros(4, 2), "ip_adapter.1.to_k_ip.weight": torch.zeros(2, 2)},
              str(tmp_path / "sd.safetensors"))
    _refused(tmp_path, "sd.safetensors: not an XLabs FLUX IP-Adapter file.*SD / SDXL IP-Adapter's", photo=astro,
             weights=str(tmp_path / "sd.safetensors"))
    torch.save(state, tmp_path / "ip_adapter.bin")
    _refused(tmp_path, r"ip_adapter.bin: XLabs publishes the FLUX IP-Adapter as safetensors", photo=astro,
             weights=str(tmp_path / "ip_adapter.bin"))
    wide = write_published_files(tmp_path / "wide", BASE)  # an encoder whose projection does not fit the file
    shutil.rmtree(wide["image_encoder"])
    from likeness.testing.peer_layouts import clip_vision_encoder

    clip_vision_encoder(wide["image_encoder"], projection=24)
    _refused(tmp_path, "expects CLIP image embeddings of width 16, but the image encoder .* gives 24", photo=astro, **wide)
    _refused(tmp_path, "wall.png: no face found", photo=photos["wall"], error=NoFaceError, **files)
    _refused(tmp_path, "framing must be one of face, upper_body, full", photo=astro, error=ValueError, framing="head", **files)
    _refused(tmp_path, "nowhere.safetensors.*no such file or folder", photo=astro, error=FileNotFoundError,
             weights=str(tmp_path / "nowhere.safetensors"))
    _refused(tmp_path, r"image_encoder: folder has no flux-ip-adapter weights file \(looked for ip_adapter.safetensors, "
             r"flux-ip-adapter.safetensors\); pass the file itself", photo=astro, error=FileNotFoundError,
             weights=str(tmp_path / "wide" / "image_encoder"))
    _refused(tmp_path, "hub repository did not provide.*HF_HUB_OFFLINE", photo=astro, error=FileNotFoundError,
             weights="someone/flux-ip-adapter-copy")
    alone = tmp_path / "alone" / "ip_adapter.safetensors"  # no image_encoder/ beside it: the published encoder's hub id
    alone.parent.mkdir()
    shutil.copy(weights, alone)
    _refused(tmp_path, "openai/clip-vit-large-patch14", photo=astro, error=FileNotFoundError, weights=str(alone.parent))


def test_a_folder_with_x_flux_s_file_name_resolves(files):
    """The hub repository has carried the weights as ip_adapter.safetensors (diffusers' docs) and as
    flux-ip-adapter.safetensors (x-flux's scripts): a folder with either is found."""
    from likeness.methods.peers.flux_ip_adapter import FluxIPAdapter

    folder = Path(files["weights"]).parent.parent / "x-flux-named"
    folder.mkdir(exist_ok=True)
    shutil.copy(files["weights"], folder / "flux-ip-adapter.safetensors")
    assert FluxIPAdapter.weights_path({"weights": str(folder), "weight_name": None}).name == "flux-ip-adapter.safetensors"
    assert FluxIPAdapter.weights_path({"weights": str(Path(files["weights"]).parent), "weight_name": None}) == Path(files["weights"])


def test_changed_file_is_refused_at_load(files, photos, tmp_path):
    copy = tmp_path / "ip_adapter.safetensors"
    shutil.copy(files["weights"], copy)
    art = personalize("flux-ip-adapter", {"astro": [photos["astro"]]}, tmp_path / "a", BASE, weights=str(copy),
                      image_encoder=files["image_encoder"])
    state = load_file(str(copy))
    state["ip_adapter_proj_model.norm.bias"] += 1
    save_file(state, str(copy))
    with pytest.raises(ArtifactError, match="ip_adapter.safetensors changed since the artifact was made"):
        load_artifact(art)


# -- against XLabs' own code (tests/golden/make_flux_ip_adapter_goldens.py: x-flux at 4749542) --------------------------

GOLDEN = Path(__file__).parent / "golden" / "flux_ip_adapter"
# x-flux double-block names -> diffusers FluxTransformerBlock names (qkv: fused in x-flux, split in diffusers).
BLOCK_NAMES = {"img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear", "img_attn.proj": "attn.to_out.0",
               "txt_attn.proj": "attn.to_add_out", "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
               "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2"}
QKV = {"img_attn": ("attn.to_q", "attn.to_k", "attn.to_v"), "txt_attn": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
QK_NORMS = {"img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
            "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
            "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight"}


def _diffusers_block_state(state: dict, i: int) -> dict:
    out = {}
    for key, value in state.items():
        prefix = f"double_blocks.{i}."
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        head, _, param = name.rpartition(".")
        if name in QK_NORMS:
            out[QK_NORMS[name]] = value
        elif head in BLOCK_NAMES:
            out[f"{BLOCK_NAMES[head]}.{param}"] = value
        elif head.endswith(".qkv"):
            for target, part in zip(QKV[head[:-len(".qkv")]], value.chunk(3)):
                out[f"{target}.{param}"] = part
        else:
            raise KeyError(name)
    return out


def test_matches_xlabs_x_flux_on_the_same_file():
    """Two FLUX double blocks, x-flux's IPDoubleStreamBlockProcessor + ImageProjModel vs diffusers' FluxIPAdapterAttnProcessor
    + ImageProjection loaded by the method from THE SAME XLabs-layout file: image tokens and both streams after the blocks,
    at ip_scale 1 and 0.5, and without the adapter (which checks the block mapping above). fp32; within 2e-5 of the
    outputs' scale: the two codes apply the rotary embedding and the attention in different tensor layouts, which another
    CPU's kernels may round differently (measured on this x86 CPU, torch 2.13 in both environments: exactly equal)."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from likeness.methods import get_method

    sizes = json.loads((GOLDEN / "goldens.json").read_text())["sizes"]
    golden = load_file(str(GOLDEN / "goldens.safetensors"))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=sizes["blocks"], num_single_layers=1,
                                         attention_head_dim=sizes["hidden"] // sizes["heads"], num_attention_heads=sizes["heads"],
                                         joint_attention_dim=sizes["hidden"], pooled_projection_dim=sizes["hidden"],
                                         axes_dims_rope=sizes["axes_dim"], guidance_embeds=True)
    blocks = load_file(str(GOLDEN / "blocks.safetensors"))
    for i, block in enumerate(transformer.transformer_blocks):
        block.load_state_dict(_diffusers_block_state(blocks, i), strict=True)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    rotary = transformer.pos_embed(golden["ids"])

    def run(ip=None):
        img, txt = golden["img"], golden["txt"]
        with torch.no_grad():
            for block in transformer.transformer_blocks:
                txt, img = block(hidden_states=img, encoder_hidden_states=txt, temb=golden["vec"], image_rotary_emb=rotary,
                                 joint_attention_kwargs={"ip_hidden_states": ip} if ip is not None else None)
        return img, txt

    def close(ours, label):
        for stream, value in zip(("img", "txt"), ours):
            reference = golden[f"{label}.{stream}"]
            assert (value - reference).abs().max() <= 2e-5 * reference.abs().max(), (label, stream)

    close(run(), "plain")
    manifest = SimpleNamespace(config={"options": {"scale": 1.0}, "weights": [{"path": str(GOLDEN / "ip_adapter.safetensors")}]},
                               base_model=SimpleNamespace(model_id="x-flux golden blocks"))
    get_method("flux-ip-adapter").apply(pipe, None, manifest)  # the method's own check + diffusers' load_ip_adapter
    with torch.no_grad():
        ip = transformer.encoder_hid_proj([golden["clip_embeds"][None]])  # (1, 1, 16) -> [(1, 1, 4, 32)]
    torch.testing.assert_close(ip[0][:, 0], golden["image_proj"], rtol=0, atol=1e-6)
    close(run(ip), "ip1")
    pipe.set_ip_adapter_scale(0.5)
    close(run(ip), "ip05")
    assert (golden["ip1.img"] - golden["plain.img"]).abs().max() > 0.1  # the adapter matters in the reference too
