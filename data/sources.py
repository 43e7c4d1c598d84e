"""Opening the training and validation images a config names: a pack, or the embedded data."""

import torch

from data.config import DataConfig
from data.imageset import SIDE, Datasets
from data.packed import open_packed, read_pack_meta
from data.stats import compute_stats
from data.synthetic import SyntheticImages, synthetic_classes

STATS_BATCH = 64


def class_names(cfg: DataConfig) -> list[str]:
    """The classes of the data `cfg` names, read without touching an image."""
    if cfg.root:
        return read_pack_meta(cfg.root)["names"]
    return synthetic_classes(cfg.synthetic_classes)


def open_datasets(cfg: DataConfig, seed: int) -> Datasets:
    """The packed data under `cfg.root`, or the embedded synthetic data when it is empty."""
    if cfg.root:
        return open_packed(cfg.root)
    train = SyntheticImages(cfg.synthetic_classes, cfg.synthetic_train_images, seed, "train")
    val = SyntheticImages(cfg.synthetic_classes, cfg.synthetic_val_images, seed, "val")
    chunks = torch.arange(len(train)).split(STATS_BATCH)
    stats = compute_stats((train.load(chunk)[0] for chunk in chunks), SIDE)
    return Datasets(train, val, stats)
