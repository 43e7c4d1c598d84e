"""Top-5 classes of image files from the newest checkpoint, tested as the paper tests: ten patches.

Files are decoded the way the data was packed (data/decode.py: shorter side to 256,
the central 256x256), less the training set's mean, and the softmax is averaged
over the four corners, the centre and their reflections.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from data.augment import Augmenter
from data.sources import Datasets, open_datasets
from distributed.config import Config, ConfigError
from distributed.evaluate import checkpoint_paths, load_network, ten_patch_ensemble
from model.alexnet import AlexNet

TOP = 5


@dataclass
class Predictor:
    """One trained net with the data it was trained on (class names, mean, training images)."""

    cfg: Config
    net: AlexNet
    data: Datasets
    augment: Augmenter
    device: torch.device

    @staticmethod
    def from_config(cfg: Config, device: torch.device, path: str | Path | None = None) -> "Predictor":
        """The checkpoint at `path`, or the newest one in checkpoint.dir."""
        source = Path(path) if path else checkpoint_paths(cfg, [])[0]
        data = open_datasets(cfg.data, cfg.train.seed)
        augment = Augmenter(data.stats, cfg.model.input_size, cfg.data.mean, cfg.data.flip, cfg.data.pca_std, device)
        return Predictor(cfg, load_network(cfg, source, device), data, augment, device)

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    def decode(self, files: Sequence[str | Path]) -> torch.Tensor:
        """uint8 [N, 3, 256, 256] from image files; an unreadable file is a ConfigError naming it."""
        from data.decode import DECODE_ERRORS, decode_file

        images = []
        for f in files:
            try:
                images.append(decode_file(f))
            except DECODE_ERRORS as err:
                raise ConfigError(f"cannot read image {f}: {err}") from None
        return torch.stack(images).to(self.device)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """[N, classes]: the ten-patch softmax of uint8 `images`."""
        return ten_patch_ensemble([self.net], self.augment, images).cpu()

    def top5(self, images: torch.Tensor) -> list[list[tuple[str, float]]]:
        """(class name, probability) of the five likeliest classes of each image, likeliest first.

        A net with more outputs than the data has classes (num_classes 1000 on 10 classes)
        never names an output the data does not: those outputs are left out.
        """
        probs = self.probabilities(images)[:, : len(self.classes)]
        top = probs.topk(min(TOP, probs.shape[1]), dim=1)
        return [[(self.classes[i], p) for i, p in zip(idx.tolist(), val.tolist())] for idx, val in zip(top.indices, top.values)]


def format_predictions(name: str | Path, top: list[tuple[str, float]]) -> str:
    """`name` then one line per class: probability and class name."""
    return "\n".join([str(name), *(f"  {p:7.4f}  {c}" for c, p in top)])
