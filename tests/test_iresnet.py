"""ArcFace recognisers in torch from user weights: ONNX graphs equal onnxruntime, .pth state dicts load strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from likeness.faces.iresnet import ArcFaceWeightsError, IResNet, load_iresnet

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_onnx(path, embedding=8):
    """An iresnet-shaped recogniser as InsightFace exports them: conv (BN folded) + PRelu, a pre-activation
    BatchNormalization residual block with a strided 1x1 shortcut, BN, Flatten via Shape/Reshape, Gemm, BN."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3, positive=False):
        array = rng.normal(0, scale, shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(array) + 0.5 if positive else array, name)

    c, d = 4, 6
    inits = [init("c1w", c, 3, 3, 3), init("c1b", c), init("p1", c, 1, 1, scale=0.2),
             init("bn_s", c, positive=True), init("bn_b", c), init("bn_m", c), init("bn_v", c, positive=True),
             init("c2w", d, c, 3, 3), init("c2b", d), init("p2", d, 1, 1), init("c3w", d, d, 3, 3), init("c3b", d),
             init("dsw", d, c, 1, 1), init("dsb", d),
             init("fcw", embedding, d * 7 * 7, scale=0.05), init("fcb", embedding),
             init("f_s", embedding, positive=True), init("f_b", embedding), init("f_m", embedding),
             init("f_v", embedding, positive=True),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one")]
    nodes = [
        helper.make_node("Conv", ["input", "c1w", "c1b"], ["x1"], pads=[1, 1, 1, 1], strides=[4, 4]),
        helper.make_node("PRelu", ["x1", "p1"], ["x2"]),
        helper.make_node("BatchNormalization", ["x2", "bn_s", "bn_b", "bn_m", "bn_v"], ["x3"], epsilon=1e-5),
        helper.make_node("Conv", ["x3", "c2w", "c2b"], ["x4"], pads=[1, 1, 1, 1]),
        helper.make_node("PRelu", ["x4", "p2"], ["x5"]),
        helper.make_node("Conv", ["x5", "c3w", "c3b"], ["x6"], pads=[1, 1, 1, 1], strides=[4, 4]),
        helper.make_node("Conv", ["x2", "dsw", "dsb"], ["x7"], strides=[4, 4]),
        helper.make_node("Add", ["x6", "x7"], ["x8"]),
        helper.make_node("Shape", ["x8"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "minus_one"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["x8", "newshape"], ["x9"]),
        helper.make_node("Gemm", ["x9", "fcw", "fcb"], ["x10"], transB=1),
        helper.make_node("BatchNormalization", ["x10", "f_s", "f_b", "f_m", "f_v"], ["embedding"], epsilon=1e-5),
    ]
    graph = helper.make_graph(nodes, "tiny-arcface", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", embedding])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_recogniser_equals_onnxruntime(tmp_path):
    import onnxruntime as ort

    path = _tiny_onnx(tmp_path / "tiny_r.onnx")
    net = load_iresnet(path)
    x = np.random.default_rng(1).uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": ((x - 127.5) / 127.5).astype(np.float32)})[0]
    with torch.no_grad():
        ours = net(torch.from_numpy(x)).numpy()
    assert ours.shape == (3, 8) and np.abs(ours - expected).max() < 1e-4


def test_arcface_identity_loss_on_onnx_weights_is_differentiable(tmp_path):
    from likeness.faces.identity_loss import build_identity_loss

    loss = build_identity_loss("arcface", weights=_tiny_onnx(tmp_path / "tiny_r.onnx"))
    image = torch.zeros(1, 3, 128, 128, requires_grad=True)
    points = torch.tensor([[[44.0, 55], [84, 55], [64, 75], [48, 96], [80, 96]]])
    value = loss(image, points, torch.ones(8))
    value.sum().backward()
    assert value.shape == (1,) and float(image.grad.abs().sum()) > 0


def test_pth_state_dict_loads_strictly(tmp_path):
    torch.manual_seed(0)
    net = IResNet(layers=(1, 1, 1, 1), embedding=16, widths=(8, 8, 16, 16)).eval()
    for module in net.modules():  # non-trivial batch-norm statistics, so a wrong mapping shows
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # as DataParallel saves it
    loaded = load_iresnet(path)
    x = torch.rand(2, 3, 112, 112) * 255
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert loaded.arch == "r1-1-1-1"
    with pytest.raises(ArcFaceWeightsError, match="not r50"):
        load_iresnet(path, arch="r50")


def test_bad_arcface_weights_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.onnx"):
        load_iresnet(tmp_path / "nothing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ArcFaceWeightsError, match="corrupt.onnx"):
        load_iresnet(corrupt)
    net = IResNet(layers=(1, 1, 1, 1), embedding=16, widths=(8, 8, 16, 16))
    state = net.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(8, 8, 5, 5)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ArcFaceWeightsError, match=r"wrong.pth.*layer2.0.conv1.weight: \(8, 8, 5, 5\)"):
        load_iresnet(tmp_path / "wrong.pth")
    (tmp_path / "pickle.pth").write_bytes(b"not a torch file")
    with pytest.raises(ArcFaceWeightsError, match="pickle.pth"):
        load_iresnet(tmp_path / "pickle.pth")
