"""What a trained net needs besides its weights to be used on an image: its classes' names and the mean it
was trained to see subtracted. An exported weights file carries both (checkpoints/weights.py), so the file
alone classifies an image; a checkpoint folder takes them from the data its config names."""

from dataclasses import dataclass

import torch

from data.imageset import IMAGE_SHAPE, Datasets

MEANS = {"image": IMAGE_SHAPE, "channel": IMAGE_SHAPE[:1]}
"""data.mean -> the shape of the mean a net was trained with: per position [3, 256, 256], or per channel [3]."""


@dataclass(frozen=True)
class Preprocessing:
    """Class names (output i is classes[i]; a net may have more outputs than names) and the training mean,
    float32 in 0..255 RGB units, per position or per channel as trained (data.mean)."""

    classes: list[str]
    mean: torch.Tensor

    @staticmethod
    def of(data: Datasets, mean: str) -> "Preprocessing":
        """The preprocessing of a net trained on `data` with data.mean `mean` ("image" or "channel")."""
        return Preprocessing(list(data.classes), data.stats.mean_image if mean == "image" else data.stats.channel_mean)

    def mean_image(self) -> torch.Tensor:
        """The mean at every position of a 256x256 image: [3, 256, 256] (a per-channel mean repeated)."""
        return self.mean if self.mean.ndim == 3 else self.mean[:, None, None].expand(IMAGE_SHAPE)
