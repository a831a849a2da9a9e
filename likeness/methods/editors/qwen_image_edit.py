"""``qwen-image-edit``: Qwen-Image-Edit-2509 (``QwenImageEditPlusPipeline``) with the person's photo(s) as
"Picture 1" (up to 3, as the model was trained).

Tuning-free: see :mod:`likeness.methods.editors.common`. The pipeline itself resizes each reference twice (about 384x384 for
the Qwen2.5-VL encoder, about 1024x1024 for the VAE); the artifact stores the reference at ``reference_size``.
Guidance is true classifier-free guidance (``true_cfg_scale``, negative prompt " "): 40 steps at 4.0, the model
card's example.
"""

from __future__ import annotations

from likeness.methods.base import METHODS
from likeness.methods.editors.common import EditorMethod


@METHODS.register("qwen-image-edit")
class QwenImageEdit(EditorMethod):
    name = "qwen-image-edit"
    families = ("qwen-image",)
    pipeline = "QwenImageEditPlusPipeline"
    accepted_classes = ("QwenImageEditPlusPipeline",)
    subject_phrase = "the person in Picture 1"
    default_base = "Qwen/Qwen-Image-Edit-2509"
    max_supported_references = 3
    default_sampling = {"num_inference_steps": 40, "guidance_scale": 4.0}

    def check_base(self, base_model, info):
        class_name = super().check_base(base_model, info)
        import json

        from likeness.models.loading import resolve_model_path

        index = json.loads((resolve_model_path(base_model) / "model_index.json").read_text())
        if "processor" not in index:
            raise ValueError(f"qwen-image-edit needs the Qwen2.5-VL processor of an editing checkpoint, and {base_model!r} "
                             f"has none (a text-to-image Qwen-Image folder); pass --base-model {self.default_base} or "
                             f"likeness/tiny-qwen-image-edit")
        return class_name

    def call(self, pipe, prompts, images, **kwargs):
        # One list of references per prompt (the pipeline's batched form).
        return pipe(prompt=prompts, image=[list(images)] * len(prompts) if len(prompts) > 1 else list(images), **kwargs)
