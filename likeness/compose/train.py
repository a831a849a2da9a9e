"""Train the ``custom-diffusion`` method on a composed dataset (rejected compositions left out)."""

from __future__ import annotations

from pathlib import Path

from likeness.compose.dataset import ComposedDataset


def training_examples(dataset: ComposedDataset) -> list[tuple[Path, str]]:
    """(image, caption) of every kept composition; rejections recorded in review are honoured."""
    return [(e.image_path, e.caption) for e in dataset.entries()]


def train_on_dataset(dataset: str | Path | ComposedDataset, out_dir: str | Path, base_model: str, **config) -> Path:
    """Custom Diffusion on the dataset's kept compositions: one token per concept that appears in them,
    plus the dataset's global composition token when its captions use one."""
    from likeness.methods import get_method

    data = dataset if isinstance(dataset, ComposedDataset) else ComposedDataset(dataset)
    examples = training_examples(data)
    used = {n for e in data.entries() for n in e.record["concepts"]}
    concepts = {n: {"class_noun": c["class_noun"], "photos": [p["path"] for p in c["photos"] if p["status"] == "ok"]}
                for n, c in data.concepts.items() if n in used}
    token = data.global_token
    if token and any(token in c for _, c in examples):
        config.setdefault("global_token", token)
    return get_method("custom-diffusion").personalize_captioned(examples, concepts, out_dir, base_model,
                                                                source=str(data.root), **config)
