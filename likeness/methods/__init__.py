"""Personalization methods behind one registry (``METHODS``); see :mod:`likeness.methods.base`.

Importing this package registers every built-in method (one module per method).
"""

from likeness.methods.base import (  # noqa: F401
    METHODS,
    ArtifactError,
    Manifest,
    Method,
    Personalized,
    PromptPlaceholderError,
    UnknownMethodError,
    fill_prompt,
    generate,
    get_method,
    load_artifact,
    personalize,
)

# Built-in methods register themselves on import.
from likeness.methods import (  # noqa: E402,F401
    celeb_basis, custom_diffusion, dreambooth_lora, instantid, ip_adapter, photomaker, photoverse, pulid, reference_rows,
    stellarnet, textual_inversion,
)
from likeness.methods import flux2_reference, flux_kontext, qwen_image_edit  # noqa: E402,F401  (reference-image editors)
