"""The data a run's config names: a pack, or the embedded synthetic data (drawn, or read from its cached pack).

It stands above data/ (the readers) and packs/ (the writers) because the embedded data's cache is a pack that
the run writes on first use (packs/synthetic_cache.py).
"""

import torch

from config.data import DataConfig
from data.imageset import SIDE, Datasets
from data.packed import open_packed, read_pack_meta
from data.stats import compute_stats
from data.synthetic import SyntheticImages
from packs.synthetic_cache import WAIT_S, synthetic_pack

STATS_BATCH = 64


def data_sizes(cfg: DataConfig) -> tuple[int, int]:
    """(classes, training images) of the data `cfg` names, read without touching an image (a pack is checked
    whole on the way: read_pack_meta)."""
    if cfg.root:
        meta = read_pack_meta(cfg.root)
        return len(meta["names"]), meta["splits"]["train"]["images"]
    return cfg.synthetic_classes, cfg.synthetic_train_images


def open_datasets(cfg: DataConfig, seed: int, wait_s: float = WAIT_S) -> Datasets:
    """The packed data under `cfg.root`, or the embedded synthetic data when it is empty (from its cache
    when `cfg.synthetic_cache` names one, waiting at most `wait_s` seconds for another process packing it)."""
    if cfg.root:
        return open_packed(cfg.root)
    if cfg.synthetic_cache:
        return open_packed(str(synthetic_pack(cfg, seed, wait_s)))
    train = SyntheticImages(cfg.synthetic_classes, cfg.synthetic_train_images, seed, "train")
    val = SyntheticImages(cfg.synthetic_classes, cfg.synthetic_val_images, seed, "val")
    chunks = torch.arange(len(train)).split(STATS_BATCH)
    stats = compute_stats((train.load(chunk)[0] for chunk in chunks), SIDE)
    return Datasets(train, val, stats)
