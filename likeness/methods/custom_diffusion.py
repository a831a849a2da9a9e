"""Custom Diffusion (Kumari et al., CVPR 2023): multi-concept personalization by training only the
cross-attention key/value projections of the UNet plus one new token per concept.

Why this method for Gen4Gen: it is the model the paper trains on MyCanvas; K/V of cross-attention
are where text meets image, so several concepts learn jointly in one small set of weights.

- Every cross-attention layer (``attn2``) gets diffusers' ``CustomDiffusionAttnProcessor2_0`` with its
  own ``to_k_custom_diffusion`` / ``to_v_custom_diffusion`` initialised from the layer's K/V; those train,
  the rest of the UNet stays frozen (self-attention gets the weightless processor, as in diffusers'
  training example). The key of the first (start) token is detached, as the processor does.
- Each concept gets a token ``<name>`` initialised from its class noun ("dog"); an optional global token
  (Gen4Gen's composition token) is added the same way. Only those embedding rows change (the others
  are put back after each step). On SDXL both text encoders learn the rows.

Two ways in: :meth:`CustomDiffusion.personalize` (photos of people, like every method) and
:meth:`CustomDiffusion.personalize_captioned` (captioned multi-concept images, e.g. a composed dataset:
``likeness.compose.train``).

Artifact files, all read by plain diffusers::

    pipe.unet.load_attn_procs(artifact, weight_name="pytorch_custom_diffusion_weights.safetensors", _pipeline=pipe)
    pipe.load_textual_inversion(f"{artifact}/<name>.safetensors", token="<name>")   # per concept

``_pipeline=pipe`` is needed with diffusers 0.42.1: its ``load_attn_procs`` calls
``set_attn_processor`` only inside ``if _pipeline is not None``, so without it the weights are read
and silently not installed (the test checks the processors really are in place).

The K/V weights are safetensors in the key layout of ``save_attn_procs`` (see
:func:`custom_diffusion_state_dict`: the weightless self-attention processors are stored as empty
tensors, which ``load_attn_procs`` reads exactly like the ``{}`` of diffusers' own ``.bin``; artifacts
with the older ``.bin`` still load). Token files follow Textual Inversion's format (SDXL:
``{"clip_l", "clip_g"}``). Defaults follow diffusers' Custom Diffusion example: lr 1e-5 scaled by the
batch size, batch 2, 500 steps for several concepts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from likeness.data.names import name_key
from likeness.methods.base import (
    COMMON_OPTIONS,
    METHODS,
    IdentityEntry,
    Manifest,
    Method,
    TrainingSetup,
    safe_name,
    split_config,
    start_artifact,
)
from likeness.methods.textual_inversion import FrozenRows

WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"  # diffusers' CUSTOM_DIFFUSION_WEIGHT_NAME_SAFE
LEGACY_WEIGHTS = "pytorch_custom_diffusion_weights.bin"  # what artifacts before this change hold; still read


def custom_diffusion_state_dict(unet) -> dict[str, torch.Tensor]:
    """The state dict ``load_attn_procs`` expects, every value a tensor so safetensors can hold it:
    ``<processor>.to_k_custom_diffusion.weight`` ... for cross-attention, and for each weightless
    (self-attention) processor its name with an *empty* tensor. diffusers' own ``save_attn_procs``
    stores ``{}`` there, which safetensors cannot, so it drops those keys and the file no longer
    loads (``set_attn_processor`` needs every layer); its reader tests ``len(value) == 0``, which an
    empty tensor passes exactly as ``{}`` does."""
    out = {}
    for name, proc in unet.attn_processors.items():
        weights = proc.state_dict()
        if not weights:
            out[name] = torch.zeros(0)
        for key, value in weights.items():
            out[f"{name}.{key}"] = value.detach().cpu().contiguous()
    return out


def _encoders(pipe):
    pairs = [(pipe.tokenizer, pipe.text_encoder, "clip_l")]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2, "clip_g"))
    return pairs


def token_file(token: str) -> str:
    return f"{safe_name(token.strip('<>'))}.safetensors"


def add_custom_diffusion_processors(unet) -> dict[str, torch.nn.Parameter]:
    """Install Custom Diffusion processors (K/V trainable on cross-attention); return the new parameters."""
    from diffusers.models.attention_processor import Attention, CustomDiffusionAttnProcessor2_0

    attention = {name: module for name, module in unet.named_modules() if isinstance(module, Attention)}
    processors = {}
    for name in unet.attn_processors:
        module = attention[name[: -len(".processor")]]
        if module.is_cross_attention:
            proc = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=False, hidden_size=module.to_k.out_features,
                                                   cross_attention_dim=module.to_k.in_features)
            with torch.no_grad():
                proc.to_k_custom_diffusion.weight.copy_(module.to_k.weight)
                proc.to_v_custom_diffusion.weight.copy_(module.to_v.weight)
            proc.to(module.to_k.weight.device, module.to_k.weight.dtype)
        else:
            proc = CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False, hidden_size=None, cross_attention_dim=None)
        processors[name] = proc
    unet.set_attn_processor(processors)
    return {f"unet.{n}": p for n, p in unet.named_parameters() if "custom_diffusion" in n}


@METHODS.register("custom-diffusion")
class CustomDiffusion(Method):
    name = "custom-diffusion"
    defaults = {
        "class_nouns": None,  # {name: class noun}; default "person" (photos of people)
        "global_token": None,  # e.g. "<gen4gen>": a learned token shared by every composed image
        "max_steps": 500,
        "learning_rate": 1e-5,
        "scale_lr": True,
        "batch_size": 2,
        "adam_weight_decay": 1e-2,
        "framing": "upper_body",
        # A captioned multi-concept training set (``likeness.compose.bench.training_set``): {"examples":
        # [[image, caption]], "concepts": {name: {"class_noun", "photos"}}, "global_token", "source"}.
        # Given, ``personalize`` trains on it (not on the photos) and the identity it was asked for
        # becomes the group of all concepts: ``bench --compose-dataset`` goes through here.
        "captioned": None,
    }

    def setup(self, pipe, names, options):
        nouns = {n: "person" for n in names}
        nouns.update(options.get("class_nouns") or {})
        identities = {n: IdentityEntry(subject=f"<{n}> {nouns[n]}", tokens=[f"<{n}>"], photos=[]) for n in names}
        inits = {f"<{n}>": nouns[n] for n in names}
        if options.get("global_token"):
            inits[options["global_token"]] = "photo"
        pipe.vae.requires_grad_(False)
        pipe.unet.requires_grad_(False)
        trainable = add_custom_diffusion_processors(pipe.unet)
        modules, frozen_rows = [pipe.unet], FrozenRows()
        for tokenizer, encoder, key in _encoders(pipe):
            clashes = [t for t in inits if t in tokenizer.get_vocab()]
            if clashes:
                raise ValueError(f"token(s) {', '.join(clashes)} already exist in the base model's vocabulary")
            tokenizer.add_tokens(list(inits))
            if len(tokenizer) > encoder.get_input_embeddings().num_embeddings:
                encoder.resize_token_embeddings(len(tokenizer))
            encoder.requires_grad_(False)
            weight = encoder.get_input_embeddings().weight
            new_ids = tokenizer.convert_tokens_to_ids(list(inits))
            with torch.no_grad():
                for token_id, noun in zip(new_ids, inits.values()):
                    # The class noun's (last) sub-word: a concept starts as "a dog" and moves towards "this dog".
                    init = tokenizer.encode(noun, add_special_tokens=False) or tokenizer.encode("object", add_special_tokens=False)
                    weight[token_id] = weight[init[-1]].clone()
            weight.requires_grad_(True)
            trainable[f"{key}.token_embedding"] = weight
            modules.append(encoder)
            frozen_rows.keep(weight, new_ids)

        return TrainingSetup(identities=identities, trainable=trainable, modules=modules, after_step=frozen_rows.restore)

    def save_weights(self, pipe, setup, out_dir, options):
        save_file(custom_diffusion_state_dict(pipe.unet), Path(out_dir) / WEIGHTS, metadata={"format": "pt"})
        sdxl = getattr(pipe, "text_encoder_2", None) is not None
        tokens = [e.tokens[0] for e in setup.identities.values()]
        if options.get("global_token"):
            tokens.append(options["global_token"])
        for token in tokens:
            tensors = {}
            for tokenizer, encoder, key in _encoders(pipe):
                row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids([token])]
                tensors[key if sdxl else token] = row.detach().float().cpu().contiguous()
            save_file(tensors, Path(out_dir) / token_file(token))

    def apply(self, pipe, artifact, manifest: Manifest):
        weights = Path(artifact) / WEIGHTS
        if not weights.is_file() and (Path(artifact) / LEGACY_WEIGHTS).is_file():
            weights = Path(artifact) / LEGACY_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: Custom Diffusion weights missing from the artifact")
        pipe.unet.load_attn_procs(str(artifact), weight_name=weights.name, _pipeline=pipe)
        if not any("CustomDiffusion" in type(p).__name__ for p in pipe.unet.attn_processors.values()):
            raise RuntimeError(f"{weights}: diffusers did not install the Custom Diffusion processors")
        tokens = list(dict.fromkeys(e.tokens[0] for e in manifest.identities.values()))  # a group repeats its concepts'
        if manifest.config.get("options", {}).get("global_token"):
            tokens.append(manifest.config["options"]["global_token"])
        for token in tokens:
            path = Path(artifact) / token_file(token)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: token embedding missing from the artifact")
            if manifest.family != "sdxl":
                pipe.load_textual_inversion(str(path), token=token)
                continue
            state = load_file(path)
            for tokenizer, encoder, key in _encoders(pipe):
                pipe.load_textual_inversion(state[key], token=token, text_encoder=encoder, tokenizer=tokenizer)

    def personalize(self, identities, out_dir, base_model: str, **config) -> Path:
        """Photos of people (the shared loop), or, with the ``captioned`` option, a captioned multi-concept
        set; then the one identity asked for names the group of all its concepts (its subject:
        ``<a> dog and <b> teapot``), so bench prompts ``{}`` address the whole composition."""
        captioned = config.pop("captioned", None)
        if not captioned:
            return super().personalize(identities, out_dir, base_model, **config)
        names = list(identities) if isinstance(identities, dict) else [
            getattr(i, "name", None) or (i[0] if isinstance(i, (tuple, list)) else str(i)) for i in identities]
        if len(names) != 1:
            raise ValueError(f"a captioned training set makes one group identity; got {len(names)} ({', '.join(names)})")
        if captioned.get("global_token"):
            config.setdefault("global_token", captioned["global_token"])
        return self.personalize_captioned(captioned.get("examples") or [], captioned.get("concepts") or {}, out_dir,
                                          base_model, source=captioned.get("source", ""), group=names[0], **config)

    def personalize_captioned(self, examples, concepts: dict[str, dict], out_dir, base_model: str, *,
                              source: str = "", group: str | None = None, **config) -> Path:
        """Train on ``examples`` = ``[(image path, caption)]`` whose captions already contain the
        concepts' tokens ``<name>``; ``concepts`` = ``{name: {"class_noun", "photos"}}``. ``group``: also
        record an identity of that name whose subject names every concept (see :meth:`personalize`)."""
        from likeness.methods.training import native_resolution, remove_checkpoints, train
        from likeness.models.loading import load_pipeline

        examples = [(Path(p), str(c)) for p, c in examples]
        if not examples:
            raise ValueError("no training examples (every composition rejected or skipped?)")
        missing = sorted(n for n in concepts if not any(f"<{n}>" in c for _, c in examples))
        if missing:
            raise ValueError(f"concept(s) {', '.join(missing)} appear in no caption; nothing would train their tokens")
        config = {**config, "class_nouns": {n: c["class_noun"] for n, c in concepts.items()}}
        training, options = split_config(config, {**COMMON_OPTIONS, **self.defaults})
        out_dir = start_artifact(out_dir, options["overwrite"])
        pipe = load_pipeline(base_model, device=options["device"], dtype=torch.float32)
        size = training.resolution = training.resolution or native_resolution(pipe)
        pixels = load_pixels([p for p, _ in examples], size)
        captions = [c for _, c in examples]
        setup = self.setup(pipe, list(concepts), {**options, "out_dir": out_dir})
        for name, entry in setup.identities.items():
            entry.photos = [str(p) for p in concepts[name].get("photos", [])]

        make_batch = captioned_batches(pixels, captions, training.batch_size, options["flip"])
        fingerprint = {"method": self.name, "base_model": pipe.likeness_info.to_dict(), "options": options,
                       "examples": [(str(p), c) for p, c in examples]}
        result = train(pipe, setup.trainable, make_batch, training, out_dir, modules=setup.modules,
                       after_step=setup.after_step, fingerprint_extra=json.loads(json.dumps(fingerprint, default=str)))
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return out_dir
        self.save_weights(pipe, setup, out_dir, options)
        recorded = {k: v for k, v in options.items() if k not in ("device", "overwrite")}
        identities = dict(setup.identities)
        if group is not None:
            identities[name_key(group)] = group_entry(group, setup.identities)
        Manifest(
            method=self.name, base_model=pipe.likeness_info, identities=identities,
            config={"training": asdict(training), "options": recorded, "dataset": str(source),
                    "examples": len(examples), "final_loss": result.losses[-1] if result.losses else None,
                    "resumed_from": result.resumed_from},
            sampling=dict(self.default_sampling.get(pipe.likeness_info.family, self.default_sampling)),
        ).save(out_dir)
        remove_checkpoints(out_dir)
        return out_dir


def group_entry(name: str, concepts: dict[str, IdentityEntry]) -> IdentityEntry:
    """The identity of a whole composition: ``{}`` becomes ``<a> dog, <b> cat and <c> teapot``."""
    subjects = [e.subject for e in concepts.values()]
    subject = subjects[0] if len(subjects) == 1 else ", ".join(subjects[:-1]) + " and " + subjects[-1]
    return IdentityEntry(subject=subject, tokens=[t for e in concepts.values() for t in e.tokens], photos=[], display=name)


def load_pixels(paths, size: int) -> list[torch.Tensor]:
    """3 x size x size tensors in [-1, 1]; every image is read (and validated) before training starts,
    so a corrupt file is an error naming it, not a crash at step 300."""
    from likeness.data.images import load_image

    out = []
    for path in paths:
        image = load_image(path).resize((size, size), resample=3)
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return out


def captioned_batches(pixels: list[torch.Tensor], captions: list[str], batch_size: int, flip: bool = True):
    """``make_batch(step, micro, rng)`` over captioned images: random picks and flips from ``rng`` only."""
    from likeness.methods.training import Batch

    def make_batch(step, micro, rng):
        picks = [int(rng.integers(len(pixels))) for _ in range(batch_size)]
        flips = [bool(flip and rng.random() < 0.5) for _ in picks]
        batch = torch.stack([pixels[i].flip(-1) if f else pixels[i] for i, f in zip(picks, flips)])
        return Batch(pixels=batch, captions=[captions[i] for i in picks])

    return make_batch
