"""Textual Inversion (Gal et al., 2022): learn a new word embedding per person, the model stays frozen.

Each person gets a token ``<name>`` (``num_vectors`` > 1 adds ``<name>_1`` ...), initialised from
the embedding of ``initializer_token`` ("person"). Only that embedding row changes: after every
optimizer step all other rows are put back, so weight decay and the gradients of the caption's
other words cannot drift the vocabulary. On SDXL both text encoders learn a row.

Artifact files (what ``pipe.load_textual_inversion`` reads):

- SD 1.x/2.x: ``<name>.safetensors`` = ``{"<name>": (num_vectors, dim)}``;
- SDXL: ``<name>.safetensors`` = ``{"clip_l": ..., "clip_g": ...}``, loaded once per encoder.

Defaults follow the diffusers example: lr 5e-4 scaled by batch x accumulation (4), constant
schedule, 3000 steps, flip augmentation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from likeness.methods.base import METHODS, IdentityEntry, Manifest, Method, TrainingSetup


def _encoders(pipe):
    """(tokenizer, text encoder, SDXL file key) for each text encoder of the pipeline."""
    pairs = [(pipe.tokenizer, pipe.text_encoder, "clip_l")]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2, "clip_g"))
    return pairs


def placeholder_tokens(name: str, num_vectors: int) -> list[str]:
    """The same names ``load_textual_inversion`` gives the rows of a multi-vector embedding."""
    token = f"<{name}>"
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


class FrozenRows:
    """Only the new tokens' rows of an embedding table train: the optimiser updates the whole table
    (weight decay included), so after every step the other rows are put back exactly as they were."""

    def __init__(self):
        self._tables: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def keep(self, weight: torch.Tensor, trainable_ids: list[int]) -> None:
        frozen = torch.ones(weight.shape[0], dtype=torch.bool)
        frozen[trainable_ids] = False
        self._tables.append((weight, frozen, weight.detach().clone()))

    def restore(self) -> None:
        with torch.no_grad():
            for weight, frozen, original in self._tables:
                weight[frozen] = original[frozen].to(weight.dtype)


@METHODS.register("textual-inversion")
class TextualInversion(Method):
    name = "textual-inversion"
    families = ("sd1", "sd2", "sdxl")
    defaults = {
        "num_vectors": 1,
        "initializer_token": "person",
        "max_steps": 3000,
        "learning_rate": 5e-4,
        "scale_lr": True,
        "gradient_accumulation_steps": 4,
        "adam_weight_decay": 1e-2,
    }

    def setup(self, pipe, names, options):
        pipe.unet.requires_grad_(False)
        pipe.vae.requires_grad_(False)
        identities = {name: IdentityEntry(subject=f"<{name}>", tokens=placeholder_tokens(name, options["num_vectors"]), photos=[])
                      for name in names}
        new_tokens = [t for entry in identities.values() for t in entry.tokens]
        trainable, modules, frozen_rows = {}, [], FrozenRows()
        for tokenizer, encoder, key in _encoders(pipe):
            init_ids = tokenizer.encode(options["initializer_token"], add_special_tokens=False)
            if len(init_ids) != 1:
                raise ValueError(f"initializer token {options['initializer_token']!r} must be a single token of the "
                                 f"tokenizer, it splits into {len(init_ids)}")
            clashes = [t for t in new_tokens if t in tokenizer.get_vocab()]
            if clashes:
                raise ValueError(f"placeholder token(s) {', '.join(clashes)} already exist in the base model's vocabulary")
            tokenizer.add_tokens(new_tokens)
            new_ids = tokenizer.convert_tokens_to_ids(new_tokens)
            if len(tokenizer) > encoder.get_input_embeddings().num_embeddings:  # never shrink a padded table
                encoder.resize_token_embeddings(len(tokenizer))
            encoder.requires_grad_(False)
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                weight[new_ids] = weight[init_ids[0]].clone()
            weight.requires_grad_(True)
            trainable[f"{key}.token_embedding"] = weight
            modules.append(encoder)
            frozen_rows.keep(weight, new_ids)

        return TrainingSetup(identities=identities, trainable=trainable, modules=modules, after_step=frozen_rows.restore)

    def save_weights(self, pipe, setup, out_dir, options):
        sdxl = getattr(pipe, "text_encoder_2", None) is not None
        for name, entry in setup.identities.items():
            tensors = {}
            for tokenizer, encoder, key in _encoders(pipe):
                ids = tokenizer.convert_tokens_to_ids(entry.tokens)
                rows = encoder.get_input_embeddings().weight[ids].detach().float().cpu().contiguous()
                tensors[key if sdxl else entry.tokens[0]] = rows
            save_file(tensors, Path(out_dir) / f"{name}.safetensors")

    def apply(self, pipe, artifact, manifest: Manifest):
        sdxl = manifest.family == "sdxl"
        for name, entry in manifest.identities.items():
            path = Path(artifact) / f"{name}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: embedding file missing from the artifact")
            if not sdxl:
                pipe.load_textual_inversion(str(path), token=entry.tokens[0])
                continue
            state = load_file(path)
            for tokenizer, encoder, key in _encoders(pipe):
                pipe.load_textual_inversion(state[key], token=entry.tokens[0], text_encoder=encoder, tokenizer=tokenizer)
