"""``flux2-reference``: FLUX.2 (``Flux2Pipeline``, or ``Flux2KleinPipeline`` for FLUX.2 [klein]) with the person's
photo(s) as reference images.

Tuning-free: see :mod:`likeness.methods.editors.common`. Up to 4 references (``max_references``; FLUX.2 takes a list), the
subject phrase is "the person in image 1". Sampling defaults: the klein step-distilled checkpoints (``is_distilled``
in their pipeline config: FLUX.2 [klein] 4B / 9B) 4 steps at guidance 1.0 (no CFG), as Black Forest Labs publish
them; otherwise the pipeline's 50 steps at guidance 4.0.
"""

from __future__ import annotations

import json

from likeness.methods.base import METHODS
from likeness.methods.editors.common import EditorMethod
from likeness.models.loading import resolve_model_path


@METHODS.register("flux2-reference")
class Flux2Reference(EditorMethod):
    name = "flux2-reference"
    families = ("flux2",)
    pipeline = "Flux2KleinPipeline"
    accepted_classes = ("Flux2Pipeline", "Flux2KleinPipeline")
    subject_phrase = "the person in image 1"
    default_base = "black-forest-labs/FLUX.2-klein-4B"
    max_supported_references = 4

    def pipeline_class(self):
        return None  # the folder's own class: Flux2Pipeline or Flux2KleinPipeline, both take a list of references

    def sampling(self, class_name, base_model):
        index = json.loads((resolve_model_path(base_model) / "model_index.json").read_text())
        if index.get("is_distilled"):
            return {"num_inference_steps": 4, "guidance_scale": 1.0}
        return {"num_inference_steps": 50, "guidance_scale": 4.0}
