"""DreamBooth (Ruiz et al., 2023) with LoRA (Hu et al., 2021): fine-tune low-rank adapters so that a
rare token followed by the class noun ("sks person") means this person.

- peft LoRA on the UNet attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``);
  optionally on the text encoder(s) too (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``).
- Optional prior preservation: images of the class prompt ("a photo of a person") are generated
  once with the base model (kept in ``class_images/`` and reused), and their denoising loss is added
  with weight ``prior_loss_weight``, so the class does not collapse onto the person.
- Saved with the pipeline's ``save_lora_weights`` as ``pytorch_lora_weights.safetensors``, i.e.
  exactly what ``pipe.load_lora_weights(folder)`` reads. At generation the LoRA is fused into the
  base weights, so a personalized image costs the same as a plain one.

Defaults follow the diffusers DreamBooth-LoRA example: rank 4, lr 1e-4, constant schedule,
500 steps, batch 1; people are framed head-and-shoulders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from likeness.data.images import load_image
from likeness.methods.base import METHODS, IdentityEntry, Manifest, Method, TrainingSetup

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Rare single tokens of the CLIP vocabulary; person i gets RARE_TOKENS[i].
RARE_TOKENS = ("sks", "zwx", "ohwx", "phol")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def _text_encoders(pipe):
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


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
    }

    def setup(self, pipe, names, options):
        from peft import LoraConfig

        tokens = list(options["instance_tokens"] or RARE_TOKENS)
        if len(tokens) < len(names):
            raise ValueError(f"{len(names)} identities but only {len(tokens)} instance tokens; pass instance_tokens")
        identities = {name: IdentityEntry(subject=f"{tok} {options['class_noun']}", tokens=[tok], photos=[])
                      for name, tok in zip(names, tokens)}
        rank = int(options["rank"])

        wrap = None
        if options["with_prior_preservation"]:
            # Generated before any adapter exists, so they show what the base model thinks the class is;
            # kept in the artifact folder so an interrupted run reuses them.
            size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
            paths = class_images(pipe, options["class_prompt"], options["num_class_images"],
                                 Path(options["out_dir"]) / "class_images", size, options["class_inference_steps"])
            pixels = [torch.from_numpy(np.asarray(load_image(p).resize((size, size)), dtype=np.float32) / 127.5 - 1.0)
                      .permute(2, 0, 1) for p in paths]
            from likeness.methods.training import with_prior

            captions = [options["class_prompt"]] * len(pixels)
            wrap = lambda make_batch: with_prior(make_batch, lambda _size: pixels, captions)  # noqa: E731

        pipe.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        for encoder in _text_encoders(pipe):
            encoder.requires_grad_(False)
        pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
        modules = [pipe.unet]
        if options["train_text_encoder"]:
            for encoder in _text_encoders(pipe):
                encoder.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TEXT_TARGETS))
                modules.append(encoder)
        trainable = {f"m{i}.{n}": p for i, m in enumerate(modules) for n, p in m.named_parameters() if p.requires_grad}
        return TrainingSetup(identities=identities, trainable=trainable, modules=modules, wrap_batches=wrap,
                             prior_loss_weight=float(options["prior_loss_weight"]))

    def save_weights(self, pipe, setup, out_dir, options):
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        def layers(module):
            return convert_state_dict_to_diffusers(get_peft_model_state_dict(module))

        kwargs = {"unet_lora_layers": layers(pipe.unet)}
        if options["train_text_encoder"]:
            kwargs["text_encoder_lora_layers"] = layers(pipe.text_encoder)
            if getattr(pipe, "text_encoder_2", None) is not None:
                kwargs["text_encoder_2_lora_layers"] = layers(pipe.text_encoder_2)
        type(pipe).save_lora_weights(str(out_dir), weight_name=LORA_WEIGHTS, **kwargs)

    def apply(self, pipe, artifact, manifest: Manifest):
        path = Path(artifact) / LORA_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LoRA weights missing from the artifact")
        pipe.load_lora_weights(str(artifact), weight_name=LORA_WEIGHTS)
        # Fused and unloaded: the adapters' arithmetic disappears from every denoising step.
        pipe.fuse_lora()
        pipe.unload_lora_weights()
