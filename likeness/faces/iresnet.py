"""ArcFace recognisers in torch from weights the user supplies: differentiable, batched, on any device.

Two sources, both of them the user's (the public InsightFace weights are non-commercial):

- a ``.pth`` state dict of InsightFace's ``arcface_torch`` iresnet (iresnet18/34/50/100/200), read with
  ``torch.load(weights_only=True)`` (no code runs); the depth is read from the keys, every tensor's shape
  is checked against the network it implies;
- an InsightFace recogniser ``.onnx`` (e.g. ``w600k_r50.onnx``): its initializers and graph run in torch by
  a small interpreter of the operators such exports use (Conv, BatchNormalization, PRelu, Add, Gemm,
  Flatten/Reshape and the shape arithmetic around them). An operator outside that set is an error naming
  the file and the operator, never a silent skip.

Both take ``(B, 3, 112, 112)`` RGB in 0..255, aligned on the ArcFace template (the ``arcface`` backend's
alignment), normalise with ``(x - 127.5) / 127.5`` and return the raw embedding.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEPTHS = {(2, 2, 2, 2): "r18", (3, 4, 6, 3): "r34", (3, 4, 14, 3): "r50", (3, 13, 30, 3): "r100", (6, 26, 60, 6): "r200"}


class ArcFaceWeightsError(ValueError):
    """User-supplied ArcFace weights that are missing, unreadable, of the wrong shape or unsupported."""


class IBasicBlock(torch.nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = torch.nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = torch.nn.PReLU(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(torch.nn.Module):
    """arcface_torch's iresnet (same parameter names, so its state dicts load strictly)."""

    def __init__(self, layers=(3, 4, 14, 3), embedding: int = 512, widths=(64, 128, 256, 512)):
        super().__init__()
        self.arch = DEPTHS.get(tuple(layers), "r" + "-".join(map(str, layers)))
        self.conv1 = torch.nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = torch.nn.PReLU(widths[0])
        inplanes = widths[0]
        for index, (count, planes) in enumerate(zip(layers, widths), start=1):
            blocks = [IBasicBlock(inplanes if i == 0 else planes, planes, 2 if i == 0 else 1) for i in range(count)]
            setattr(self, f"layer{index}", torch.nn.Sequential(*blocks))
            inplanes = planes
        self.bn2 = torch.nn.BatchNorm2d(widths[-1], eps=1e-5)
        self.dropout = torch.nn.Dropout(0.0)
        self.fc = torch.nn.Linear(widths[-1] * 7 * 7, embedding)
        self.features = torch.nn.BatchNorm1d(embedding, eps=1e-5)

    def forward(self, x):
        x = (x - 127.5) / 127.5
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x).flatten(1))
        return self.features(self.fc(x))


