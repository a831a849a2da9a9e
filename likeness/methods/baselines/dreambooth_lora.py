"""DreamBooth (Ruiz et al., 2023) with LoRA (Hu et al., 2021): fine-tune low-rank adapters so that a
rare token followed by the class noun ("sks person") means this person.

- peft LoRA on the denoiser's attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``): the UNet of
  SD 1.x/2.x/XL, the transformer of FLUX.1, FLUX.2 [klein], SD3.5 and Qwen-Image; optionally on the CLIP text
  encoder(s) too (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``): SD's, SDXL's two, FLUX.1's CLIP-L and SD3.5's
  two CLIPs. The large T5 / Qwen encoders stay frozen (as in diffusers' FLUX/SD3 scripts); FLUX.2 and Qwen-Image
  have no CLIP encoder, so text-encoder LoRA is refused there.
- On the flow-matching bases the objective is rectified flow (:mod:`likeness.methods.baselines.flow_matching`) with the
  sigma sampling / loss weighting schemes of diffusers' FLUX/SD3 scripts (``weighting_scheme``: none, sigma_sqrt,
  logit_normal, mode, cosmap); the loop, checkpoints and resume are the shared ones.
- Optional prior preservation: images of the class prompt ("a photo of a person") are generated
  once with the base model (kept in ``class_images/`` and reused), and their denoising loss is added
  with weight ``prior_loss_weight``, so the class does not collapse onto the person.
- Saved with the pipeline's ``save_lora_weights`` as ``pytorch_lora_weights.safetensors``, i.e.
  exactly what ``pipe.load_lora_weights(folder)`` reads (``unet.*`` / ``transformer.*`` / ``text_encoder*.*`` keys). At generation the LoRA is fused into the
  base weights, so a personalized image costs the same as a plain one.

Defaults follow the diffusers DreamBooth-LoRA example: rank 4, lr 1e-4, constant schedule,
500 steps, batch 1; people are framed head-and-shoulders.

Textual inversion / pivotal tuning on the flow-matching bases is not offered: only FLUX.1 and SD3.5 have a CLIP
encoder, and there the T5 encoder carries most of the prompt, so a CLIP-only token learns little (diffusers' FLUX
"advanced" script needs T5 embeddings too). The rare-token DreamBooth subject ("sks person") works on every family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from likeness.data.images import load_image
from likeness.methods.base import METHODS, IdentityEntry, Manifest, Method, TrainingSetup
from likeness.models.families import FAMILY_NAMES, denoiser, denoiser_name, is_flow

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Rare single tokens of the CLIP vocabulary; person i gets RARE_TOKENS[i].
RARE_TOKENS = ("sks", "zwx", "ohwx", "phol")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def _clip_encoders(pipe) -> list[tuple[str, torch.nn.Module]]:
    """``(component name, CLIP text encoder)`` pairs that may take a LoRA: every SD / SDXL encoder, FLUX.1's first
    and SD3.5's first two (their T5 / Qwen encoders are never trained)."""
    family = pipe.likeness_info.family
    names = {"flux1": ("text_encoder",), "sd3": ("text_encoder", "text_encoder_2"), "flux2": (), "qwen-image": ()}
    wanted = names.get(family, ("text_encoder", "text_encoder_2"))
    return [(n, pipe.components[n]) for n in wanted if pipe.components.get(n) is not None]


def fusable_components(pipe) -> list[str]:
    """The pipeline's components a LoRA file may hold (``unet``/``transformer``, text encoders)."""
    return [name for name in type(pipe)._lora_loadable_modules if pipe.components.get(name) is not None]


def _text_encoders(pipe):
    from likeness.models.families import text_encoders

    return text_encoders(pipe)


