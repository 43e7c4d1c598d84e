"""Training-set statistics the paper's pipeline needs: the mean and the RGB PCA."""

from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass(frozen=True)
class ImageStats:
    """Mean image, per-channel mean and RGB covariance eigen-decomposition, in 0..255 units."""

    mean_image: torch.Tensor
    """[3, 256, 256] float32: the mean over the training set at each position."""
    channel_mean: torch.Tensor
    """[3] float32: the mean of each channel over all pixels."""
    eigenvalues: torch.Tensor
    """[3] float32, ascending: variances of the RGB pixel values along the eigenvectors."""
    eigenvectors: torch.Tensor
    """[3, 3] float32: column i is the eigenvector of eigenvalues[i]."""

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("mean_image", "channel_mean", "eigenvalues", "eigenvectors")}


class StatsAccumulator:
    """Running sums over uint8 batches, in float64 so a million images lose nothing."""

    def __init__(self, side: int) -> None:
        self.count = 0
        self.pixel_sum = torch.zeros(3, side, side, dtype=torch.float64)
        self.rgb_sum = torch.zeros(3, dtype=torch.float64)
        self.rgb_outer = torch.zeros(3, 3, dtype=torch.float64)
        self.pixels = 0

    def add(self, images: torch.Tensor) -> None:
        """images: uint8 [N, 3, H, W]."""
        x = images.to(torch.float64)
        self.count += x.shape[0]
        self.pixel_sum += x.sum(0)
        rgb = x.permute(1, 0, 2, 3).reshape(3, -1)
        self.pixels += rgb.shape[1]
        self.rgb_sum += rgb.sum(1)
        self.rgb_outer += rgb @ rgb.T

    def merge(self, other: "StatsAccumulator") -> None:
        self.count += other.count
        self.pixel_sum += other.pixel_sum
        self.rgb_sum += other.rgb_sum
        self.rgb_outer += other.rgb_outer
        self.pixels += other.pixels

    def result(self) -> ImageStats:
        if self.count == 0:
            raise ValueError("no training images to compute the mean and PCA from")
        mean_rgb = self.rgb_sum / self.pixels
        covariance = self.rgb_outer / self.pixels - torch.outer(mean_rgb, mean_rgb)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        return ImageStats(
            mean_image=(self.pixel_sum / self.count).float(),
            channel_mean=mean_rgb.float(),
            eigenvalues=eigenvalues.clamp_min(0).float(),
            eigenvectors=eigenvectors.float(),
        )


def compute_stats(batches: Iterable[torch.Tensor], side: int) -> ImageStats:
    """Statistics of all images in `batches` (uint8 [N, 3, side, side] each)."""
    acc = StatsAccumulator(side)
    for images in batches:
        acc.add(images)
    return acc.result()
