"""Gen4Gen (arXiv 2402.15504): compose several personal concepts into realistic training images.

Stages (one module each): foreground extraction (:mod:`likeness.segmentation.salient`), layout
(:mod:`.layout`, :mod:`.llm`), compositing (:mod:`.composite`), repainting (:mod:`.repaint`),
captions (:mod:`.captions`), and the MyCanvas-like dataset on disk (:mod:`.dataset`);
:func:`compose_dataset` runs them all. Training on a composed dataset is the ``custom-diffusion``
method (:mod:`likeness.methods.baselines.custom_diffusion`).
"""

from likeness.compose.captions import GLOBAL_TOKEN, TemplateCaptioner, VLMCaptioner  # noqa: F401
from likeness.compose.composite import Composite, composite, repaint_mask  # noqa: F401
from likeness.compose.concepts import Concept, concept_from_folder, parse_concept_spec  # noqa: F401
from likeness.compose.dataset import ComposedDataset, DatasetError  # noqa: F401
from likeness.compose.layout import Box, Layout, LayoutError, OfflinePlanner, validate_layout  # noqa: F401
from likeness.compose.llm import LLMPlanError, LLMPlanner  # noqa: F401
from likeness.compose.pipeline import ComposeResult, compose_dataset  # noqa: F401
from likeness.compose.repaint import DEFAULT_REPAINT_MODEL, Repainter  # noqa: F401
