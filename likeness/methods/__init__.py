"""Personalization methods behind one registry (``METHODS``); see :mod:`likeness.methods.base`.

Importing this package registers every built-in method (one package per
family: baselines, celeb_basis, photoverse, stellarnet, peers, editors).
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

# Built-in methods register themselves on import: one package per family.
from likeness.methods import baselines, celeb_basis, peers, photoverse, stellarnet  # noqa: E402,F401
from likeness.methods import editors  # noqa: E402,F401  (reference-image editors)
