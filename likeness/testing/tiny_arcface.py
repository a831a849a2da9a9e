"""Tiny InsightFace-style ONNX models for offline tests and benchmarks (like :mod:`likeness.testing.tiny_salient`:
the real file formats and signatures, trivial or random weights; no download, no real identity).

- :func:`export_tiny_arcface`: an SCRFD-signature detector (9 outputs, 2 anchors, strides 8/16/32) whose
  detections are computable by hand, and a small ArcFace-signature recogniser (``N x 3 x 112 x 112 -> N x 16``);
- :func:`export_iresnet_onnx`: an arcface_torch iresnet (any depth, random weights) exported the way InsightFace's
  recognisers are (the graph takes the already normalised crop), for the torch port and the throughput benchmark.

Needs ``torch.onnx`` (TorchScript exporter, no onnxscript) and ``onnx`` (the ``test`` extra).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

STRIDES = (8, 16, 32)
# 5-point offsets (in strides) from the anchor centre: eyes, nose, mouth corners.
POINT_OFFSETS = np.array([[-0.3, -0.2], [0.3, -0.2], [0.0, 0.1], [-0.25, 0.4], [0.25, 0.4]], dtype=np.float32)


def export_tiny_arcface(folder: str | Path, batch_dim: bool = False) -> Path:
    """Write ``det_tiny.onnx`` and ``w_tiny.onnx`` into ``folder``; returns the folder.

    The detector fires on 32x32 bright cells (mean of the SCRFD-normalised input > 0.9) at stride 32 only,
    with box distances of one stride and fixed 5-point offsets :data:`POINT_OFFSETS`, so the expected
    detection is computable by hand. ``batch_dim``: outputs with a leading batch dimension, as some SCRFD
    exports have.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    class TinyDetector(nn.Module):
        def forward(self, x):
            brightness = x.mean(1, keepdim=True)
            scores, boxes, points = [], [], []
            for stride in STRIDES:
                pooled = F.avg_pool2d(brightness, stride).reshape(-1, 1)
                logit = 50 * (pooled - 0.9) if stride == 32 else pooled * 0 - 20
                n = pooled.shape[0] * 2
                scores.append(torch.sigmoid(logit).repeat(1, 2).reshape(n, 1))
                boxes.append(torch.ones(n, 4))
                points.append(torch.from_numpy(POINT_OFFSETS.reshape(1, 10)).repeat(n, 1))
            outputs = (*scores, *boxes, *points)
            return tuple(o[None] for o in outputs) if batch_dim else outputs

    class TinyRecogniser(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 4, stride=4)
            self.fc = nn.Linear(8 * 4 * 4, 16)

        def forward(self, x):
            return self.fc(F.avg_pool2d(torch.relu(self.conv(x)), 7).flatten(1))

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter (no onnxscript needed) warns it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyDetector(), (torch.zeros(1, 3, 640, 640),), str(folder / "det_tiny.onnx"), dynamo=False,
                          input_names=["input.1"], output_names=[f"out{i}" for i in range(9)])
        torch.onnx.export(TinyRecogniser(), (torch.zeros(1, 3, 112, 112),), str(folder / "w_tiny.onnx"), dynamo=False,
                          input_names=["data"], output_names=["fc1"], dynamic_axes={"data": {0: "n"}, "fc1": {0: "n"}})
    return folder


def face_image(seed: int) -> np.ndarray:
    """320x320 RGB: a textured dark background (``seed``) and a 16x16 bright block at (160, 96), which is one
    stride-32 cell of the detector's 640 px canvas: one face, box (144, 80, 176, 112)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (320, 320, 3), dtype=np.uint8)
    image[96:112, 160:176] = 255
    return image


def random_iresnet(layers=(1, 1, 1, 1), embedding: int = 16, widths=(8, 8, 16, 16), seed: int = 0):
    """An eval-mode :class:`~likeness.faces.iresnet.IResNet` with random weights and non-trivial batch-norm
    statistics (so a wrong mapping of running mean/variance shows in the outputs)."""
    import torch

    from likeness.faces.iresnet import IResNet

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = IResNet(layers, embedding=embedding, widths=widths).eval()
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
                    module.weight.uniform_(0.8, 1.2)
                    module.bias.uniform_(-0.1, 0.1)
    return net


def export_iresnet_onnx(path: str | Path, net=None, **kwargs) -> Path:
    """Write ``net`` (default :func:`random_iresnet` with ``kwargs``) as an InsightFace-style recogniser ONNX:
    input ``data`` ``n x 3 x 112 x 112`` already normalised ((x - 127.5) / 127.5), output ``fc1`` ``n x D``."""
    import torch

    net = random_iresnet(**kwargs) if net is None else net.eval()

    class Normalised(torch.nn.Module):
        """InsightFace's ONNX recognisers take the normalised crop; IResNet normalises itself."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x * 127.5 + 127.5)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Normalised().eval(), (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False,
                          input_names=["data"], output_names=["fc1"], dynamic_axes={"data": {0: "n"}, "fc1": {0: "n"}})
    return path