def class_images(pipe, prompt: str, count: int, folder: Path, size: int, steps: int, seed: int = 0) -> list[Path]:
    """Prior-preservation images from the base model, generated once (missing ones only) with fixed seeds."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"class-{i:04d}.png" for i in range(count)]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    for i in todo:
        image = pipe(prompt, num_inference_steps=steps, height=size, width=size,
                     generator=torch.Generator("cpu").manual_seed(seed + i)).images[0]
        image.save(paths[i])
    return paths


@METHODS.register("dreambooth-lora")
class DreamBoothLoRA(Method):
    name = "dreambooth-lora"
    families = ("sd1", "sd2", "sdxl", "flux1", "flux2", "sd3", "qwen-image")
    defaults = {
        "rank": 4,
        "train_text_encoder": False,
        "class_noun": "person",
        "instance_tokens": None,  # default: RARE_TOKENS in order
        "with_prior_preservation": False,
        "class_prompt": "a photo of a person",
        "num_class_images": 100,
        "class_inference_steps": 25,
        "prior_loss_weight": 1.0,
        "framing": "upper_body",
        "max_steps": 500,
        "learning_rate": 1e-4,
        # Flow-matching bases only (see likeness.methods.baselines.flow_matching).
        "weighting_scheme": "none",
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "mode_scale": 1.29,
        "train_guidance": 3.5,
    }

    def setup(self, pipe, names, options):
        from peft import LoraConfig

        tokens = list(options["instance_tokens"] or RARE_TOKENS)
        if len(tokens) < len(names):
            raise ValueError(f"{len(names)} identities but only {len(tokens)} instance tokens; pass instance_tokens")
        identities = {name: IdentityEntry(subject=f"{tok} {options['class_noun']}", tokens=[tok], photos=[])
                      for name, tok in zip(names, tokens)}
        rank = int(options["rank"])
        family = pipe.likeness_info.family
        flow = is_flow(family)
        loss_fn = None
        if flow:
            from functools import partial

            from likeness.methods.baselines.flow_matching import check_weighting, flow_matching_loss

            loss_fn = partial(flow_matching_loss, weighting_scheme=check_weighting(options["weighting_scheme"]),
                              logit_mean=float(options["logit_mean"]), logit_std=float(options["logit_std"]),
                              mode_scale=float(options["mode_scale"]), train_guidance=float(options["train_guidance"]))
        elif options["weighting_scheme"] != "none":
            raise ValueError(f"weighting_scheme applies to flow-matching bases (FLUX, SD3.5, Qwen-Image), not to "
                             f"{FAMILY_NAMES.get(family, family)}; leave it at none")
        if options["train_text_encoder"] and not _clip_encoders(pipe):
            raise ValueError(f"train_text_encoder: {FAMILY_NAMES.get(family, family)} has no CLIP text encoder to put a "
                             f"LoRA on (its language-model encoder stays frozen); use train_text_encoder=false")

        wrap = None
        if options["with_prior_preservation"]:
            # Generated before any adapter exists, so they show what the base model thinks the class is;
            # kept in the artifact folder so an interrupted run reuses them.
            from likeness.methods.training import native_resolution, with_prior

            size = native_resolution(pipe)
            paths = class_images(pipe, options["class_prompt"], options["num_class_images"],
                                 Path(options["out_dir"]) / "class_images", size, options["class_inference_steps"])

            def pixels(side: int) -> list[torch.Tensor]:  # at the training batch's size
                return [torch.from_numpy(np.asarray(load_image(p).resize((side, side)), dtype=np.float32) / 127.5 - 1.0)
                        .permute(2, 0, 1) for p in paths]

            captions = [options["class_prompt"]] * len(paths)
            wrap = lambda make_batch: with_prior(make_batch, pixels, captions)  # noqa: E731

        net = denoiser(pipe)
        net.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        for encoder in _text_encoders(pipe):
            encoder.requires_grad_(False)
        net.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
        modules = [net]
        if options["train_text_encoder"]:
            for _, encoder in _clip_encoders(pipe):
                encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TEXT_TARGETS))
                modules.append(encoder)
        trainable = {f"m{i}.{n}": p for i, m in enumerate(modules) for n, p in m.named_parameters() if p.requires_grad}
        return TrainingSetup(identities=identities, trainable=trainable, modules=modules, wrap_batches=wrap,
                             prior_loss_weight=float(options["prior_loss_weight"]), loss_fn=loss_fn)

    def save_weights(self, pipe, setup, out_dir, options):
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        def layers(module):
            return convert_state_dict_to_diffusers(get_peft_model_state_dict(module))

        kwargs = {f"{denoiser_name(pipe)}_lora_layers": layers(denoiser(pipe))}
        if options["train_text_encoder"]:
            for name, encoder in _clip_encoders(pipe):
                kwargs[f"{name}_lora_layers"] = layers(encoder)
        type(pipe).save_lora_weights(str(out_dir), weight_name=LORA_WEIGHTS, **kwargs)

    def apply(self, pipe, artifact, manifest: Manifest):
        path = Path(artifact) / LORA_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LoRA weights missing from the artifact")
        pipe.load_lora_weights(str(artifact), weight_name=LORA_WEIGHTS)
        if (getattr(pipe, "likeness_quantization", None) or {}).get("quantize", "none") != "none":
            return  # quantized weights cannot take the LoRA's product: the adapters stay beside them
        # Fused and unloaded: the adapters' arithmetic disappears from every denoising step. Every component the
        # file may hold: FLUX's fuse_lora() fuses only the transformer by default, and unloading would then drop a
        # text-encoder LoRA.
        pipe.fuse_lora(components=fusable_components(pipe))
        pipe.unload_lora_weights()
