"""The embedded synthetic data packed once into `data.synthetic_cache`, for the runs that read it back.

Its images are a pure function of (seed, split, index), so the job's tower processes, its loading process and
every later run with the same seed and sizes read raw bytes instead of drawing each image again. The pack is
named by what its images depend on, written under a lock and renamed once whole.
"""

import hashlib
import os
import sys
from functools import partial
from pathlib import Path

from config.data import DataConfig
from data import synthetic
from data.pack_format import FORMAT, VERSION
from data.synthetic import synthetic_classes, synthetic_image, synthetic_labels
from files import atomic_folder, create_root, lock, remove
from model import seeds
from packs.packing import Split, pack

CACHE_SHARD = 256
"""Images per shard of a cached pack (50 MB files)."""
BUILDING = ".building"
"""Suffix of a cached pack being written; renamed without it once complete."""
LOCK_FILE = ".cache.lock"
"""Taken while packing; its own name, so that a cache in checkpoint.dir cannot share the run's lock file."""
WAIT_S = 300.0
"""Longest wait for another process packing the cache where no deadline is given (the programs give
parallel.timeout_s, of the same default): the default embedded data packs in seconds."""


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
