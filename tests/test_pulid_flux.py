"""PuLID-FLUX (v0.9.0 / v0.9.1) on the tiny FLUX.1 base with tiny weights in the published layout (``pulid_encoder.*``,
``pulid_ca.<n>.*``, EVA02-CLIP ``visual.*``): the ID changes the image, artifacts reproduce after save/load, id_weight
0 and a late start_step give plain FLUX, wrong files and bases are refused by name; and against the reference code's
own outputs (tests/golden/pulid_flux, made by tests/golden/make_pulid_flux_goldens.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from likeness.methods import load_artifact, personalize
from likeness.methods.peers.common import CheckpointError, MissingFaceModelError
from likeness.methods.peers.pulid_flux import IDInsertion, ca_positions, install, load_pulid_flux
from likeness.methods.preparation import NoFaceError
from likeness.testing.pulid_flux_layout import write_published_files

pytestmark = pytest.mark.usefixtures("one_thread")
FLUX = "likeness/tiny-flux"
PROMPT = "a photo of {}"
STEPS = 2
GOLDEN = Path(__file__).parent / "golden" / "pulid_flux"


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


# -- against the reference code -------------------------------------------------------------------------------


def bfl_to_diffusers(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """Black Forest Labs' FLUX layout (``flux/model.py``) -> diffusers' ``FluxTransformer2DModel`` names, at any width
    (diffusers' own converter assumes FLUX.1's 3072). Fused qkv (and a single block's qkv + MLP input) are split;
    the final adaLN's (shift, scale) becomes diffusers' (scale, shift)."""
    out: dict[str, torch.Tensor] = {}
    renames = {"time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
               "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
               "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
               "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
               "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
               "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
               "txt_in": "context_embedder", "img_in": "x_embedder", "final_layer.linear": "proj_out"}
    double = {"img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear", "img_attn.proj": "attn.to_out.0",
              "txt_attn.proj": "attn.to_add_out", "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
              "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
              "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
              "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
              "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight"}
    single = {"modulation.lin": "norm.linear", "linear2": "proj_out", "norm.query_norm.scale": "attn.norm_q.weight",
              "norm.key_norm.scale": "attn.norm_k.weight"}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if head in renames:
            out[f"{renames[head]}.{leaf}"] = value
        elif key.startswith("final_layer.adaLN_modulation.1."):
            shift, scale = value.chunk(2, dim=0)
            out[f"norm_out.linear.{leaf}"] = torch.cat([scale, shift], dim=0)
        elif key.startswith(("double_blocks.", "single_blocks.")):
            kind, index, rest = key.split(".", 2)
            prefix = f"{'transformer_blocks' if kind == 'double_blocks' else 'single_transformer_blocks'}.{index}."
            names = double if kind == "double_blocks" else single
            rest_head, _, rest_leaf = rest.rpartition(".")
            if rest in names:
                out[prefix + names[rest]] = value
            elif rest_head in names:
                out[f"{prefix}{names[rest_head]}.{rest_leaf}"] = value
            elif rest_head in ("img_attn.qkv", "txt_attn.qkv"):
                parts = ("to_q", "to_k", "to_v") if rest_head == "img_attn.qkv" else ("add_q_proj", "add_k_proj", "add_v_proj")
                for part, chunk in zip(parts, value.chunk(3, dim=0)):
                    out[f"{prefix}attn.{part}.{rest_leaf}"] = chunk
            elif rest_head == "linear1":
                pieces = value.split([hidden, hidden, hidden, value.shape[0] - 3 * hidden], dim=0)
                for part, chunk in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), pieces):
                    out[f"{prefix}{part}.{rest_leaf}"] = chunk
            else:
                raise KeyError(key)
        else:
            raise KeyError(key)
    return out


@pytest.fixture(scope="module")
def golden():
    from diffusers import FluxTransformer2DModel

    meta = json.loads((GOLDEN / "meta.json").read_text())
    f = meta["flux"]
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=f["in_channels"], num_layers=f["depth"],
                                         num_single_layers=f["depth_single_blocks"],
                                         attention_head_dim=f["hidden_size"] // f["num_heads"],
                                         num_attention_heads=f["num_heads"], joint_attention_dim=f["context_in_dim"],
                                         pooled_projection_dim=f["vec_in_dim"], guidance_embeds=f["guidance_embed"],
                                         axes_dims_rope=tuple(f["axes_dim"])).eval()
    transformer.load_state_dict(bfl_to_diffusers(load_file(str(GOLDEN / "flux_bfl.safetensors")), f["hidden_size"]),
                                strict=True)
    # The published file, through the method's own loading path and checks.
    encoder, id_width, ca = load_pulid_flux(GOLDEN / "pulid_flux_v0.9.1.safetensors", dict(transformer.config), "v0.9.1")
    state = IDInsertion(meta["id_weight"], 0)
    install(transformer, ca, id_width, state)
    cases = load_file(str(GOLDEN / "cases.safetensors"))
    assert id_width == encoder.output_width == cases["id_tokens"].shape[-1]
    return meta, cases, encoder, transformer, state


def _close(ours: torch.Tensor, theirs: torch.Tensor, relative: float = 1e-5) -> None:
    """fp32 against fp32 through other kernels (diffusers' split q/k/v vs BFL's fused qkv, rotary in float32 vs
    float64 tables): at most ``relative`` of the reference's largest magnitude. Measured on an x86 CPU: ID tokens
    2.0e-7, the ID cross-attention, both transformer calls and the 3-step loop identical (0)."""
    torch.testing.assert_close(ours, theirs, rtol=0, atol=relative * theirs.abs().max().item())


def test_id_tokens_and_id_cross_attention_match_the_reference(golden):
    meta, cases, encoder, transformer, _ = golden
    hidden = [cases[f"hidden_{i}"] for i in range(5)]
    with torch.no_grad():
        _close(encoder(cases["id_cond"], hidden), cases["id_tokens"])
        _close(encoder(torch.zeros_like(cases["id_cond"]), [torch.zeros_like(h) for h in hidden]), cases["uncond_id_tokens"])
        _close(transformer.pulid_ca[0](cases["id_tokens"], cases["image_tokens"]), cases["ca_out"])
    assert len(transformer.pulid_ca) == meta["num_ca"] == len(ca_positions(3, 5)) == 4


def _step(transformer, cases, timestep):
    return transformer(hidden_states=cases["img"] if timestep is None else timestep[1], encoder_hidden_states=cases["txt"],
                       pooled_projections=cases["vec"], timestep=cases["timestep"] if timestep is None else timestep[0],
                       img_ids=cases["img_ids"], txt_ids=cases["txt_ids"], guidance=cases["guidance"], return_dict=False)[0]


def test_one_denoising_step_and_the_start_step_match_the_reference(golden):
    """diffusers' FluxTransformer2DModel with the BFL weights mapped, the pulid_ca hooks installed: one transformer
    call without and with the ID (id_weight 0.8), and the reference's Euler loop over its 3-step schedule with the ID
    from step 1 on (``denoise(start_step=1)``)."""
    meta, cases, _, transformer, state = golden
    with torch.no_grad():
        state.tokens, state.calls, state.start_step = None, 0, 0
        plain = _step(transformer, cases, None)
        _close(plain, cases["step_plain"])
        state.tokens, state.calls = cases["id_tokens"], 0
        with_id = _step(transformer, cases, None)
        _close(with_id, cases["step_id"])
        assert (with_id - plain).abs().max() > 100 * 1e-5 * cases["step_id"].abs().max()  # the ID is far above the bound
        state.calls, state.start_step = 0, meta["start_step"]
        img, times = cases["img"], meta["timesteps"]
        for t_curr, t_prev in zip(times[:-1], times[1:]):
            img = img + (t_prev - t_curr) * _step(transformer, cases, (torch.tensor([t_curr]), img))
        _close(img, cases["denoised"])
    state.tokens, state.start_step = None, 0


# -- the method on tiny FLUX ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory, arcface_dir, face_photos):
    options = write_published_files(tmp_path_factory.mktemp("pulid-flux") / "weights", FLUX)
    return {"photos": face_photos, "options": {**options, "face_model_dir": str(arcface_dir)}}


def test_identity_changes_the_image_and_reproduces(tiny_models, setup, tmp_path):
    photos = setup["photos"]
    art = personalize("pulid-flux", {"ann": [photos["ann"]], "bob": [photos["bob"]]}, tmp_path / "a", FLUX,
                      **setup["options"])
    manifest = json.loads((art / "likeness.json").read_text())
    assert {r["role"] for r in manifest["config"]["weights"]} == {"pulid-flux weights", "EVA02-CLIP checkpoint"}
    assert manifest["config"]["options"]["id_weight"] == 1.0 and manifest["config"]["options"]["version"] == "v0.9.1"
    assert load_file(str(art / "embeddings.safetensors"))["ann.id_embedding"].shape == (1, 8, 32)

    ours = load_artifact(art)
    assert len(ours.pipe.transformer.pulid_ca) == 2  # tiny FLUX: 1 double + 1 single block

    def image(who, **call):
        return _pixels(ours.generate([PROMPT], [3], identity=who, num_inference_steps=STEPS, **call)[0])

    ann, bob = image("ann"), image("bob")
    assert np.abs(ann - bob).max() > 0  # the person's ID tokens drive the image
    np.testing.assert_array_equal(ann, _pixels(load_artifact(art).generate([PROMPT], [3], identity="ann",
                                                                            num_inference_steps=STEPS)[0]))
    plain = DiffusionPipeline.from_pretrained(tiny_models[FLUX])
    plain.set_progress_bar_config(disable=True)
    without = _pixels(plain("a photo of a person", num_inference_steps=STEPS, guidance_scale=4.0,
                            generator=torch.Generator("cpu").manual_seed(3)).images[0])
    assert np.abs(ann - without).max() > 10
    options = ours.manifest.config["options"]
    options["start_step"] = STEPS  # the ID would start after the last step: plain FLUX, exactly
    np.testing.assert_array_equal(image("ann"), without)
    options["start_step"], options["id_weight"] = 0, 0.0  # id_weight 0: plain FLUX, exactly
    np.testing.assert_array_equal(image("ann"), without)
    options["id_weight"], options["start_step"] = 1.0, 1  # from step 1 on: between the two
    late = image("ann")
    assert np.abs(late - without).max() > 0 and np.abs(late - ann).max() > 0


def _refused(tmp_path, setup, match, error=CheckpointError, base=FLUX, photo="ann", **changes):
    with pytest.raises(error, match=match):
        personalize("pulid-flux", {"ann": [setup["photos"][photo]]}, tmp_path / "x", base, **{**setup["options"], **changes})
    assert not (tmp_path / "x" / "likeness.json").exists()


def test_bad_bases_files_and_photos_are_named(tiny_models, setup, tmp_path):
    weights = setup["options"]["weights"]
    for base, family in (("likeness/tiny-flux2-klein", "FLUX.2"), ("likeness/tiny-sdxl", "SDXL")):
        _refused(tmp_path, setup, rf"pulid_flux_v0\.9\.1\.safetensors: PuLID-FLUX weights are made for FLUX\.1 \[dev\]; "
                 rf"'{base}' is {re.escape(family)}\. Use a FLUX\.1 base .*or method pulid", error=ValueError, base=base)
    _refused(tmp_path, setup, r"is the PuLID-FLUX v0\.9\.1 file, but version 'v0\.9\.0' was asked; pass version=v0\.9\.1",
             version="v0.9.0")
    _refused(tmp_path, setup, r"folder has no PuLID-FLUX weights file \(looked for pulid_flux_v0\.9\.0\.safetensors\)",
             error=FileNotFoundError, version="v0.9.0", weights=str(Path(weights).parent))
    _refused(tmp_path, setup, "EVA02-CLIP checkpoint .*nope.pt.*no such file", error=FileNotFoundError,
             eva_clip=str(tmp_path / "nope.pt"))
    _refused(tmp_path, setup, r"wall\.png: no face found", error=NoFaceError, photo="wall")
    _refused(tmp_path, setup, "needs an ArcFace model folder.*face_model_dir", error=MissingFaceModelError, face_model_dir=None)
    _refused(tmp_path, setup, "missing.*ArcFace model folder does not exist", error=MissingFaceModelError,
             face_model_dir=str(tmp_path / "missing"))
    # A PuLID SDXL file, a file for another FLUX transformer, a file missing a key: each named.
    from likeness.methods.peers.common import empty_unet
    from likeness.testing.peer_layouts import pulid_state, save_flat
    from likeness.testing.pulid_flux_layout import pulid_flux_state

    sdxl = save_flat(pulid_state(empty_unet("likeness/tiny-sdxl"), version="v1.1"), tmp_path / "sdxl.safetensors")
    _refused(tmp_path, setup, r"sdxl\.safetensors: is a PuLID file for SDXL \(id_adapter\.\* keys\), not PuLID-FLUX",
             weights=str(sdxl))
    other = {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 2, "attention_head_dim": 16}
    deeper = save_flat(pulid_flux_state(other), tmp_path / "deeper.safetensors")
    _refused(tmp_path, setup, r"deeper\.safetensors: made for another FLUX transformer \(20 ID blocks, width 32\); this "
             r"base's \(1 double \+ 1 single blocks, width 32\) takes 2", weights=str(deeper))
    state = load_file(weights)
    encoderless = save_flat({k: v for k, v in state.items() if k != "pulid_encoder.mapping_2.3.weight"},
                            tmp_path / "encoderless.safetensors")
    _refused(tmp_path, setup, r"encoderless\.safetensors: not a valid PuLID v1\.1 pulid_encoder checkpoint.*missing "
             r"keys: pulid_encoder\.mapping_2\.3\.weight", weights=str(encoderless))
    del state["pulid_ca.1.to_kv.weight"]
    broken = save_flat(state, tmp_path / "broken.safetensors")
    _refused(tmp_path, setup, r"broken\.safetensors: not a valid PuLID-FLUX pulid_ca checkpoint.*missing keys: "
             r"pulid_ca\.1\.to_kv\.weight", weights=str(broken))


def test_artifact_needs_the_pulid_file_but_not_eva(tiny_models, setup, tmp_path):
    from likeness.methods import ArtifactError

    folder = tmp_path / "w"
    shutil.copytree(Path(setup["options"]["weights"]).parent, folder)
    options = {**setup["options"], "weights": str(folder), "eva_clip": str(folder)}  # found by their published names
    art = personalize("pulid-flux", {"ann": [setup["photos"]["ann"]]}, tmp_path / "a", FLUX, **options)
    before = _pixels(load_artifact(art).generate([PROMPT], [1], num_inference_steps=1)[0])
    (folder / "EVA02_CLIP_L_336_psz14_s6B.pt").unlink()  # only made the stored embeddings
    np.testing.assert_array_equal(before, _pixels(load_artifact(art).generate([PROMPT], [1], num_inference_steps=1)[0]))
    (folder / "pulid_flux_v0.9.1.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"pulid_flux_v0\.9\.1\.safetensors, which no longer exists"):
        load_artifact(art)


def test_published_insertion_rule():
    """FLUX.1 [dev] (19 double, 38 single blocks): after double 0, 2, ..., 18 and single 0, 4, ..., 36: 20 blocks, as
    the reference's count ``19 // 2 + 38 // 4`` plus one per remainder."""
    positions = ca_positions(19, 38)
    assert len(positions) == 20 == 19 // 2 + 38 // 4 + 1 + 1
    assert positions[:2] == [("double", 0), ("double", 2)] and positions[9] == ("double", 18)
    assert positions[10] == ("single", 0) and positions[-1] == ("single", 36)
