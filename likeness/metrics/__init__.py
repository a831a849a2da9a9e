"""Metrics, one file each, behind a registry: ``METRICS.create("ips", backend=..., cache=...)``,
``METRICS.create("clip-t", models=VisionModels(...))``."""

from __future__ import annotations

from likeness.registry import Registry

METRICS: Registry = Registry("metric")

# Imported after METRICS exists: each module registers its metric.
from likeness.metrics import aps, ips, sis  # noqa: E402,F401
# Copy-paste gap and several people in one image (issue 22).
from likeness.metrics import copy_gap, multi_id  # noqa: E402,F401
# Text-image metrics (issue 10), on the shared vision-language models.
from likeness.metrics import aesthetic, clip_i, clip_n, clip_t, cp_clip, goa, hps, image_reward, pickscore, rfs, ti_clip  # noqa: E402,F401
# The open multimodal judge (issue 25): only when asked.
from likeness.metrics import judge  # noqa: E402,F401
from likeness.metrics.base import Metric, Sample, Score  # noqa: E402

__all__ = ["METRICS", "Metric", "Sample", "Score"]
