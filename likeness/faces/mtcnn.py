"""MTCNN (Zhang et al., 2016), the face detector of the official Stellar evaluation, in torch, offline.

Why: dlib's HOG detector misses faces in generated images (painted, tilted, small, partly
covered); MTCNN finds them, and it is what the Stellar code uses. Its original weights ship inside
the MIT-licensed ``mtcnn`` package (``mtcnn/assets/weights/{pnet,rnet,onet}.lz4``: lists of numpy
arrays, conv kernels HWIO, biases, PReLU slopes, dense layers). We read those files by path
(``importlib.util.find_spec``; importing ``mtcnn`` needs TensorFlow) and run our own torch
networks and cascade, with facenet-pytorch's defaults so boxes follow the official code:
minimum face 20 px, thresholds 0.6 / 0.7 / 0.7, pyramid factor 0.709.

The cascade, per image:

1. **P-Net** on an image pyramid (scales 12/min_face * 0.709^k while the short side stays >= 12 px;
   area resampling), a 12 px window every 2 px; windows scoring >= 0.6 become boxes, NMS 0.5 per
   scale, then 0.7 over all scales; box regression; boxes made square.
2. **R-Net** on 24x24 crops of those boxes (batched): score >= 0.7, NMS 0.7, regression, square.
3. **O-Net** on 48x48 crops (batched): score >= 0.7, 5 landmarks, regression, NMS 0.7 (intersection
   over the smaller box).

Networks take RGB in 0..255 minus 127.5, times 1/128, NCHW. R-Net and O-Net flatten their last
feature map in (width, height, channel) order, as the original Caffe models did.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# facenet-pytorch's MTCNN defaults (the Stellar evaluation's settings).
MIN_FACE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709


class MTCNNWeightsError(ValueError):
    """An MTCNN weight file is missing, unreadable, or has arrays of the wrong shape. The message names it."""


def mtcnn_weights_dir() -> Path:
    """``mtcnn/assets/weights`` of the installed ``mtcnn`` package, found without importing it."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the mtcnn package is not installed (its weights are needed): pip install mtcnn==1.0.0")
    return Path(list(spec.submodule_search_locations)[0]) / "assets" / "weights"


def _same_pool(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """Max pooling with TensorFlow's 'same' padding (pad so out = ceil(in / s), extra padding at the end)."""
    h, w = x.shape[-2:]
    pads = []
    for size in (w, h):
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)


