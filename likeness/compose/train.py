"""Train the ``custom-diffusion`` method on a composed dataset (rejected compositions left out)."""

from __future__ import annotations

from pathlib import Path

from likeness.compose.dataset import ComposedDataset


def train_on_dataset(dataset: str | Path | ComposedDataset, out_dir: str | Path, base_model: str, **config) -> Path:
    """Custom Diffusion on the dataset's kept compositions: one token per concept that appears in them,
    plus the dataset's global composition token when its captions use one."""
    from likeness.compose.bench import training_set
    from likeness.methods import get_method

    data = dataset if isinstance(dataset, ComposedDataset) else ComposedDataset(dataset)
    captioned = training_set(data)
    if captioned["global_token"]:
        config.setdefault("global_token", captioned["global_token"])
    return get_method("custom-diffusion").personalize_captioned(captioned["examples"], captioned["concepts"], out_dir,
                                                                base_model, source=captioned["source"], **config)
