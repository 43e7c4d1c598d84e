"""What every data set here is: labelled uint8 images of the paper's 256x256, addressed by index."""

from dataclasses import dataclass
from typing import Protocol

import torch

from data.stats import ImageStats

SIDE = 256
"""The paper's images: the shorter side rescaled to 256, then the central 256x256."""
IMAGE_SHAPE = (3, SIDE, SIDE)
IMAGE_BYTES = 3 * SIDE * SIDE
"""One raw image: uint8 [3, 256, 256] in C order."""


class ImageSet(Protocol):
    """Labelled uint8 [3, 256, 256] RGB images addressed by index."""

    classes: list[str]
    compressed: bool
    """Whether its images are stored compressed (a compact pack: data/shards.py's `read_records` hands the
    records over undecoded, for a GPU to decode)."""

    def __len__(self) -> int: ...

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, 3, 256, 256] images and int64 [N] labels of `indices`."""

    def load_into(self, indices: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """`indices`' pixels into uint8 images[:N] (the loader's reused buffers); their int64 [N] labels."""


@dataclass
class Datasets:
    """A training set, a validation set and the training set's statistics."""

    train: ImageSet
    val: ImageSet
    stats: ImageStats

    @property
    def classes(self) -> list[str]:
        return self.train.classes
