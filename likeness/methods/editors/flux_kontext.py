"""``flux-kontext``: FLUX.1 Kontext [dev] (``FluxKontextPipeline``) edits the person's photo into the prompt's scene.

Tuning-free: see :mod:`likeness.methods.editors.common` for the artifact and the instruction template. One reference image
(Kontext edits one image). The reference is stored at ``reference_size`` (1024, one of Kontext's preferred
resolutions for a square crop) and given as is (``_auto_resize=False``), so what the artifact holds is exactly what
the model sees. Sampling defaults are the pipeline's: 28 steps, distilled guidance 3.5. ``--height``/``--width``
set the output size (Kontext's pipeline would otherwise keep only their aspect ratio at about 1024x1024).
"""

from __future__ import annotations

from likeness.methods.base import METHODS
from likeness.methods.editors.common import EditorMethod


@METHODS.register("flux-kontext")
class FluxKontext(EditorMethod):
    name = "flux-kontext"
    families = ("flux1",)
    pipeline = "FluxKontextPipeline"
    accepted_classes = ("FluxKontextPipeline",)
    subject_phrase = "the person in this image"
    default_base = "black-forest-labs/FLUX.1-Kontext-dev"
    max_supported_references = 1
    default_sampling = {"num_inference_steps": 28, "guidance_scale": 3.5}

    def call(self, pipe, prompts, images, **kwargs):
        # Kontext rescales any requested size to the area max_area (default 1024^2), keeping only the aspect ratio:
        # the area of the size asked for keeps likeness's --height/--width meaning what they say.
        if kwargs.get("height") and kwargs.get("width"):
            kwargs["max_area"] = int(kwargs["height"]) * int(kwargs["width"])
        return pipe(prompt=prompts, image=images[0], _auto_resize=False, **kwargs)
