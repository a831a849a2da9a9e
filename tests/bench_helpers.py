"""Shared by the runner and report tests: a method that needs no training, and a small config.

``plain-prompt`` is a real :class:`Method` (real tiny diffusers pipeline, real generation) that
addresses the person as "a person": the no-personalization baseline. It keeps runner tests about
the runner (bookkeeping, resume, sharding) instead of about training speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from likeness.bench.plan import RunConfig
from likeness.data.images import load_image
from likeness.data.names import name_key
from likeness.methods.base import METHODS, IdentityEntry, Manifest, Method
from likeness.models.loading import base_model_info

PLAIN = "plain-prompt"


def assert_pixels_close(a, b, *, max_level: int = 1, max_fraction: float = 1e-3) -> None:
    """Images from computations PyTorch does not promise to be bit-equal (another batch size, world size or
    thread count: AVX2, AVX-512 and AMX kernels order a batched product's sums differently): every pixel
    within ``max_level`` of 255, and at most ``max_fraction`` of the values different at all. Where the very
    same computation repeats (resume, save/load, the same batch), tests compare exactly instead."""
    import numpy as np

    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b)
    assert diff.max() <= max_level, f"a pixel differs by {diff.max()} levels (bound {max_level})"
    assert (diff > 0).mean() <= max_fraction, f"{(diff > 0).mean():.4%} of values differ (bound {max_fraction:.2%})"


class PlainPrompt(Method):
    name = PLAIN
    default_sampling = {"num_inference_steps": 2, "guidance_scale": 5.0}

    def personalize(self, identities, out_dir, base_model, **config):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        entries = {}
        for person in identities:
            for photo in person.photos:
                load_image(photo)  # a bad photo fails here, naming the file, like a training method would
            entries[name_key(person.name)] = IdentityEntry(subject="a person", tokens=[], display=person.name,
                                                           photos=[Path(p).name for p in person.photos])
        Manifest(self.name, base_model_info(base_model), entries, config, dict(self.default_sampling)).save(out_dir)
        return out_dir

    def apply(self, pipe, artifact, manifest):
        pass


GATED = "gated-plain"


class GatedPlain(PlainPrompt):
    """``plain-prompt`` that logs every person it trains (one line each to ``$LIKENESS_TEST_LOG``) and,
    for the person named ``$LIKENESS_TEST_HOLD``, writes a first file into its artifact folder and then
    waits until the file ``$LIKENESS_TEST_GATE`` exists: a run caught in the middle of training."""

    name = GATED

    def personalize(self, identities, out_dir, base_model, **config):
        import os
        import time

        for person in identities:
            if os.environ.get("LIKENESS_TEST_LOG"):
                with open(os.environ["LIKENESS_TEST_LOG"], "a", encoding="utf-8") as log:
                    log.write(person.name + "\n")
            if person.name == os.environ.get("LIKENESS_TEST_HOLD"):
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                (Path(out_dir) / "half-written.bin").write_bytes(b"\0" * 100)
                deadline = time.monotonic() + 300
                while not Path(os.environ.get("LIKENESS_TEST_GATE", "/nonexistent")).exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
        return super().personalize(identities, out_dir, base_model, **config)


if PLAIN not in METHODS:
    METHODS.register(PLAIN)(PlainPrompt)
if GATED not in METHODS:
    METHODS.register(GATED)(GatedPlain)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process runs use one torch thread, like the subprocess runs (OMP_NUM_THREADS=1): on a shared,
    oversubscribed CPU two spinning threads made tiny-model generation ~10x slower. Import it into a
    test module to apply it there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(identities: str = "builtin", **overrides) -> RunConfig:
    options = dict(method=PLAIN, base_model="likeness/tiny-sd", identities=identities, prompt_limit=4,
                   steps=2, resolution=32, metrics=[])
    options.update(overrides)
    return RunConfig(**options)


def main(argv: list[str]) -> None:
    """``python bench_helpers.py RUN_DIR '{"prompt_limit": 8}'``: one rank of a run (also under accelerate launch)."""
    import json

    from likeness.bench.runner import Runner

    overrides = json.loads(argv[1]) if len(argv) > 1 else {}
    runner = Runner(small_config(**overrides), argv[0], progress=False)
    summary = runner.run()
    print(f"backend {runner.state.backend}, {runner.world} processes", flush=True)
    print(summary.describe(), flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
