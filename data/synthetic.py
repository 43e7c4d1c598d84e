"""The embedded default data: ImageNet-shaped images generated from the seed, no download.

Each class is an oriented grating with its own orientation and colour, over a faint
tint of that colour; every image draws its own period, phase, brightness, contrast
and pixel noise. A conv net has to find orientation and colour, which is what
AlexNet's first layer learns on ImageNet too (Figure 3), so it trains like a small
real task rather than noise.
"""

import math

import torch

from data.imageset import SIDE
from model.seeds import derive_seed


def synthetic_classes(classes: int) -> list[str]:
    return [f"grating_{c:02d}" for c in range(classes)]


class SyntheticImages:
    """`size` uint8 3x256x256 images of `classes` classes, image i a pure function of (seed, split, i)."""

    compressed = False

    def __init__(self, classes: int, size: int, seed: int, split: str) -> None:
        self.classes = synthetic_classes(classes)
        self.size, self.seed, self.split = size, seed, split
        self.labels = synthetic_labels(classes, size)

    def __len__(self) -> int:
        return self.size

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, 3, 256, 256] images and int64 [N] labels."""
        classes = len(self.classes)
        images = torch.stack([synthetic_image(classes, self.seed, self.split, int(i)) for i in indices])
        return images, self.labels[indices]

    def load_into(self, indices: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Draw `indices` into images[:N]; their labels."""
        drawn, labels = self.load(indices)
        images[: len(indices)] = drawn
        return labels


def synthetic_labels(classes: int, size: int) -> torch.Tensor:
    """int64 [size]: image i is of class i mod `classes`, so every class has its share."""
    return torch.arange(size) % classes


def synthetic_image(classes: int, seed: int, split: str, index: int) -> torch.Tensor:
    """uint8 [3, 256, 256]: image `index` of `split`, of class index mod `classes`. A module-level function
    of its arguments alone, so that packing processes can draw any image (packs/synthetic_cache.py)."""
    rng = torch.Generator().manual_seed(derive_seed(seed, "image", split, index))
    label = index % classes
    u = torch.rand(6, generator=rng)
    angle = math.pi * label / classes + 0.1 * (u[0].item() - 0.5)
    period = 12.0 + 20.0 * u[1].item()
    phase = 2 * math.pi * u[2].item()
    brightness = 90.0 + 70.0 * u[3].item()
    contrast = 40.0 + 50.0 * u[4].item()
    hue = 2 * math.pi * (label / classes + 0.05 * (u[5].item() - 0.5))
    colour = torch.tensor([math.cos(hue + k * 2 * math.pi / 3) for k in range(3)]) * 0.5 + 0.75
    axis = torch.arange(SIDE, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    wave = torch.sin(2 * math.pi / period * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
    noise = torch.randn(3, SIDE, SIDE, generator=rng) * 20.0
    tint = 25.0 * (colour - colour.mean())
    image = brightness + tint[:, None, None] + contrast * wave[None] * colour[:, None, None] + noise
    return image.clamp(0, 255).round().to(torch.uint8)
