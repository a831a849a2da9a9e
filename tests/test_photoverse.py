"""PhotoVerse on tiny models: encoder training, fusion branches, identity-loss gradients, tuning-free
personalization, save/load, the CLI end to end, and bad input."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from likeness.faces.align import similarity_transform, template
from likeness.methods import get_method, load_artifact
from likeness.methods.photoverse import (
    ENCODER_CONFIG,
    IP_ADAPTER_FILE,
    LORA_FILE,
    TEXT_ADAPTER_FILE,
    EncoderWeightsError,
)
from likeness.methods.photoverse_data import encoder_batches, fusion_weights
from likeness.methods.photoverse_modules import cross_attention_layers
from likeness.methods.preparation import NoFaceError


class TinyIdentityLoss(torch.nn.Module):
    """The ``IdentityLoss`` interface (embed / forward, images in [-1, 1]) on a small conv embedder:
    align each face onto the 5-point template with a differentiable ``grid_sample``, embed, 1 - cos."""

    def __init__(self, chip_size: int = 16, dim: int = 8):
        super().__init__()
        torch.manual_seed(3)
        self.chip_size = chip_size
        self.template = torch.tensor(template(chip_size), dtype=torch.float32)
        self.embedder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2),
                                            torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(dim))
        self.embedder(torch.zeros(1, 3, chip_size, chip_size))

    def _chips(self, images, points):
        b, _, h, w = images.shape
        thetas = []
        for p in points.detach().cpu().numpy():
            # chip pixel -> image pixel, then both into grid_sample's [-1, 1] coordinates
            inverse = np.linalg.inv(np.vstack([similarity_transform(p, self.template.numpy()), [0, 0, 1]]))
            to_norm = np.array([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]])
            from_norm = np.array([[self.chip_size / 2, 0, self.chip_size / 2], [0, self.chip_size / 2, self.chip_size / 2],
                                  [0, 0, 1]])
            thetas.append((to_norm @ inverse @ from_norm)[:2])
        theta = torch.tensor(np.stack(thetas), dtype=images.dtype, device=images.device)
        grid = torch.nn.functional.affine_grid(theta, (b, 3, self.chip_size, self.chip_size), align_corners=False)
        return torch.nn.functional.grid_sample(images, grid, align_corners=False)

    def embed(self, images, points):
        return torch.nn.functional.normalize(self.embedder(self._chips(images, points)), dim=-1)

    def forward(self, images, points, reference):
        return 1 - (self.embed(images, points) * reference).sum(-1)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIPVisionModel (6 layers, 32 px, patch 8) saved with save_pretrained."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=6, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def portraits(astronaut_path, tmp_path_factory):
    """A training folder: <person>/<photo>, the astronaut under mirror/crop/colour variations, one
    photo without a face and one unreadable file; a CelebA-style person 'excluded_one' to exclude."""
    root = tmp_path_factory.mktemp("portraits")
    image = Image.open(astronaut_path).convert("RGB")
    variants = {"a/0.jpg": image, "a/1.jpg": ImageOps.mirror(image), "b/0.jpg": image.crop((0, 0, 400, 400)),
                "b/1.jpg": ImageOps.autocontrast(image.crop((20, 0, 512, 450))), "excluded_one/0.jpg": image}
    for name, img in variants.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / name)
    Image.fromarray(np.full((128, 128, 3), 120, np.uint8)).save(root / "b" / "blank.png")
    (root / "b" / "broken.jpg").write_bytes(b"not an image")
    return root


TRAIN = dict(max_steps=6, learning_rate=3e-3, adapter_hidden=16, num_words=5, progress=False, seed=0)


@pytest.fixture(scope="module")
def encoder_dir(tiny_models, tiny_clip, portraits, tmp_path_factory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        method = get_method("photoverse")
        out = method.train_encoder(portraits, tmp_path_factory.mktemp("pv") / "encoder", "likeness/tiny-sd",
                                   image_encoder=str(tiny_clip), identity_loss=TinyIdentityLoss(),
                                   exclude=["excluded_one"], **TRAIN)
        return out, method.last_training, method.last_result
    finally:
        torch.set_num_threads(previous)


def test_encoder_folder_files_and_data_report(encoder_dir):
    out, _, result = encoder_dir
    for name in (ENCODER_CONFIG, TEXT_ADAPTER_FILE, IP_ADAPTER_FILE, LORA_FILE, "loss.csv"):
        assert (out / name).is_file(), name
    config = json.loads((out / ENCODER_CONFIG).read_text())
    data = config["data"]
    assert data["total"] == 6 and data["ok"] == 4 and data["excluded"] == 1
    assert data["skipped"] == {"no_face": 1, "unreadable": 1}
    assert any("blank.png" in e for e in data["examples"]) and any("broken.jpg" in e for e in data["examples"])
    assert config["image_encoder"]["layers"] == [1, 2, 3, 4, 5]
    ip = load_file(str(out / IP_ADAPTER_FILE))
    assert {k.split(".")[0] for k in ip} == {"image_proj", "ip_adapter"}
    assert sorted({int(k.split(".")[1]) for k in ip if k.startswith("ip_adapter")})[:3] == [1, 3, 5]
    assert len(result.losses) == TRAIN["max_steps"]
