"""Foreground (salient-object) extraction for concept images, behind one backend interface.

Gen4Gen (arXiv 2402.15504) cuts each concept out of its photo with a salient-object segmenter
(DIS IS-Net) before pasting it on a new canvas. Here a :class:`SalientBackend` turns an RGB image into
a soft mask in [0, 1]; these backends exist:

- ``auto`` (the default): ``alpha`` when the photo has an alpha channel, else ``grabcut``;
- ``alpha``: the image's own alpha channel (product shots and stickers already carry one);
- ``grabcut``: classical GrabCut (:mod:`likeness.segmentation.grabcut`), no weights: ordinary photos, offline;
- ``onnx``: an IS-Net / BiRefNet-style ONNX file (one NCHW float input at a fixed size, first output
  the saliency map, logits or probabilities) run with onnxruntime;
- ``transformers``: a segmentation model by hub id or local folder (``AutoModelForSemanticSegmentation``
  or, for remote-code models such as BiRefNet, ``AutoModelForImageSegmentation``), its image processor
  when the folder has one.

:func:`extract_foreground` adds what the paper's pipeline needs around a backend: *repeat and
refine* (segment, crop to the found object with a margin, segment the crop again, until two passes
agree), and a :class:`MaskQuality` record per concept image (coverage, confidence, fragments,
agreement between passes), so weak cut-outs can be reviewed or dropped. No foreground, a mask
covering the whole photo, and unreadable files raise :class:`ForegroundError` with a status.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ForegroundError(ValueError):
    """No usable foreground in a concept image. ``status``: no_foreground | whole_image | unreadable | no_alpha."""

    def __init__(self, source, problem: str, status: str):
        self.source = str(source)
        self.problem = problem
        self.status = status
        super().__init__(f"{source}: {problem}")


@dataclass
class MaskQuality:
    """How trustworthy one cut-out is (all in [0, 1] except ``fragments`` and ``passes``).

    - ``coverage``: foreground fraction of the photo;
    - ``confidence``: mean of ``|2m - 1|`` over the photo (1 = a hard, decided mask; 0 = all 0.5);
    - ``largest_fraction``: share of the foreground in its largest connected piece;
    - ``fragments``: connected foreground pieces (above 0.5% of the foreground);
    - ``agreement``: IoU of the last two refine passes (1.0 with a single pass);
    - ``score``: confidence x largest_fraction x agreement, one number to sort a review by.
    """

    coverage: float
    confidence: float
    largest_fraction: float
    fragments: int
    agreement: float
    passes: int
    score: float = 0.0

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Foreground:
    """A cut-out concept: RGBA crop tight around the object, its mask, and where it came from."""

    image: Image.Image  # RGBA, alpha = mask, cropped to the mask's bounding box
    mask: np.ndarray  # float32 HxW in [0, 1], same crop
    box: tuple[int, int, int, int]  # crop box in the source photo (x0, y0, x1, y1)
    quality: MaskQuality
    source: str = ""
    backend: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def aspect(self) -> float:
        """Width / height of the cut-out (what layout must keep)."""
        return self.image.width / self.image.height


class SalientBackend:
    """Interface: ``predict(rgb)`` returns a float32 HxW mask in [0, 1] at the image's size."""

    name = "base"

    def predict(self, image: Image.Image) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class AlphaBackend(SalientBackend):
    """The photo's own transparency. Needs the original RGBA image (see :func:`extract_foreground`)."""

    name = "alpha"

    def predict(self, image: Image.Image) -> np.ndarray:
        if not has_alpha(image):
            raise ForegroundError(getattr(image, "filename", "image"), "image has no alpha channel; use "
                                  "--segmenter auto or grabcut (or an onnx / transformers model) for opaque photos",
                                  "no_alpha")
        return np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)


class GrabCutBackend(SalientBackend):
    """Classical foreground extraction for ordinary photos, no model weights: GrabCut (colour mixtures + a
    minimum graph cut, :mod:`likeness.segmentation.grabcut`) with a thin border strip as known background."""

    name = "grabcut"
    # Repeat-and-refine re-segments a crop tight around the object, whose border strip is then the object
    # itself: that breaks GrabCut's one assumption, so it runs once on the whole photo.
    refinable = False

    def __init__(self, *, border: float = 0.04, work_size: int = 128, iterations: int = 4):
        self.options = {"border": border, "work_size": work_size, "iterations": iterations}

    def predict(self, image: Image.Image) -> np.ndarray:
        from likeness.segmentation.grabcut import grabcut

        return grabcut(image, **self.options)