class _Net(torch.nn.Module):
    """Shared parts: conv + per-channel PReLU stacks built from (out, kernel) specs, weights from HWIO arrays."""

    convs: tuple  # ((channels, kernel), ...)
    dense: tuple  # (hidden,) or ()
    heads: tuple  # sizes of the output heads in file order

    def __init__(self):
        super().__init__()
        c = 3
        self.conv = torch.nn.ModuleList()
        self.prelu = torch.nn.ParameterList()
        for channels, kernel in self.convs:
            self.conv.append(torch.nn.Conv2d(c, channels, kernel))
            self.prelu.append(torch.nn.Parameter(torch.zeros(channels)))
            c = channels

    def load_arrays(self, arrays: list[np.ndarray], path: Path) -> None:
        """Copy the package's arrays (Keras order) into the torch layers, checking every shape."""
        expected = []
        for conv in self.conv:
            o, i, kh, kw = conv.weight.shape
            expected += [(kh, kw, i, o), (o,), (1, 1, o)]
        for layer in self.fc:
            expected += [(layer.in_features, layer.out_features), (layer.out_features,), (layer.out_features,)]
        for head in self.head:
            expected += [(head.in_features, head.out_features) if isinstance(head, torch.nn.Linear)
                         else (1, 1, head.in_channels, head.out_channels), (head.out_features if isinstance(head, torch.nn.Linear) else head.out_channels,)]
        if not isinstance(arrays, (list, tuple)) or len(arrays) != len(expected):
            raise MTCNNWeightsError(f"{path}: expected {len(expected)} arrays, found "
                                    f"{len(arrays) if isinstance(arrays, (list, tuple)) else type(arrays).__name__}")
        for n, (array, shape) in enumerate(zip(arrays, expected)):
            if tuple(np.shape(array)) != shape:
                raise MTCNNWeightsError(f"{path}: array {n} has shape {tuple(np.shape(array))}, expected {shape}")
        it = iter(np.asarray(a, dtype=np.float32) for a in arrays)
        with torch.no_grad():
            for conv, slope in zip(self.conv, self.prelu):
                conv.weight.copy_(torch.from_numpy(next(it).transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(next(it)))
                slope.copy_(torch.from_numpy(next(it).reshape(-1)))
            for layer, slope in zip(self.fc, self.fc_prelu):
                layer.weight.copy_(torch.from_numpy(next(it).T.copy()))
                layer.bias.copy_(torch.from_numpy(next(it)))
                slope.copy_(torch.from_numpy(next(it)))
            for head in self.head:
                w = next(it)
                head.weight.copy_(torch.from_numpy(w.T.copy() if w.ndim == 2 else w.transpose(3, 2, 0, 1).copy()))
                head.bias.copy_(torch.from_numpy(next(it)))

    @staticmethod
    def _prelu(x, slope):
        return F.prelu(x, slope)


class PNet(_Net):
    """Proposal net, fully convolutional: (B, 3, H, W) -> box offsets (B, 4, h, w), face probability (B, h, w)."""

    convs = ((10, 3), (16, 3), (32, 3))

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.ModuleList()
        self.fc_prelu = torch.nn.ParameterList()
        self.head = torch.nn.ModuleList([torch.nn.Conv2d(32, 4, 1), torch.nn.Conv2d(32, 2, 1)])

    def forward(self, x):
        x = F.prelu(self.conv[0](x), self.prelu[0])
        x = _same_pool(x, 2, 2)
        x = F.prelu(self.conv[1](x), self.prelu[1])
        x = F.prelu(self.conv[2](x), self.prelu[2])
        return self.head[0](x), torch.softmax(self.head[1](x), dim=1)[:, 1]


class RNet(_Net):
    """Refinement net: (B, 3, 24, 24) -> box offsets (B, 4), face probability (B,)."""

    convs = ((28, 3), (48, 3), (64, 2))

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.ModuleList([torch.nn.Linear(576, 128)])
        self.fc_prelu = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(128))])
        self.head = torch.nn.ModuleList([torch.nn.Linear(128, 4), torch.nn.Linear(128, 2)])

    def forward(self, x):
        x = _same_pool(F.prelu(self.conv[0](x), self.prelu[0]), 3, 2)
        x = F.max_pool2d(F.prelu(self.conv[1](x), self.prelu[1]), 3, 2)
        x = F.prelu(self.conv[2](x), self.prelu[2])
        x = F.prelu(self.fc[0](x.permute(0, 3, 2, 1).flatten(1)), self.fc_prelu[0])
        return self.head[0](x), torch.softmax(self.head[1](x), dim=1)[:, 1]


class ONet(_Net):
    """Output net: (B, 3, 48, 48) -> box offsets (B, 4), landmarks (B, 10: 5 x then 5 y, in box units), probability (B,)."""

    convs = ((32, 3), (64, 3), (64, 3), (128, 2))

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.ModuleList([torch.nn.Linear(1152, 256)])
        self.fc_prelu = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(256))])
        self.head = torch.nn.ModuleList([torch.nn.Linear(256, 4), torch.nn.Linear(256, 10), torch.nn.Linear(256, 2)])

    def forward(self, x):
        x = _same_pool(F.prelu(self.conv[0](x), self.prelu[0]), 3, 2)
        x = F.max_pool2d(F.prelu(self.conv[1](x), self.prelu[1]), 3, 2)
        x = _same_pool(F.prelu(self.conv[2](x), self.prelu[2]), 2, 2)
        x = F.prelu(self.conv[3](x), self.prelu[3])
        x = F.prelu(self.fc[0](x.permute(0, 3, 2, 1).flatten(1)), self.fc_prelu[0])
        return self.head[0](x), self.head[1](x), torch.softmax(self.head[2](x), dim=1)[:, 1]


def load_arrays(path: Path) -> list[np.ndarray]:
    import joblib

    if not path.is_file():
        raise MTCNNWeightsError(f"{path}: MTCNN weight file not found (pip install mtcnn==1.0.0)")
    try:
        return joblib.load(path)
    except Exception as exc:
        raise MTCNNWeightsError(f"{path}: unreadable MTCNN weight file ({type(exc).__name__}: {exc})") from None


def load_nets(weights_dir: str | Path | None = None) -> tuple[PNet, RNet, ONet]:
    folder = Path(weights_dir) if weights_dir is not None else mtcnn_weights_dir()
    nets = []
    for name, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        net = cls()
        path = folder / f"{name}.lz4"
        net.load_arrays(load_arrays(path), path)
        nets.append(net.eval().requires_grad_(False))
    return tuple(nets)


