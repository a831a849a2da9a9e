"""A tiny IS-Net-shaped saliency model written as ONNX, for offline tests and ``benchmarks/compose.py``
(like the tiny diffusion models in :mod:`likeness.models.tiny`: real format, trivial weights).

With IS-Net normalisation (x - 0.5) white background pixels sum to 1.5 over RGB; the map is
sigmoid(-20 (sum - 1.2)): about 1 on dark objects, 0 on a white background. Needs ``onnx`` (the
``test`` extra) to write the file; :class:`~likeness.segmentation.salient.OnnxBackend` runs it.
"""

from __future__ import annotations

from pathlib import Path


def saliency_onnx(path: str | Path, size: int = 32) -> Path:
    """Write the model (one NCHW float input ``size`` x ``size``, one 1-channel map) to ``path``."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceSum", ["input", "axes"], ["s"], keepdims=1),
        helper.make_node("Sub", ["s", "thr"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["mask"]),
    ]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
             helper.make_tensor("thr", TensorProto.FLOAT, [], [1.2]),
             helper.make_tensor("gain", TensorProto.FLOAT, [], [-20.0])]
    graph = helper.make_graph(nodes, "saliency", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
