"""The trained baselines: Textual Inversion, DreamBooth-LoRA (rectified flow on the flow-matching bases,
:mod:`.flow_matching`), Custom Diffusion, and the model-free reference rows (``real-photos``, ``copy-reference``).

Importing this package registers them.
"""

from likeness.methods.baselines import (  # noqa: F401
    custom_diffusion, dreambooth_lora, flow_matching, reference_rows, textual_inversion,
)
