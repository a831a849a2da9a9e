"""Golden outputs of InfiniteYou's own code (github.com/bytedance/InfiniteYou), for ``tests/test_infiniteyou.py``.
Run by hand, never by CI, in a side environment with the diffusers the reference pins:

    # the reference code at the recorded commit (only its pipelines/ folder is used):
    git clone https://github.com/bytedance/InfiniteYou /tmp/infiniteyou-src
    git -C /tmp/infiniteyou-src checkout aaa6ea5f75ba2ff58b9025fa7df45e4a139ed717
    # a side environment (requirements.txt pins diffusers 0.31.0, transformers 4.48.0; torch 2.6.0 there, the local
    # CPU wheel 2.13.0 here; no torchvision, insightface, facexlib, opencv or optimum: not on this path):
    python3.11 -m venv /work/refenv-infu
    /work/refenv-infu/bin/pip install torch==2.13.0 diffusers==0.31.0 transformers==4.48.0 safetensors numpy==1.26.4 \\
        pillow huggingface-hub==0.28.1
    # then, from the repository root:
    /work/refenv-infu/bin/python tests/golden/make_infiniteyou_goldens.py --reference /tmp/infiniteyou-src

What it runs (the reference modules are imported from their files: ``pipelines/resampler.py`` and
``pipelines/pipeline_flux_infusenet.py``; ``pipelines/pipeline_infu_flux.py`` is not imported, so its imports,
insightface, facexlib, cv2, optimum.quanto, need no stubs: it loads models, detects and embeds the face (CUDA
only) and then calls the two pieces below exactly as this script does):

1. seeded random weights at reduced size, written where likeness loads them, in the published layout:
   ``infu_flux_v1.0/sim_stage1/image_proj_model.bin`` (the reference ``Resampler``: width 64, one 64-wide head,
   depth 4, 8 queries, 16-d embedding, 32-wide tokens; saved as ``{"image_proj": state_dict}`` as published),
   ``infu_flux_v1.0/sim_stage1/InfuseNetModel/`` (diffusers 0.31 ``FluxControlNetModel``, 2 double- and 2
   single-stream blocks, two shards + index as published; its zero-initialised projections drawn at random),
   and a small FLUX.1-shaped base: ``transformer/`` (3 double-, 4 single-stream blocks, so InfuseNet's residuals
   are spread over the blocks as on FLUX.1 [dev]), ``vae/`` (one block, 1 latent channel), ``scheduler/``
   (FLUX.1 [dev]'s dynamic shifting);
2. the ID tokens: ``Resampler(embedding.reshape(1, -1, 16))`` for a fixed unit embedding;
3. InfuseNet's residuals for fixed latents, control latents, timestep and pooled embedding, called as the
   reference pipeline calls it (ID tokens as ``encoder_hidden_states``, ``txt_ids`` zeros, guidance 1.0,
   conditioning scale 0.7);
4. one FLUX transformer call with those residuals (guidance 3.5, the prompt embeddings);
5. the reference ``FluxInfuseNetPipeline.__call__``: 2 steps on a black 16x16 control image, InfuseNet from
   step 0 to half-way (``control_guidance_end=0.5``), scale 0.8, fixed latents, the global RNG seeded before
   the call (it samples the control image's VAE latents), ``output_type="latent"``.

Everything is fp32 on the CPU. Outputs: ``tests/golden/infiniteyou/goldens.safetensors`` (inputs and outputs)
and ``goldens.json`` (commit, versions, settings).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COMMIT = "aaa6ea5f75ba2ff58b9025fa7df45e4a139ed717"
HERE = Path(__file__).resolve().parent / "infiniteyou"
VARIANT_DIR = HERE / "infu_flux_v1.0" / "sim_stage1"
FACE_DIM, WIDTH, QUERIES = 16, 64, 8
TRANSFORMER = dict(patch_size=1, in_channels=4, num_layers=3, num_single_layers=4, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                   guidance_embeds=True)
INFUSENET = {**TRANSFORMER, "num_layers": 2, "num_single_layers": 2}
SIDE = 16  # image side in pixels: 8x8 packed latent tokens
TIMESTEP = 750.0
RESIDUAL_SCALE, PIPELINE_SCALE, PIPELINE_END, SEED = 0.7, 0.8, 0.5, 7


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_weights(resampler_module):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxControlNetModel, FluxTransformer2DModel

    torch.manual_seed(0)
    resampler = resampler_module.Resampler(dim=WIDTH, depth=4, dim_head=64, heads=WIDTH // 64, num_queries=QUERIES,
                                           embedding_dim=FACE_DIM, output_dim=TRANSFORMER["joint_attention_dim"], ff_mult=4)
    with torch.no_grad():
        for module in resampler.modules():
            if isinstance(module, torch.nn.LayerNorm):  # not the trivial 1 / 0 of a fresh LayerNorm
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    resampler.eval()
    torch.manual_seed(1)
    infusenet = FluxControlNetModel(**INFUSENET)
    with torch.no_grad():
        for name, param in infusenet.named_parameters():
            if name.startswith(("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder")):
                param.normal_(0.0, 0.2)  # zero-initialised for training
    torch.manual_seed(2)
    transformer = FluxTransformer2DModel(**TRANSFORMER)
    torch.manual_seed(3)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    for sub in ("infu_flux_v1.0", "transformer", "vae", "scheduler"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
    VARIANT_DIR.mkdir(parents=True)
    torch.save({"image_proj": resampler.state_dict()}, str(VARIANT_DIR / "image_proj_model.bin"))
    total = sum(p.numel() * p.element_size() for p in infusenet.parameters())
    infusenet.save_pretrained(str(VARIANT_DIR / "InfuseNetModel"), max_shard_size=total // 2 + total // 8)
    transformer.save_pretrained(str(HERE / "transformer"))
    vae.save_pretrained(str(HERE / "vae"))
    scheduler.save_pretrained(str(HERE / "scheduler"))
    return resampler, infusenet.eval(), transformer.eval(), vae.eval(), scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of bytedance/InfiniteYou at COMMIT")
    args = parser.parse_args()
    import diffusers
    import transformers
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    resampler_module = load_module(args.reference / "pipelines" / "resampler.py", "infu_resampler")
    infuse_module = load_module(args.reference / "pipelines" / "pipeline_flux_infusenet.py", "infu_pipeline")
    resampler, infusenet, transformer, vae, scheduler = build_weights(resampler_module)

    generator = torch.Generator().manual_seed(100)
    embedding = torch.randn(FACE_DIM, generator=generator)
    embedding = embedding / embedding.norm()  # facexlib's ArcFace output is unit-norm
    tokens_len = (SIDE // 2) ** 2
    latents = torch.randn(1, tokens_len, 4, generator=generator)
    control_latents = torch.randn(1, tokens_len, 4, generator=generator)
    prompt_embeds = torch.randn(1, 6, TRANSFORMER["joint_attention_dim"], generator=generator)
    pooled = torch.randn(1, TRANSFORMER["pooled_projection_dim"], generator=generator)
    # diffusers 0.31 takes the unpacked latent size (SIDE: the one-block VAE does not downsample) and halves it
    img_ids = infuse_module.FluxInfuseNetPipeline._prepare_latent_image_ids(1, SIDE, SIDE, "cpu", torch.float32)

    with torch.no_grad():
        # pipeline_infu_flux.py: id_embed.reshape([1, -1, 512]) -> image_proj_model -> controlnet_prompt_embeds
        id_tokens = resampler(embedding.reshape([1, -1, FACE_DIM]))
        timestep = torch.tensor([TIMESTEP / 1000])
        # pipeline_flux_infusenet.py, one step of its loop
        blocks, singles = infusenet(hidden_states=latents, controlnet_cond=control_latents, controlnet_mode=None,
                                    conditioning_scale=RESIDUAL_SCALE, timestep=timestep, guidance=torch.tensor([1.0]),
                                    pooled_projections=pooled, encoder_hidden_states=id_tokens,
                                    txt_ids=torch.zeros(id_tokens.shape[1], 3), img_ids=img_ids,
                                    joint_attention_kwargs=None, return_dict=False)
        noise_pred = transformer(hidden_states=latents, timestep=timestep, guidance=torch.tensor([3.5]),
                                 pooled_projections=pooled, encoder_hidden_states=prompt_embeds,
                                 controlnet_block_samples=blocks, controlnet_single_block_samples=singles,
                                 txt_ids=torch.zeros(prompt_embeds.shape[1], 3), img_ids=img_ids,
                                 joint_attention_kwargs=None, return_dict=False, controlnet_blocks_repeat=False)[0]

    pipe = infuse_module.FluxInfuseNetPipeline(scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None,
                                               text_encoder_2=None, tokenizer_2=None, transformer=transformer,
                                               controlnet=infusenet)
    pipe.set_progress_bar_config(disable=True)
    black = Image.fromarray(np.zeros([SIDE, SIDE, 3]).astype(np.uint8))  # pipeline_infu_flux.py without a control image
    torch.manual_seed(SEED)  # seed_everything: the control image's VAE latents come from the global RNG
    final = pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, controlnet_prompt_embeds=id_tokens,
                 control_image=black, height=SIDE, width=SIDE, num_inference_steps=2, guidance_scale=3.5,
                 controlnet_guidance_scale=1.0, controlnet_conditioning_scale=PIPELINE_SCALE, control_guidance_start=0.0,
                 control_guidance_end=PIPELINE_END, latents=latents.clone(), output_type="latent").images

    tensors = {"embedding": embedding, "latents": latents, "control_latents": control_latents,
               "prompt_embeds": prompt_embeds, "pooled": pooled, "img_ids": img_ids, "id_tokens": id_tokens,
               "noise_pred": noise_pred, "pipeline_latents": final}
    tensors.update({f"block_sample.{i}": t for i, t in enumerate(blocks)})
    tensors.update({f"single_block_sample.{i}": t for i, t in enumerate(singles)})
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, str(HERE / "goldens.safetensors"))
    (HERE / "goldens.json").write_text(json.dumps({
        "reference": "https://github.com/bytedance/InfiniteYou", "commit": COMMIT,
        "files_run": ["pipelines/resampler.py", "pipelines/pipeline_flux_infusenet.py"],
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},
        "settings": {"face_dim": FACE_DIM, "resampler_width": WIDTH, "queries": QUERIES, "transformer": TRANSFORMER,
                     "infusenet": INFUSENET, "side": SIDE, "timestep": TIMESTEP, "residual_scale": RESIDUAL_SCALE,
                     "pipeline_scale": PIPELINE_SCALE, "pipeline_guidance_end": PIPELINE_END, "pipeline_steps": 2,
                     "seed": SEED},
    }, indent=1) + "\n")
    print("wrote", HERE)


if __name__ == "__main__":
    main()
