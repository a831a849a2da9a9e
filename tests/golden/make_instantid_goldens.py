"""Goldens for InstantID (SDXL) from the official code, instantX-research/InstantID at commit 2145b67
(``REFERENCE_COMMIT``), on seeded random weights in the published layout at reduced size.

Run in a side environment, never in likeness's (the exact command, from the repository root):

    git --git-dir=<mirror of instantX-research/InstantID> archive 2145b67 ip_adapter \
        pipeline_stable_diffusion_xl_instantid.py | tar -x -C /tmp/instantid-ref
    PYTHONPATH=/work/refenv-goldens/diffusers-0.25.1 /work/refenv-goldens/bin/python \
        tests/golden/make_instantid_goldens.py --ref /tmp/instantid-ref

Side environment: as for make_pulid_goldens.py, with diffusers 0.25.1 first on the path (InstantID's pin in
gradio_demo/requirements.txt and cog.yaml), and opencv-python-headless 4.10.0.84 (the published ``draw_kps``);
insightface is a name only (:mod:`ref_shims`): the face embedding is a fixed input (``image_embeds``). The
pipeline gets a fixed keypoint picture (``image``), so IdentityNet is compared apart from the drawing;
``draw_kps`` itself is run on three fixed faces and its pictures kept (likeness draws with PIL and numpy).

What runs of the reference, unchanged unless said here:
- ``StableDiffusionXLInstantIDPipeline`` built from reduced SDXL parts (as make_photomaker_goldens.py: two CLIP
  text encoders 64 and 192 wide, likeness's tiny tokenizer, a UNet with cross-attention 256) and an
  IdentityNet: a diffusers ``ControlNetModel`` of the same UNet config with a 1-step keypoint encoder
  (``conditioning_embedding_out_channels`` (16, 32): the reduced VAE halves, SDXL's divides by 8),
  saved with ``save_pretrained`` (the published ``ControlNetModel/`` folder).
- ``load_ip_adapter_instantid`` on the published container (``ip-adapter.bin``: ``{"image_proj": ...,
  "ip_adapter": ...}``) with ``image_emb_dim`` 32 (ArcFace 512 published); its Resampler's hard-coded width and
  heads (``dim=1280``, ``heads=20``) are replaced in the source text by 128 and 2 (64-wide heads as published);
  16 queries, depth 4 as published. ``set_ip_adapter_scale(0.8)`` and ``controlnet_conditioning_scale=0.8``
  (the published demo's values).
- ``__call__``: 2 Euler steps, guidance 5, fixed latents, ``output_type="latent"``.

Outputs (tests/golden/instantid/): ``goldens.safetensors``: the face tokens of the image projection (the
CFG pair), IdentityNet's residuals of step 0, one cross-attention layer's output (text + IP attention) of
step 0, the UNet's inputs and outputs of both steps, the final latents and ``draw_kps``'s pictures (uint8);
``goldens.json``: specs, digests,
configs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import golden_weights as gw  # noqa: E402
import ref_shims  # noqa: E402
from make_photomaker_goldens import (  # noqa: E402  (the same reduced SDXL)
    SCHEDULER,
    TEXT,
    UNET_CONFIG,
    VAE_CONFIG,
    text_config,
    tiny_tokenizer,
)

REFERENCE = "instantX-research/InstantID"
COMMAND = ("PYTHONPATH=/work/refenv-goldens/diffusers-0.25.1 /work/refenv-goldens/bin/python "
           "tests/golden/make_instantid_goldens.py --ref /tmp/instantid-ref")
REFERENCE_COMMIT = "2145b67"
OUT = HERE / "instantid"
SEED = 24
FACE_DIM = 32
SOURCE = [("dim=1280", "dim=128"), ("heads=20", "heads=2")]
CONDITIONING = [16, 32]
PROMPT = "a photo of a man in the park"
SIZE = 16
STEPS, GUIDANCE, IP_SCALE, CONTROL_SCALE = 2, 5.0, 0.8, 0.8
ATTN_LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


def control_image() -> np.ndarray:
    """The keypoint picture both pipelines get (16 px RGB; coloured blocks on black)."""
    blocks = gw.integers(SEED, "keypoints", (4, 4, 3), 0, 256).to(torch.uint8)
    keep = gw.integers(SEED, "keypoints-mask", (4, 4, 1), 0, 2).to(torch.uint8)
    return (blocks * keep).repeat_interleave(4, 0).repeat_interleave(4, 1).numpy()


# Faces for the drawing golden: (canvas width, height, 5 points), as likeness's call places them (head-and-shoulders
# square at the top, centred); a frontal face, a turned and tilted one, one near the border.
DRAWINGS = [(256, 256, [[98.3, 110.6], [157.9, 108.2], [128.4, 141.7], [104.2, 172.5], [151.6, 170.1]]),
            (320, 256, [[130.0, 90.5], [171.2, 101.9], [139.7, 118.3], [128.9, 151.4], [162.6, 160.8]]),
            (256, 256, [[5.5, 30.2], [44.1, 22.7], [30.6, 55.5], [12.0, 80.9], [47.3, 75.4]])]


def face_embedding() -> torch.Tensor:
    return gw.uniform(SEED, "arcface", (FACE_DIM,), 0.0, 3.0)


def import_reference(ref: Path) -> dict:
    ref_shims.install(real=("cv2",))
    sys.path.insert(0, str(ref))
    import ip_adapter.resampler as resampler  # noqa: F401
    import pipeline_stable_diffusion_xl_instantid as pipeline

    path = Path(pipeline.__file__)
    source = path.read_text()
    counts = {}
    for old, new in SOURCE:
        counts[old] = source.count(old)
        source = source.replace(old, new)
    exec(compile(source, str(path), "exec"), pipeline.__dict__)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True,
                        help="a checkout of instantX-research/InstantID at " + REFERENCE_COMMIT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts = import_reference(args.ref.resolve())
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from pipeline_stable_diffusion_xl_instantid import StableDiffusionXLInstantIDPipeline

    out: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizers = [tiny_tokenizer(tmp / f"tokenizer{i}") for i in range(2)]
        encoders = [CLIPTextModel(text_config(tokenizers[0], 0)), CLIPTextModelWithProjection(text_config(tokenizers[1], 1))]
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING)
        vae = AutoencoderKL(**VAE_CONFIG)  # unused (latent output)
        parts = {"unet": unet, "text_encoder": encoders[0], "text_encoder_2": encoders[1], "identitynet": controlnet}
        specs, digests = {}, {}
        for part, module in parts.items():
            specs[part] = gw.make_spec({k: tuple(v.shape) for k, v in module.state_dict().items()})
            state = gw.state_from_spec(specs[part], SEED)
            module.load_state_dict(state, strict=True)
            digests[part] = gw.digest(state)
        controlnet.save_pretrained(tmp / "ControlNetModel")
        identitynet = ControlNetModel.from_pretrained(tmp / "ControlNetModel")
        pipe = StableDiffusionXLInstantIDPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                                  tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                                                  controlnet=identitynet, scheduler=EulerDiscreteScheduler(**SCHEDULER))
        pipe.set_progress_bar_config(disable=True)

        # ip-adapter.bin: the keys the reference's own modules hold, in the published nesting.
        from ip_adapter.resampler import Resampler

        probe = Resampler(dim=128, depth=4, dim_head=64, heads=2, num_queries=16, embedding_dim=FACE_DIM,
                          output_dim=UNET_CONFIG["cross_attention_dim"], ff_mult=4)
        shapes = {f"image_proj.{k}": tuple(v.shape) for k, v in probe.state_dict().items()}
        index = 0
        for name in unet.attn_processors:  # IPAttnProcessor on every cross-attention layer, numbered over all of them
            if not name.endswith("attn1.processor"):
                hidden = unet.get_submodule(name.rsplit(".", 1)[0]).to_q.out_features
                for which in ("to_k_ip", "to_v_ip"):
                    shapes[f"ip_adapter.{index}.{which}.weight"] = (hidden, UNET_CONFIG["cross_attention_dim"])
            index += 1
        spec = gw.make_spec(shapes, **{"image_proj.latents": (0.0, 3 ** 0.5 * 128 ** -0.5)})
        state = gw.state_from_spec(spec, SEED)
        nested: dict = {"image_proj": {}, "ip_adapter": {}}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            nested[head][rest] = value
        torch.save(nested, tmp / "ip-adapter.bin")
        pipe.load_ip_adapter_instantid(str(tmp / "ip-adapter.bin"), image_emb_dim=FACE_DIM)
        pipe.set_ip_adapter_scale(IP_SCALE)
        loaded = {f"image_proj.{k}": v for k, v in pipe.image_proj_model.state_dict().items()}
        processors = torch.nn.ModuleList(pipe.unet.attn_processors.values())
        loaded.update({f"ip_adapter.{k}": v for k, v in processors.state_dict().items()})
        assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())

        captured = {"unet": [], "control": [], "attn": []}
        pipe.image_proj_model.register_forward_hook(lambda m, args, output: captured.update(tokens=output.clone()) and None)

        def unet_hook(module, args, kwargs, output):
            captured["unet"].append((args[0].clone(), output[0].clone()))

        def control_hook(module, args, kwargs, output):
            captured["control"].append(([d.clone() for d in output[0]], output[1].clone()))

        def attn_hook(module, args, output):
            captured["attn"].append(output.clone())

        pipe.unet.register_forward_hook(unet_hook, with_kwargs=True)
        pipe.controlnet.register_forward_hook(control_hook, with_kwargs=True)
        pipe.unet.get_submodule(ATTN_LAYER).register_forward_hook(attn_hook)
        latents = gw.uniform(SEED, "latents", (1, 4, SIZE // 2, SIZE // 2))
        with torch.no_grad():
            result = pipe(PROMPT, image_embeds=face_embedding(), image=Image.fromarray(control_image()),
                          controlnet_conditioning_scale=CONTROL_SCALE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                          latents=latents, height=SIZE, width=SIZE, output_type="latent").images
    out["face_tokens"] = captured["tokens"]
    down, mid = captured["control"][0]
    for i, d in enumerate(down):
        out[f"identitynet/step0/down{i}"] = d
    out["identitynet/step0/mid"] = mid
    out["attn/step0"] = captured["attn"][0]
    for step, (unet_in, unet_out) in enumerate(captured["unet"]):
        out[f"step{step}/unet_in"], out[f"step{step}/unet_out"] = unet_in, unet_out
    out["latents"] = result
    import pipeline_stable_diffusion_xl_instantid as reference

    for i, (width, height, points) in enumerate(DRAWINGS):  # the published keypoint picture (OpenCV rasteriser)
        drawing = reference.draw_kps(Image.new("RGB", (width, height)), points)
        out[f"draw_kps/{i}"] = torch.from_numpy(np.asarray(drawing).copy())
    record = {"reference": REFERENCE, "commit": REFERENCE_COMMIT, "command": COMMAND, "seed": SEED,
              "source_replacements": counts,
              "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                           "transformers": transformers.__version__, "numpy": np.__version__},
              "text": TEXT, "unet_config": UNET_CONFIG, "vae_config": VAE_CONFIG, "scheduler": SCHEDULER,
              "identitynet_conditioning": CONDITIONING, "face_dim": FACE_DIM, "prompt": PROMPT, "size": SIZE,
              "steps": STEPS, "guidance": GUIDANCE, "ip_scale": IP_SCALE, "controlnet_scale": CONTROL_SCALE,
              "attn_layer": ATTN_LAYER, "drawings": DRAWINGS, "file": "ip-adapter.bin", "spec": spec, "digest": gw.digest(state),
              "parts": specs, "part_digests": digests, "down_residuals": len(down)}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() if v.dtype == torch.uint8 else v.contiguous().float() for k, v in out.items()},
              str(OUT / "goldens.safetensors"))
    gw.save_json(OUT / "goldens.json", record)
    print(f"wrote {len(out)} tensors to {OUT}")


if __name__ == "__main__":
    main()
