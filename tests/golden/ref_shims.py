"""Stand-ins for the packages the reference repositories import but the golden runs do not execute
(side environment only; never imported by likeness or its tests).

Installed into ``sys.modules`` before the reference code is imported:

- ``torchvision``: the two calls the references run on tensors are real here, with torchvision 0.15's
  semantics (PuLID pins 0.15.2): ``transforms.functional.resize`` (bicubic, ``align_corners=False``, and
  no antialiasing, 0.15's default for tensors; a square input, so the int size is both edges) and
  ``normalize`` (``(x - mean) / std`` per channel). Every other torchvision name is a placeholder that
  fails if called (the transform pipelines EVA-CLIP builds but PuLID never uses, ``make_grid``,
  ``FrozenBatchNorm2d``). torchvision from PyPI would pull a CUDA torch of several GB.
- ``timm``: ``trunc_normal_`` (initialisation only; the weights are replaced), ``to_2tuple``, ``drop_path``
  (the identity in eval mode, which every golden run is in).
- ``insightface``, ``facexlib``, ``basicsr``, ``torchsde``, ``cv2``: modules whose names exist; the face
  detector, parser and aligner are replaced by fixed inputs in each script (there are no weights for them
  offline). ``cv2.cvtColor`` swaps the channel order (RGB <-> BGR), which is all PuLID uses it for; the
  InstantID script uses the real OpenCV (opencv-python-headless 4.10.0.84) for the published ``draw_kps``.
"""

from __future__ import annotations

import enum
import importlib.machinery
import sys
import types

import torch
import torch.nn.functional as F


class _Placeholder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        raise RuntimeError("a torchvision/timm placeholder was called: the golden run took a path it should not")


def _placeholder(attr: str):
    if attr.startswith("_"):
        raise AttributeError(attr)
    return type(attr, (_Placeholder,), {})


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    module.__getattr__ = _placeholder  # any other public name: a placeholder class
    sys.modules[name] = module
    return module


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def resize(img, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=None):
    """torchvision 0.15 ``F.resize`` on a float tensor: no antialias unless asked (its default for tensors)."""
    if isinstance(size, int):
        height, width = img.shape[-2:]
        if height != width:
            raise ValueError("the shim handles square images only")
        size = [size, size]
    mode = interpolation.value if isinstance(interpolation, InterpolationMode) else str(interpolation)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    antialias = bool(antialias) if antialias not in (None, "warn") else False
    return F.interpolate(img, size=list(size), mode=mode, antialias=antialias, **kwargs)


def normalize(tensor, mean, std, inplace=False):
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub(mean).div(std)


def _to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _drop_path(x, drop_prob: float = 0.0, training: bool = False):
    if training and drop_prob > 0:
        raise RuntimeError("drop_path in training mode is not part of the golden runs")
    return x


def _cvt_color(image, code):
    return image[..., ::-1].copy()


def install(real: tuple[str, ...] = ()) -> None:
    """Call after importing diffusers and transformers (their availability checks must not see the shims).
    ``real``: names to leave to the installed package (InstantID's keypoint drawing uses the real ``cv2``)."""
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    functional = _module("torchvision.transforms.functional", resize=resize, normalize=normalize,
                         InterpolationMode=InterpolationMode)
    transforms = _module("torchvision.transforms", functional=functional, InterpolationMode=InterpolationMode)
    utils = _module("torchvision.utils")
    ops_misc = _module("torchvision.ops.misc")
    ops = _module("torchvision.ops", misc=ops_misc)
    _module("torchvision", transforms=transforms, utils=utils, ops=ops, __version__="0.15.2-shim")
    layers = _module("timm.models.layers", trunc_normal_=torch.nn.init.trunc_normal_, to_2tuple=_to_2tuple,
                     drop_path=_drop_path)
    _module("timm.layers", trunc_normal_=torch.nn.init.trunc_normal_, to_2tuple=_to_2tuple, drop_path=_drop_path)
    _module("timm.models", layers=layers)
    _module("timm.loss")
    _module("timm", models=sys.modules["timm.models"], loss=sys.modules["timm.loss"])
    for name in ("insightface", "insightface.app", "insightface.data", "insightface.utils", "facexlib", "facexlib.parsing",
                 "facexlib.utils", "facexlib.utils.face_restoration_helper", "basicsr", "basicsr.utils", "torchsde"):
        _module(name)
    if "cv2" not in real:
        _module("cv2", cvtColor=_cvt_color, COLOR_RGB2BGR=4, COLOR_BGR2RGB=4)