class AutoBackend(SalientBackend):
    """The photo's own alpha channel when it has one, else :class:`GrabCutBackend` (the default: runs offline on
    product shots with transparency and on ordinary JPEGs alike). Each cut-out records which one made it."""

    name = "auto"

    def __init__(self, opaque: SalientBackend | None = None):
        self.alpha, self.opaque = AlphaBackend(), opaque or GrabCutBackend()

    def describe(self) -> str:
        return f"auto(alpha|{self.opaque.describe()})"

    def choose(self, image: Image.Image) -> SalientBackend:
        return self.alpha if has_alpha(image) else self.opaque

    def predict(self, image: Image.Image) -> np.ndarray:
        return self.choose(image).predict(image)


def _normalise(image: Image.Image, size: tuple[int, int], mean, std) -> np.ndarray:
    """1x3xHxW float32: resized (bilinear), scaled to [0, 1], then (x - mean) / std."""
    arr = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def _to_probability(pred: np.ndarray) -> np.ndarray:
    """A saliency map as probabilities: logits go through a sigmoid; maps already in [0, 1] stay."""
    pred = np.asarray(pred, dtype=np.float32)
    if pred.min() < 0.0 or pred.max() > 1.0:
        pred = 1.0 / (1.0 + np.exp(-np.clip(pred, -60, 60)))
    return pred


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.asarray(mask, dtype=np.float32), mode="F")
    return np.clip(np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32), 0.0, 1.0)


class OnnxBackend(SalientBackend):
    """An IS-Net / BiRefNet-style ONNX model.

    IS-Net (DIS) takes 1024x1024 with mean 0.5 / std 1.0 (``normalization="isnet"``), BiRefNet takes
    ImageNet statistics (``"imagenet"``). The input size is read from the model when fixed.
    """

    name = "onnx"

    def __init__(self, path: str | Path, *, normalization: str = "isnet", size: int | None = None, providers=None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX segmentation model not found")
        if normalization not in ("isnet", "imagenet"):
            raise ValueError(f"normalization must be 'isnet' or 'imagenet', not {normalization!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        h, w = inp.shape[2], inp.shape[3]
        fixed = isinstance(h, int) and isinstance(w, int)
        self.size = (size, size) if size else ((w, h) if fixed else (1024, 1024))
        self.mean, self.std = ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)) if normalization == "isnet" else (IMAGENET_MEAN, IMAGENET_STD)

    def describe(self) -> str:
        return f"onnx:{self.path.name}"

    def predict(self, image: Image.Image) -> np.ndarray:
        out = self.session.run(None, {self.input_name: _normalise(image, self.size, self.mean, self.std)})[0]
        pred = _to_probability(np.asarray(out).reshape(out.shape[-2], out.shape[-1]))
        lo, hi = float(pred.min()), float(pred.max())
        if hi - lo > 0.5:  # IS-Net's own post-processing: stretch a decided map to the full range
            pred = (pred - lo) / (hi - lo)
        return _resize_mask(pred, image.size)


