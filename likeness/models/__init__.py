"""Base text-to-image models: loading (hub id, local folder, tiny id), families, quantization and the built-in tiny
models."""

from likeness.models.loading import (  # noqa: F401
    BaseModelInfo,
    FamilyMismatchError,
    ModelNotFoundError,
    base_model_info,
    detect_family,
    load_pipeline,
    pick_device,
    pick_dtype,
)
from likeness.models.tiny import TINY_MODELS, is_tiny, tiny_model_path  # noqa: F401
from likeness.models import tiny_flow  # noqa: E402,F401  (registers the tiny flow-matching bases' builders)