# --------------------------------------------------------------------------------------------
# ONNX graphs in torch
# --------------------------------------------------------------------------------------------


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class OnnxRecogniser(torch.nn.Module):
    """An ONNX recogniser's graph executed in torch with its initializers as (frozen) buffers."""

    SUPPORTED = {"Conv", "BatchNormalization", "PRelu", "Add", "Sub", "Mul", "Div", "Relu", "Flatten", "Reshape",
                 "Gemm", "MatMul", "Identity", "Dropout", "Constant", "Shape", "Gather", "Unsqueeze", "Concat",
                 "AveragePool", "GlobalAveragePool"}

    def __init__(self, path: Path):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise ArcFaceWeightsError(f"{path}: unreadable ONNX file ({type(exc).__name__}: {exc})") from None
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node} - self.SUPPORTED)
        if unsupported:
            raise ArcFaceWeightsError(f"{path}: ONNX operators {', '.join(unsupported)} are not supported by the torch "
                                      "port (InsightFace recognisers use Conv/BatchNormalization/PRelu/Add/Gemm)")
        self._names = {}
        for i, init in enumerate(graph.initializer):
            array = numpy_helper.to_array(init)
            tensor = torch.from_numpy(np.array(array, dtype=np.float32 if array.dtype.kind == "f" else np.int64))
            self.register_buffer(f"w{i}", tensor)
            self._names[init.name] = f"w{i}"
        initialised = set(self._names)
        inputs = [i for i in graph.input if i.name not in initialised]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ArcFaceWeightsError(f"{path}: expected one image input and one embedding output")
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or dims[1] != 3 or dims[2:] != [112, 112]:
            raise ArcFaceWeightsError(f"{path}: input shape {dims} is not N x 3 x 112 x 112 (an ArcFace recogniser)")
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]
        self.path = path
        dim = graph.output[0].type.tensor_type.shape.dim
        self.embedding_dim = int(dim[-1].dim_value) if dim else 0

    def forward(self, x):
        values = {name: getattr(self, buffer) for name, buffer in self._names.items()}
        values[self.input_name] = (x - 127.5) / 127.5
        for op, ins, outs, a in self.nodes:
            args = [values[i] if i else None for i in ins]
            values[outs[0]] = self._run(op, args, a)
        return values[self.output_name]

    @staticmethod
    def _run(op, args, a):
        if op == "Conv":
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else None
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:]:
                x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
                pads = [0, 0]
            return F.conv2d(x, w, bias, stride=tuple(a.get("strides", [1, 1])), padding=tuple(pads[:2]),
                            dilation=tuple(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)))
        if op == "BatchNormalization":
            x, scale, bias, mean, var = args[:5]
            return F.batch_norm(x, mean, var, scale, bias, training=False, eps=float(a.get("epsilon", 1e-5)))
        if op == "PRelu":
            return torch.where(args[0] >= 0, args[0], args[0] * args[1])
        if op in ("Add", "Sub", "Mul", "Div"):
            return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](args[0], args[1])
        if op == "Relu":
            return F.relu(args[0])
        if op == "AveragePool":
            x, pads = args[0], list(a.get("pads", [0, 0, 0, 0]))
            include = bool(a.get("count_include_pad", 0))
            if pads[:2] != pads[2:]:  # torch pads symmetrically; ONNX may not
                if not include:
                    raise ArcFaceWeightsError("AveragePool with uneven padding left out of the count is not supported")
                x, pads = F.pad(x, (pads[1], pads[3], pads[0], pads[2])), [0, 0]
            return F.avg_pool2d(x, tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1])), tuple(pads[:2]),
                                ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=include)
        if op == "GlobalAveragePool":
            return args[0].mean(dim=(2, 3), keepdim=True)
        if op == "Flatten":
            return args[0].flatten(int(a.get("axis", 1)))
        if op == "Reshape":
            shape = [int(v) for v in args[1].tolist()]
            shape = [args[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
            return args[0].reshape(shape)
        if op == "Gemm":
            x, w = args[0], args[1]
            x = x.T if a.get("transA", 0) else x
            w = w.T if a.get("transB", 0) else w
            out = float(a.get("alpha", 1.0)) * (x @ w)
            return out + float(a.get("beta", 1.0)) * args[2] if len(args) > 2 and args[2] is not None else out
        if op == "MatMul":
            return args[0] @ args[1]
        if op in ("Identity", "Dropout"):
            return args[0]
        if op == "Constant":
            from onnx import numpy_helper

            return torch.from_numpy(np.array(numpy_helper.to_array(a["value"])))
        if op == "Shape":
            return torch.tensor(args[0].shape, dtype=torch.int64)
        if op == "Gather":
            return torch.index_select(args[0], int(a.get("axis", 0)), args[1].reshape(-1).long()).reshape(
                args[1].shape if args[1].ndim else ())
        if op == "Unsqueeze":
            axes = a.get("axes") if "axes" in a else args[1].tolist()
            out = args[0]
            for axis in sorted(int(v) for v in axes):
                out = out.unsqueeze(axis)
            return out
        if op == "Concat":
            return torch.cat([t.reshape(-1) if t.ndim == 0 else t for t in args], dim=int(a.get("axis", 0)))
        raise ArcFaceWeightsError(f"unsupported ONNX operator {op}")


def _layers_from_keys(keys) -> tuple[int, ...]:
    counts = []
    for layer in range(1, 5):
        blocks = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        counts.append(max(blocks) + 1 if blocks else 0)
    return tuple(counts)


def load_iresnet(weights: str | Path, arch: str | None = None) -> torch.nn.Module:
    """A frozen, eval-mode ArcFace recogniser from an InsightFace ``.onnx`` or an arcface_torch ``.pth``."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ArcFace weights not found (an InsightFace recogniser .onnx or arcface_torch .pth)")
    if path.suffix.lower() == ".onnx":
        net = OnnxRecogniser(path)
        net.arch = arch or path.stem
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ArcFaceWeightsError(f"{path}: not a readable torch state dict ({type(exc).__name__}: {exc})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ArcFaceWeightsError(f"{path}: not a state dict ({type(state).__name__})")
        state = {str(k).removeprefix("module."): v for k, v in state.items()}
        if "fc.weight" not in state:
            raise ArcFaceWeightsError(f"{path}: not an arcface_torch iresnet state dict (no fc.weight)")
        layers = _layers_from_keys(state)
        if 0 in layers:
            raise ArcFaceWeightsError(f"{path}: iresnet blocks missing (blocks per stage {layers})")
        if arch is not None and DEPTHS.get(layers) != arch:
            raise ArcFaceWeightsError(f"{path}: holds an iresnet with blocks {layers} ({DEPTHS.get(layers, '?')}), not {arch}")
        widths = tuple(int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
        net = IResNet(layers, embedding=int(state["fc.weight"].shape[0]), widths=widths)
        expected = net.state_dict()
        problems = [f"{k}: {tuple(v.shape)} instead of {tuple(expected[k].shape)}" for k, v in state.items()
                    if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if problems or missing or unexpected:
            detail = "; ".join(problems[:3] + [f"missing {', '.join(missing[:3])}"] * bool(missing)
                               + [f"unexpected {', '.join(unexpected[:3])}"] * bool(unexpected))
            raise ArcFaceWeightsError(f"{path}: weights do not fit the iresnet {net.arch}: {detail}")
        net.load_state_dict(state, strict=True)
        net.embedding_dim = int(state["fc.weight"].shape[0])
    return net.eval().requires_grad_(False)
