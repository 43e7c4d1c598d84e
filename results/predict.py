"""Top-5 classes of image files from a trained net, tested as the paper tests: ten patches.

Files are decoded the way the data was packed (data/decode.py: shorter side to 256,
the central 256x256), less the training set's mean, and the softmax is averaged
over the four corners, the centre and their reflections. The class names and the mean are
the ones an exported weights file carries, or, for a checkpoint folder, those of the data
the config names.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from checkpoints.trained import load_network
from checkpoints.weights import is_weights_file, load_preprocessing
from config.errors import UserError
from config.schema import Config
from data.augment import Augmenter
from data.decode import DECODE_ERRORS, decode_file
from data.imageset import Datasets, ImageSet
from data.preprocessing import Preprocessing
from model.alexnet import AlexNet
from training.build import check_data
from training.datasets import open_datasets
from training.evaluation import TEN_PATCHES, log_probabilities, unreadable

TOP = 5


@dataclass
class Predictor:
    """One trained net with what using it needs (class names, mean), and the data the config names."""

    cfg: Config
    net: AlexNet
    preprocessing: Preprocessing
    augment: Augmenter
    data: Datasets | None
    """The data the config names, once opened (a checkpoint folder's class names and mean come from it)."""
    source: Path
    """The checkpoint or weights file the net was loaded from."""

    @staticmethod
    def load(cfg: Config, source: Path, device: torch.device) -> "Predictor":
        """The trained net at `source` on `device`, with both towers: a weights file needs nothing else."""
        data = None if is_weights_file(source) else _open_data(cfg)
        preprocessing = load_preprocessing(source, cfg.model) if data is None else Preprocessing.of(data, cfg.data.mean)
        augment = Augmenter(preprocessing.mean_image(), cfg.model.input_size, device)
        return Predictor(cfg, load_network(cfg, source, device), preprocessing, augment, data, source)

    @property
    def classes(self) -> list[str]:
        return self.preprocessing.classes

    def training_set(self) -> ImageSet:
        """The training images the config names (Figure 4's neighbours), refused unless they are of this net's
        classes: a weights file carries no images, so its config must name the data it was trained on."""
        if self.data is None:
            self.data = _open_data(self.cfg)
        if self.data.classes != self.classes:
            raise UserError(f"the training images the config names (data.root={self.cfg.data.root!r}) are not of the "
                            "classes this net was trained on: give the config it was trained with")
        return self.data.train

    def decode(self, files: Sequence[str | Path]) -> torch.Tensor:
        """uint8 [N, 3, 256, 256] from image files, on this net's device (decode_images)."""
        return decode_images(files).to(self.augment.mean.device)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """[N, classes]: the ten-patch softmax of uint8 `images`; a UserError naming the net if some image's
        outputs are not numbers (evaluation.unreadable), rather than NaN probabilities."""
        log_probs = log_probabilities([self.net], self.augment, images, TEN_PATCHES)
        bad = unreadable(log_probs)
        if bad.any():
            raise UserError(f"{self.source}: the net's outputs for {int(bad.sum())} of {len(bad)} image(s) are not "
                            "numbers (NaN): finite weights whose activations overflow float32; give another checkpoint")
        return log_probs.exp().cpu()

    def top5(self, images: torch.Tensor) -> list[list[tuple[str, float]]]:
        """(class name, probability) of the five likeliest classes of each image, likeliest first.

        A net with more outputs than the data has classes (num_classes 1000 on 10 classes)
        never names an output the data does not: those outputs are left out.
        """
        probs = self.probabilities(images)[:, : len(self.classes)]
        top = probs.topk(min(TOP, probs.shape[1]), dim=1)
        return [[(self.classes[i], p) for i, p in zip(idx.tolist(), val.tolist())] for idx, val in zip(top.indices, top.values)]


def _open_data(cfg: Config) -> Datasets:
    check_data(cfg)  # the data's description first, so a broken pack is a user error here too
    return open_datasets(cfg.data, cfg.train.seed, cfg.parallel.timeout_s)


def decode_images(files: Sequence[str | Path]) -> torch.Tensor:
    """uint8 [N, 3, 256, 256] from image files; an unreadable file (a pipe, a device, a bomb) is a UserError
    naming it."""
    images = []
    for f in files:
        try:
            images.append(decode_file(f))
        except DECODE_ERRORS as err:
            raise UserError(f"cannot read image {f}: {err}") from None
    return torch.stack(images)


def format_predictions(name: str | Path, top: list[tuple[str, float]]) -> str:
    """`name` then one line per class: probability and class name."""
    return "\n".join([str(name), *(f"  {p:7.4f}  {c}" for c, p in top)])
