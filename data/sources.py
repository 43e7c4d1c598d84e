"""Opening the training and validation images a config names: a pack, or the embedded data.

The embedded images are a pure function of (seed, split, index), so they are generated
once into a pack in `data.synthetic_cache` and read back from it like any packed data
(images and statistics): the job's tower processes, its loading process and every later
run with the same seed and sizes read raw bytes instead of drawing each image again.
"""

import hashlib
import os
import sys
from functools import partial
from pathlib import Path

import torch

from config.data import DataConfig
from data import synthetic
from data.imageset import SIDE, Datasets
from data.pack_format import FORMAT, VERSION
from data.packed import open_packed, read_pack_meta
from data.packing import Split, pack
from data.stats import compute_stats
from data.synthetic import SyntheticImages, synthetic_classes, synthetic_image, synthetic_labels
from files import atomic_folder, create_root, lock, remove
from model import seeds

STATS_BATCH = 64
CACHE_SHARD = 256
"""Images per shard of a cached pack (50 MB files)."""
BUILDING = ".building"
"""Suffix of a cached pack being written; renamed without it once complete."""
LOCK_FILE = ".cache.lock"
"""Taken while packing; its own name, so that a cache in checkpoint.dir cannot share the run's lock file."""
WAIT_S = 300.0
"""Longest wait for another process packing the cache where no deadline is given (the programs give
parallel.timeout_s, of the same default): the default embedded data packs in seconds."""


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


def cache_name(cfg: DataConfig, seed: int) -> str:
    """The cached pack of the embedded data for `seed`: named by what its images depend on.

    The generator's version is a digest of the source that draws the images (the generator
    and the seed derivation), so an edit there packs anew instead of serving stale images;
    the pack format's version is in it too.
    """
    code = hashlib.sha256(f"{FORMAT} {VERSION}".encode())
    for module in (synthetic, seeds):
        code.update(Path(module.__file__).read_bytes())
    sizes = f"classes{cfg.synthetic_classes}_train{cfg.synthetic_train_images}_val{cfg.synthetic_val_images}"
    return f"seed{seed}_{sizes}_{code.hexdigest()[:12]}"


def synthetic_pack(cfg: DataConfig, seed: int, wait_s: float = WAIT_S) -> Path:
    """The folder of the embedded data's pack for `seed` in `cfg.synthetic_cache`, packed there on first use.

    Processes that start together (a run's tower processes, tests running side by side)
    take turns on a lock in the cache folder: the first packs, the others wait (at most
    `wait_s` seconds: a holder that is stopped or stuck is named by its pid) and then
    read its pack. A pack is written under a temporary name and renamed once complete, so
    a folder with the final name is always whole; what a killed build left is removed by
    the next one, under the same lock.
    """
    root = Path(cfg.synthetic_cache)
    entry = root / cache_name(cfg, seed)
    if (entry / "meta.json").is_file():
        return entry
    create_root(root, "data.synthetic_cache")
    with lock(root / LOCK_FILE, wait_s=wait_s):  # the kernel releases it when its process dies
        if not (entry / "meta.json").is_file():
            for leftover in root.glob(f"*{BUILDING}"):
                remove(leftover)  # a link is unlinked, never followed
            with atomic_folder(entry, BUILDING) as building:
                print(f"packing the embedded data into {entry} (once for this seed and these sizes)",
                      file=sys.stderr, flush=True)
                names = synthetic_classes(cfg.synthetic_classes)
                pack(building, _splits(cfg, seed), names, names, CACHE_SHARD, len(os.sched_getaffinity(0)))
    return entry


def _splits(cfg: DataConfig, seed: int) -> list[Split]:
    """The embedded data's two splits for `pack`: image i of a split is decoded by drawing it."""
    splits = []
    for split, size in (("train", cfg.synthetic_train_images), ("val", cfg.synthetic_val_images)):
        draw = partial(synthetic_image, cfg.synthetic_classes, seed, split)
        splits.append(Split(split, [f"{split}[{i}]" for i in range(size)], list(range(size)),
                            synthetic_labels(cfg.synthetic_classes, size).tolist(), draw))
    return splits
