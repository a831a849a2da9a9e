"""Seeded random weights and inputs for the reference-code goldens, the same on every machine.

Shared by the golden scripts (``tests/golden/make_*_goldens.py``, run in a side environment with the
reference code) and by ``tests/test_peer_goldens.py`` (likeness's environment): both regenerate THE SAME
tensors from a committed spec (``{key: [shape, offset, scale]}``, the key layout read off the reference
model itself) instead of committing megabytes of random numbers. Needs only numpy and torch.

Values come from numpy's PCG64 integer stream (``default_rng((seed, crc32(key))).integers``), which is
exact on every CPU, unlike ``torch.randn``, whose vectorised kernels differ between AVX2 and AVX-512
builds: ``offset + scale * k / 2**20`` for integers ``k`` uniform in [-2**20, 2**20], cast to float32.
:func:`digest` hashes a state dict (sorted keys, shapes, bytes), so a test can check it regenerated
exactly what the reference ran on before comparing anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

STEPS = 2**20


def uniform(seed: int, name: str, shape, offset: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """``offset + scale * U[-1, 1]`` (float32, quantised to 2**-20), its own stream per ``name``."""
    rng = np.random.default_rng((int(seed), zlib.crc32(name.encode("utf-8"))))
    steps = rng.integers(-STEPS, STEPS, size=tuple(shape), endpoint=True, dtype=np.int64)
    return torch.from_numpy(np.asarray(offset + scale * (steps.astype(np.float64) / STEPS), dtype=np.float32))


def integers(seed: int, name: str, shape, low: int, high: int) -> torch.Tensor:
    """Integers uniform in [low, high) (int64), for label maps and pixel values."""
    rng = np.random.default_rng((int(seed), zlib.crc32(name.encode("utf-8"))))
    return torch.from_numpy(np.asarray(rng.integers(low, high, size=tuple(shape), dtype=np.int64)))


def default_rule(key: str, shape) -> tuple[float, float]:
    """(offset, scale) for a parameter: norm weights near 1, biases and 1-d tensors small, matrices and
    convolutions with unit-variance-preserving uniform bounds (sqrt(3 / fan_in))."""
    shape = tuple(shape)
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) <= 1:
        if leaf == "weight" and any(n in key for n in ("norm", "_ln", "ln_")):
            return 1.0, 0.1
        return 0.0, 0.05
    fan_in = math.prod(shape[1:]) if len(shape) >= 2 else shape[0]
    return 0.0, math.sqrt(3.0 / max(1, fan_in))


def make_spec(shapes: dict, rule=default_rule, **overrides) -> dict:
    """``{key: [shape, offset, scale]}`` for ``shapes`` (``{key: shape}``); ``overrides`` maps a key to (offset, scale)."""
    spec = {}
    for key in sorted(shapes):
        shape = [int(s) for s in shapes[key]]
        offset, scale = overrides.get(key, rule(key, shape))
        spec[key] = [shape, float(offset), float(scale)]
    return spec


def state_from_spec(spec: dict, seed: int) -> dict[str, torch.Tensor]:
    return {key: uniform(seed, key, shape, offset, scale) for key, (shape, offset, scale) in spec.items()}


def digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys, shapes, dtypes and bytes (file containers differ; the numbers do not)."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{tuple(value.shape)}|{value.dtype}|".encode())
        h.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def save_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def load_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))
