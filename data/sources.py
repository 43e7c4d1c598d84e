"""Opening the training and validation images a config names."""

from dataclasses import dataclass
from typing import Protocol

import torch

from data.config import DataConfig
from data.stats import ImageStats, compute_stats
from data.synthetic import SyntheticImages


class ImageSet(Protocol):
    """Labelled uint8 256x256 RGB images addressed by index."""

    classes: list[str]

    def __len__(self) -> int: ...

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, 3, 256, 256] images and int64 [N] labels of `indices`."""


@dataclass
class Datasets:
    """A training set, a validation set and the training set's statistics."""

    train: ImageSet
    val: ImageSet
    stats: ImageStats

    @property
    def classes(self) -> list[str]:
        return self.train.classes


STATS_BATCH = 64


def open_datasets(cfg: DataConfig, seed: int) -> Datasets:
    """The packed data under `cfg.root`, or the embedded synthetic data when it is empty."""
    if cfg.root:
        from data.packed import open_packed

        return open_packed(cfg.root)
    train = SyntheticImages(cfg.synthetic_classes, cfg.synthetic_train_images, seed, "train")
    val = SyntheticImages(cfg.synthetic_classes, cfg.synthetic_val_images, seed, "val")
    chunks = torch.arange(len(train)).split(STATS_BATCH)
    stats = compute_stats(train.load(chunk)[0] for chunk in chunks)
    return Datasets(train, val, stats)