class TransformersBackend(SalientBackend):
    """A transformers segmentation model by hub id or local folder.

    Semantic-segmentation heads (``logits`` B x C x h x w): one channel is a saliency logit; with
    several channels, ``foreground_label`` (default 1) is the object class after a softmax. Models whose
    forward returns a list of maps (BiRefNet-style exports) use the last, finest map. Models that need their
    own remote code are refused (likeness never sets ``trust_remote_code``; docs/security.md).
    """

    name = "transformers"

    def __init__(self, model_id: str | Path, *, foreground_label: int = 1, size: int | None = None,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForImageSegmentation, AutoModelForSemanticSegmentation

        self.model_id = str(model_id)
        self.foreground_label = foreground_label
        self.device = torch.device(device or "cpu")
        from likeness.models.pretrained import ModelUnavailableError, load_pretrained

        errors = []
        self.model = None
        for auto in (AutoModelForSemanticSegmentation, AutoModelForImageSegmentation):
            try:  # never run a model's own code (trust_remote_code stays off)
                self.model = load_pretrained(auto, self.model_id, what="segmentation model", device=self.device,
                                             trust_remote_code=False)
                break
            except ModelUnavailableError as exc:
                errors.append(f"{auto.__name__}: {exc.reason}")
        if self.model is None:
            raise ModelUnavailableError(self.model_id, "; ".join(errors), "segmentation model")
        self.model.eval()
        self.processor = None
        try:
            from transformers import AutoImageProcessor

            self.processor = load_pretrained(AutoImageProcessor, self.model_id, need="preprocessor_config.json")
        except FileNotFoundError:
            self.processor = None  # no preprocessor config: ImageNet statistics at ``size``
        config_size = getattr(self.model.config, "image_size", None)
        side = size or (config_size if isinstance(config_size, int) else 512)
        self.size = (side, side)

    def describe(self) -> str:
        return f"transformers:{self.model_id}"

    def predict(self, image: Image.Image) -> np.ndarray:
        import torch

        rgb = image.convert("RGB")
        if self.processor is not None:
            pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        else:
            pixels = torch.from_numpy(_normalise(rgb, self.size, IMAGENET_MEAN, IMAGENET_STD))
        with torch.no_grad():
            out = self.model(pixel_values=pixels.to(self.device))
        logits = getattr(out, "logits", None)
        if logits is None:  # remote-code models return a tensor or a list of maps, finest last
            logits = out[-1] if isinstance(out, (list, tuple)) else out
            logits = logits[-1] if isinstance(logits, (list, tuple)) else logits
        logits = logits.float().cpu()
        if logits.ndim == 4 and logits.shape[1] > 1:
            pred = torch.softmax(logits, dim=1)[0, self.foreground_label].numpy()
        else:
            pred = torch.sigmoid(logits.reshape(logits.shape[-2], logits.shape[-1])).numpy()
        return _resize_mask(pred, rgb.size)


# Backends that need no file or model id, by name.
SALIENT_BACKENDS = {"auto": AutoBackend, "alpha": AlphaBackend, "grabcut": GrabCutBackend}
DEFAULT_SALIENT = "auto"


def get_salient_backend(spec: str | SalientBackend, **kwargs) -> SalientBackend:
    """``"auto"``, ``"alpha"``, ``"grabcut"``, a ``.onnx`` path (or ``"onnx:PATH"``), or a hub id / folder
    (``"transformers:ID"`` or bare)."""
    if isinstance(spec, SalientBackend):
        return spec
    spec = str(spec)
    if spec in SALIENT_BACKENDS:
        return SALIENT_BACKENDS[spec](**kwargs)
    kind, sep, rest = spec.partition(":")
    if sep and kind == "onnx":
        return OnnxBackend(rest, **kwargs)
    if sep and kind == "transformers":
        return TransformersBackend(rest, **kwargs)
    if spec.lower().endswith(".onnx"):
        return OnnxBackend(spec, **kwargs)
    return TransformersBackend(spec, **kwargs)


# --------------------------------------------------------------------------------------------
# Quality and refinement
# --------------------------------------------------------------------------------------------


def mask_quality(mask: np.ndarray, agreement: float = 1.0, passes: int = 1) -> MaskQuality:
    from scipy import ndimage

    hard = mask > 0.5
    total = int(hard.sum())
    coverage = total / mask.size
    confidence = float(np.mean(np.abs(2.0 * mask - 1.0)))
    if total:
        labels, n = ndimage.label(hard)
        sizes = np.bincount(labels.ravel())[1:]
        largest = float(sizes.max() / total)
        fragments = int((sizes >= max(1, 0.005 * total)).sum())
    else:
        largest, fragments = 0.0, 0
    return MaskQuality(coverage=float(coverage), confidence=confidence, largest_fraction=largest, fragments=fragments,
                       agreement=float(agreement), passes=passes, score=float(confidence * largest * agreement))


def _bbox(hard: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(hard)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def refine(backend: SalientBackend, image: Image.Image, *, passes: int = 3, margin: float = 0.1,
           tolerance: float = 0.98) -> tuple[np.ndarray, float, int]:
    """Repeat and refine: segment the photo, then re-segment a crop around what was found (object
    larger in the model's input, so finer edges), pasting the crop's mask back, until two passes
    agree (IoU >= ``tolerance``) or ``passes`` ran. Returns (mask, last agreement, passes run)."""
    mask = backend.predict(image)
    agreement, done = 1.0, 1
    for _ in range(passes - 1 if getattr(backend, "refinable", True) else 0):
        box = _bbox(mask > 0.5)
        if box is None:
            break
        x0, y0, x1, y1 = box
        mx, my = int((x1 - x0) * margin) + 1, int((y1 - y0) * margin) + 1
        x0, y0, x1, y1 = max(0, x0 - mx), max(0, y0 - my), min(image.width, x1 + mx), min(image.height, y1 + my)
        if (x1 - x0) * (y1 - y0) >= 0.95 * image.width * image.height:
            break  # the crop would be the photo again: nothing to refine
        crop_mask = backend.predict(image.crop((x0, y0, x1, y1)))
        refined = np.zeros_like(mask)
        refined[y0:y1, x0:x1] = crop_mask
        agreement = _iou(mask > 0.5, refined > 0.5)
        mask, done = refined, done + 1
        if agreement >= tolerance:
            break
    return mask, agreement, done


def extract_foreground(source, backend: SalientBackend | str = DEFAULT_SALIENT, *, passes: int = 2,
                       min_coverage: float = 0.005, max_coverage: float = 0.97) -> Foreground:
    """Cut the salient object out of ``source`` (path or PIL image).

    Raises :class:`ForegroundError` (naming the file) when the photo cannot be read, has no
    foreground (coverage below ``min_coverage``) or the "foreground" is the whole photo.
    """
    from likeness.data.images import ImageError, load_image

    backend = get_salient_backend(backend)
    name = str(source) if not isinstance(source, Image.Image) else getattr(source, "filename", "") or "image"
    if isinstance(source, Image.Image):
        original = source
    else:
        try:
            rgb = load_image(source)  # validates (corrupt, truncated, too large) and rotates by EXIF
        except ImageError as exc:
            raise ForegroundError(source, exc.problem, "unreadable") from None
        original = rgb
        if isinstance(backend, (AlphaBackend, AutoBackend)):  # the alpha channel load_image drops
            from PIL import ImageOps

            with Image.open(source) as raw:
                raw.load()
                original = ImageOps.exif_transpose(raw)
    rgb = original.convert("RGB")
    if isinstance(backend, AutoBackend):
        backend = backend.choose(original)
    if isinstance(backend, AlphaBackend):
        try:
            mask = backend.predict(original)
        except ForegroundError as exc:
            raise ForegroundError(name, exc.problem, exc.status) from None
        agreement, done = 1.0, 1
    else:
        mask, agreement, done = refine(backend, rgb, passes=passes)
    quality = mask_quality(mask, agreement, done)
    if quality.coverage < min_coverage:
        raise ForegroundError(name, f"no foreground found by {backend.describe()} (coverage {quality.coverage:.2%})",
                              "no_foreground")
    if quality.coverage > max_coverage:
        raise ForegroundError(name, f"the foreground covers the whole photo ({quality.coverage:.1%}): no object to "
                              "cut out", "whole_image")
    box = _bbox(mask > 0.5)
    x0, y0, x1, y1 = box
    crop_mask = mask[y0:y1, x0:x1].astype(np.float32)
    cut = rgb.crop(box).convert("RGBA")
    cut.putalpha(Image.fromarray((crop_mask * 255 + 0.5).astype(np.uint8), mode="L"))
    notes = []
    if quality.fragments > 1:
        notes.append(f"{name}: mask has {quality.fragments} separate pieces")
    return Foreground(image=cut, mask=crop_mask, box=box, quality=quality, source=name, backend=backend.describe(),
                      notes=notes)


__all__ = ["SalientBackend", "AlphaBackend", "AutoBackend", "GrabCutBackend", "SALIENT_BACKENDS", "OnnxBackend", "TransformersBackend", "Foreground", "ForegroundError",
           "MaskQuality", "extract_foreground", "get_salient_backend", "mask_quality", "refine"]
