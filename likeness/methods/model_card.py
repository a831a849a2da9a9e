"""The model card written into every artifact folder: ``README.md`` with YAML front matter.

diffusers' own training scripts leave such a card in their output folder (base model, tags,
instance prompt, licence), so the folder can be pushed to a model hub or handed to a colleague as
it is. likeness's card says the same things plus what a reader needs to reproduce or judge the
artifact: the method, its hyper-parameters, who is in it (display name, key, prompt subject), the
photos by file name and sha256 (never a local path, never the photos themselves), and how to load
it in plain diffusers, without likeness.

The front matter is written as ``key: <JSON value>`` lines: JSON values are valid YAML, so any YAML
reader (the hub's included) parses it, and likeness needs no YAML library to write it.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD_NAME = "README.md"
DEFAULT_LICENSE = "other"  # the artifact inherits the base model's licence; the owner states it

# Files each built-in method writes, and the diffusers calls that load them.
_FAMILY_TAGS = {"sd1": "stable-diffusion", "sd2": "stable-diffusion", "sdxl": "stable-diffusion-xl"}


def _textual_inversion_usage(manifest) -> list[str]:
    lines = []
    for key, entry in manifest.identities.items():
        token = entry.tokens[0] if entry.tokens else f"<{key}>"
        if manifest.family == "sdxl":
            lines += [f'state = load_file(f"{{ARTIFACT}}/{key}.safetensors")',
                      f'pipe.load_textual_inversion(state["clip_l"], token="{token}", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)',
                      f'pipe.load_textual_inversion(state["clip_g"], token="{token}", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)']
        else:
            lines.append(f'pipe.load_textual_inversion(f"{{ARTIFACT}}/{key}.safetensors", token="{token}")')
    return (["from safetensors.torch import load_file"] if manifest.family == "sdxl" else []) + lines


USAGE = {
    "textual-inversion": _textual_inversion_usage,
    "celeb-basis": _textual_inversion_usage,  # it exports each person as a 2-vector textual-inversion file
    "dreambooth-lora": lambda manifest: ['pipe.load_lora_weights(ARTIFACT, weight_name="pytorch_lora_weights.safetensors")'],
}


def usage_snippet(manifest) -> str:
    """Python that loads the artifact in plain diffusers (or through likeness for other methods)."""
    first = next(iter(manifest.identities.values()), None)
    subject = first.subject if first else "a person"
    steps = manifest.sampling.get("num_inference_steps", 50)
    guidance = manifest.sampling.get("guidance_scale", 7.5)
    loader = USAGE.get(manifest.method)
    if loader is None:
        return "\n".join([
            "from likeness.methods import load_artifact",
            'person = load_artifact("path/to/this/folder")',
            f'image = person.generate(["{{}} riding a bicycle"], [0])[0]',
        ])
    return "\n".join([
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        'ARTIFACT = "path/to/this/folder"',
        f"pipe = DiffusionPipeline.from_pretrained({json.dumps(manifest.base_model.model_id)})",
        *loader(manifest),
        f"image = pipe({json.dumps(subject + ' riding a bicycle')}, num_inference_steps={steps}, guidance_scale={guidance},",
        '             generator=torch.Generator("cpu").manual_seed(0)).images[0]',
    ])


def front_matter(manifest, license: str = DEFAULT_LICENSE) -> dict:
    training = manifest.config.get("training", {}) if isinstance(manifest.config, dict) else {}
    options = manifest.config.get("options", {}) if isinstance(manifest.config, dict) else {}
    first = next(iter(manifest.identities.values()), None)
    return {
        "base_model": manifest.base_model.model_id,
        "library_name": "diffusers",
        "license": license,
        "pipeline_tag": "text-to-image",
        "tags": ["likeness", manifest.method, "text-to-image", "diffusers", "diffusers-training",
                 _FAMILY_TAGS.get(manifest.family, manifest.family), "personalization"],
        "instance_prompt": first.subject if first else None,
        "inference": True,
        "likeness": {
            "method": manifest.method, "family": manifest.family, "base_model_revision": manifest.base_model.revision,
            "version": manifest.likeness_version,
            "hyperparameters": {**{k: v for k, v in training.items() if k != "progress"}, **options},
            "sampling": manifest.sampling,
        },
    }


def render(manifest, license: str = DEFAULT_LICENSE) -> str:
    meta = front_matter(manifest, license)
    lines = ["---", *(f"{key}: {json.dumps(value, ensure_ascii=False, default=str)}" for key, value in meta.items()), "---", ""]
    lines += [f"# {manifest.method} personalization of `{manifest.base_model.model_id}`", "",
              f"Made with [likeness](https://pypi.org/project/likeness/) {manifest.likeness_version}. "
              "The folder holds safetensors weights plain diffusers loads and `likeness.json`, the manifest.", "",
              "## People", "", "| name | key | prompt subject | photos (sha256) |", "|---|---|---|---|"]
    for key, entry in manifest.identities.items():
        photos = ", ".join(f"`{Path(p).name}` ({h[:12]})" for p, h in zip(entry.photos, entry.photo_sha256 or [""] * len(entry.photos)))
        lines.append(f"| {_cell(entry.display or key)} | `{key}` | `{_cell(entry.subject)}` | {photos} |")
    lines += ["", "The photos themselves are not in this folder.", "", "## Use it in plain diffusers", "", "```python",
              usage_snippet(manifest), "```", "",
              "Put the subject where the person goes in a prompt (likeness prompts write it as `{}`).", "",
              "## Training", "", "```json", json.dumps(front_matter(manifest)["likeness"]["hyperparameters"], indent=1,
                                                      default=str, ensure_ascii=False), "```", "",
              "## Licence", "",
              f"`{license}`: this artifact is derived from `{manifest.base_model.model_id}` and inherits its licence; "
              "it depicts real people, so share it only with their consent.", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_model_card(folder: str | Path, manifest, license: str = DEFAULT_LICENSE) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(render(manifest, license), encoding="utf-8")
    return path