# --------------------------------------------------------------------------------------------
# The cascade
# --------------------------------------------------------------------------------------------


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy NMS, best first. ``union``: IoU (torchvision's area convention, as facenet-pytorch's first two
    stages); ``min``: intersection over the smaller box with +1 pixel areas (its last stage)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    plus = 1.0 if method == "min" else 0.0
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x1 - x0 + plus) * (y1 - y0 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + plus, 0, None)
        h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + plus, 0, None)
        inter = w * h
        overlap = inter / np.minimum(area[i], area[rest]) if method == "min" else inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, offsets: np.ndarray, plus: float) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + plus
    h = boxes[:, 3] - boxes[:, 1] + plus
    return boxes[:, :4] + offsets * np.stack([w, h, w, h], axis=1)


def _square(boxes: np.ndarray) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x0 = boxes[:, 0] + w * 0.5 - side * 0.5
    y0 = boxes[:, 1] + h * 0.5 - side * 0.5
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def scales(height: int, width: int, min_face: int = MIN_FACE, factor: float = FACTOR) -> list[float]:
    m = 12.0 / min_face
    side = min(height, width) * m
    out = []
    while side >= 12:
        out.append(m * factor ** len(out))
        side *= factor
    return out


class MTCNN:
    """The three nets + cascade. ``detect(image)`` -> (boxes (N, 4) x0 y0 x1 y1, scores (N,), points (N, 5, 2))."""

    def __init__(self, weights_dir: str | Path | None = None, *, min_face: int = MIN_FACE, thresholds=THRESHOLDS,
                 factor: float = FACTOR, device=None):
        self.pnet, self.rnet, self.onet = (n.to(device or "cpu") for n in load_nets(weights_dir))
        self.device = torch.device(device or "cpu")
        self.min_face, self.thresholds, self.factor = int(min_face), tuple(thresholds), float(factor)

    def _crops(self, image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
        """Each box clipped to the image (facenet-pytorch's pad()), area-resampled to size x size, normalised."""
        h, w = image.shape[-2:]
        b = np.trunc(boxes).astype(np.int64)
        x0, y0 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
        x1, y1 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
        crops = []
        for i in range(len(b)):
            patch = image[:, :, y0[i] - 1 : max(y1[i], y0[i]), x0[i] - 1 : max(x1[i], x0[i])]
            if patch.shape[-1] == 0 or patch.shape[-2] == 0:
                patch = image[:, :, :1, :1]
            crops.append(F.interpolate(patch, size=(size, size), mode="area"))
        return (torch.cat(crops) - 127.5) * 0.0078125

    @torch.no_grad()
    def detect(self, image: np.ndarray):
        """Faces in an HxWx3 uint8 RGB array, best score first."""
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        h, w = image.shape[:2]
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).to(self.device).permute(2, 0, 1)[None].float()
        found = []
        for scale in scales(h, w, self.min_face, self.factor):
            level = F.interpolate(x, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            offsets, prob = self.pnet((level - 127.5) * 0.0078125)
            prob, offsets = prob[0].cpu().numpy(), offsets[0].cpu().numpy()
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if not len(ys):
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float64)
            q1, q2 = np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale)
            boxes = np.hstack([q1, q2])
            score = prob[ys, xs].astype(np.float64)
            reg = offsets[:, ys, xs].T.astype(np.float64)
            keep = nms(boxes, score, 0.5)
            found.append(np.hstack([boxes[keep], score[keep, None], reg[keep]]))
        if not found:
            return empty
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        boxes = _square(_regress(cand[:, :4], cand[:, 5:9], 0.0))

        offsets, prob = self.rnet(self._crops(x, boxes, 24))
        prob, offsets = prob.cpu().numpy().astype(np.float64), offsets.cpu().numpy().astype(np.float64)
        ok = prob > self.thresholds[1]
        boxes, score, offsets = boxes[ok], prob[ok], offsets[ok]
        keep = nms(boxes, score, 0.7)
        if not len(keep):
            return empty
        boxes = _square(_regress(boxes[keep], offsets[keep], 1.0))

        offsets, marks, prob = self.onet(self._crops(x, boxes, 48))
        prob = prob.cpu().numpy().astype(np.float64)
        offsets, marks = offsets.cpu().numpy().astype(np.float64), marks.cpu().numpy().astype(np.float64)
        ok = prob > self.thresholds[2]
        boxes, score, offsets, marks = boxes[ok], prob[ok], offsets[ok], marks[ok]
        if not len(boxes):
            return empty
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        points = np.stack([bw[:, None] * marks[:, :5] + boxes[:, :1] - 1, bh[:, None] * marks[:, 5:] + boxes[:, 1:2] - 1], -1)
        boxes = _regress(boxes, offsets, 1.0)
        keep = nms(boxes, score, 0.7, "min")
        return boxes[keep].astype(np.float32), score[keep].astype(np.float32), points[keep].astype(np.float32)
