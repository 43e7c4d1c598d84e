"""A pack opened for a run: meta.json, stats.pt and each split's index checked whole, the images read by index.

A pack (made by `python -m packs.prepare` or `python -m packs.fashion_mnist`; its files are listed in docs/DATA.md,
"The packed format") may come from someone else, so everything but the images is checked when it is opened,
through files/, and a bad file refused with a ValueError naming it, never in the middle of an epoch.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.compact import MAX_RECORD_BYTES
from data.imageset import IMAGE_BYTES, IMAGE_SHAPE, SIDE, Datasets
from data.pack_format import ENCODINGS, FORMAT, JPEG, MAKE_ONE, RAW, SPLITS, VERSIONS, read_json, shard_name
from data.shards import PackedImages
from data.stats import ImageStats
from files import Refused, map_npy, read_torch

STATS_SHAPES = {"mean_image": IMAGE_SHAPE, "channel_mean": (3,), "eigenvalues": (3,), "eigenvectors": (3, 3)}
MAX_STATS_BYTES = 2 * 2**20
"""Largest stats.pt read: its float32 tensors take 0.8 MB."""


def _fail(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: {why}; the pack is damaged or not made by packs.prepare ({MAKE_ONE})")


def _is_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _check_meta(path: Path, meta: Any) -> None:
    """meta.json's fields, present and of their types."""
    if not isinstance(meta, dict):
        raise _fail(path, f"holds a {type(meta).__name__}, not an object")
    ids, names, splits = meta.get("ids"), meta.get("names"), meta.get("splits")
    if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
        raise _fail(path, "'ids' is not a non-empty list of class ids")
    if not (isinstance(names, list) and len(names) == len(ids) and all(isinstance(n, str) for n in names)):
        raise _fail(path, f"'names' is not a list of {len(ids)} class names, one per id")
    if meta.get("side") != SIDE:
        raise _fail(path, f"'side' is {meta.get('side')!r:.40}, not {SIDE}")
    if not isinstance(splits, dict):
        raise _fail(path, "'splits' is not an object")
    if meta.get("version") != 1 and meta.get("encoding") not in ENCODINGS:
        raise _fail(path, f"'encoding' is {meta.get('encoding')!r:.40}, not one of {ENCODINGS}")
    if meta.get("encoding") == JPEG and not (_is_int(meta.get("quality"), 1) and meta["quality"] <= 100):
        raise _fail(path, f"'quality' is {meta.get('quality')!r:.40}, not a JPEG quality 1..100")
    for split, counts in splits.items():
        if not (isinstance(counts, dict) and _is_int(counts.get("images"), 1) and _is_int(counts.get("skipped"))):
            raise _fail(path, f"splits.{split!s:.40} is not {{'images': n >= 1, 'skipped': n >= 0}}")


def _check_split(folder: Path, images: int, classes: int, encoding: str) -> list[int]:
    """The images per shard of one split, after checking index.json, the shards' sizes and labels.npy
    (and a compact split's lengths.npy)."""
    index = read_json(folder / "index.json")
    counts, skipped = (index.get("counts"), index.get("skipped")) if isinstance(index, dict) else (None, None)
    if not (isinstance(counts, list) and all(_is_int(c) for c in counts)):
        raise _fail(folder / "index.json", "'counts' is not a list of image counts")
    if not (isinstance(skipped, list) and all(isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
                                              for e in skipped)):
        raise _fail(folder / "index.json", "'skipped' is not a list of [file, reason] pairs")
    if sum(counts) != images:
        raise _fail(folder / "index.json", f"its counts add up to {sum(counts)} images, meta.json says {images}")
    sizes = [count * IMAGE_BYTES for count in counts]
    if encoding == JPEG:
        sizes = _check_lengths(folder / "lengths.npy", counts)
    for k, expected in enumerate(sizes):
        path = folder / shard_name(k, encoding)
        size = path.stat().st_size if path.is_file() else -1
        if size != expected:
            raise ValueError(f"{path}: expected {counts[k]} images ({expected} bytes), found {size} bytes")
    _check_labels(folder / "labels.npy", images, classes)
    return counts


def _check_lengths(path: Path, counts: list[int]) -> list[int]:
    """lengths.npy of a compact split: int64, one length in 1..MAX_RECORD_BYTES per image; each
    shard's size (the sum of its records' lengths), so that no record reaches past its shard."""
    lengths = _read_npy(path, sum(counts))
    if len(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > MAX_RECORD_BYTES):
        raise _fail(path, f"has record lengths from {int(lengths.min())} to {int(lengths.max())}, "
                          f"outside 1..{MAX_RECORD_BYTES}")
    ends = np.cumsum(counts)
    return [int(lengths[end - count : end].sum()) for count, end in zip(counts, ends)]


def _read_npy(path: Path, images: int) -> np.ndarray:
    """An int64 [images] .npy array, memory-mapped, never unpickled."""
    try:
        values = map_npy(path)
    except Refused as err:  # a named pipe, truncated, an object array, not .npy at all
        raise _fail(path, str(err).removeprefix(f"{path}: ")) from None
    if values.dtype != np.int64 or values.shape != (images,):
        raise _fail(path, f"holds {values.dtype} {values.shape}, not int64 ({images},): one value per image")
    return values


def _check_labels(path: Path, images: int, classes: int) -> None:
    """labels.npy: int64 [images], every label a class index."""
    labels = _read_npy(path, images)
    low, high = int(labels.min()), int(labels.max())  # 8 bytes an image: 10 MB for ImageNet
    if low < 0 or high >= classes:
        raise _fail(path, f"has labels from {low} to {high}, outside the {classes} classes [0, {classes})")


def _read_stats(path: Path) -> ImageStats:
    """stats.pt: torch.load's weights-only unpickler (an allow-list: tensors and plain containers, no
    code), on a file no larger than statistics take and holding no more (files.read_torch), holding
    exactly the four float32 tensors."""
    try:
        value = read_torch(path, MAX_STATS_BYTES, "a statistics file")
    except Refused as err:
        raise _fail(path, str(err).removeprefix(f"{path}: ")) from None
    if not (isinstance(value, dict) and value.keys() == STATS_SHAPES.keys()):
        found = sorted(map(str, value))[:6] if isinstance(value, dict) else type(value).__name__
        raise _fail(path, f"holds {found}, not the tensors {sorted(STATS_SHAPES)}")
    for key, shape in STATS_SHAPES.items():
        t = value[key]
        if not (type(t) is torch.Tensor and t.dtype == torch.float32 and t.shape == shape and bool(t.isfinite().all())):
            raise _fail(path, f"{key} is not a finite float32 tensor of shape {list(shape)}")
    return ImageStats(**value)


def _checked(root: str) -> tuple[dict, dict[str, list[int]], ImageStats]:
    """meta.json, each split's images per shard and the statistics of the pack at `root`, all checked."""
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"data.root={root}: no such folder; {MAKE_ONE}")
    if not (path / "meta.json").is_file():
        if not any(path.iterdir()):
            why = "the folder is empty"
        elif (path / "train").is_dir():
            why = "missing meta.json: an unfinished pack? run the same prepare command again to finish it"
        else:
            why = "missing meta.json"
        raise ValueError(f"data.root={root}: no packed dataset ({why}); {MAKE_ONE}")
    meta = read_json(path / "meta.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") not in VERSIONS:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (None, None)
        raise ValueError(
            f"data.root={root}: meta.json is not format {FORMAT} version {' or '.join(map(str, VERSIONS))} "
            f"(found {found[0]!r:.60} version {found[1]!r:.20}); {MAKE_ONE}"
        )
    _check_meta(path / "meta.json", meta)
    missing = [split for split in SPLITS if split not in meta["splits"]]
    if missing:
        raise ValueError(f"data.root={root}: the pack has no {' or '.join(missing)} split; add it with prepare's --val-src")
    encoding = encoding_of(meta)
    counts = {split: _check_split(path / split, meta["splits"][split]["images"], len(meta["ids"]), encoding)
              for split in SPLITS}
    return meta, counts, _read_stats(path / "stats.pt")


def encoding_of(meta: dict) -> str:
    """A checked meta.json's image encoding: version 1 packs, which do not say, are raw."""
    return RAW if meta["version"] == 1 else meta["encoding"]


def read_pack_meta(root: str) -> dict:
    """The pack's meta.json, once the whole pack is checked (everything but the image bytes read): a
    folder that is not a finished, sound pack of this format is refused, naming the file and why."""
    return _checked(root)[0]


def open_packed(root: str) -> Datasets:
    """The training and validation splits and training statistics of the pack at `root`, checked."""
    path = Path(root)
    meta, counts, stats = _checked(root)
    train, val = (PackedImages(path / split, meta["names"], meta["ids"], counts[split], encoding_of(meta))
                  for split in SPLITS)
    return Datasets(train, val, stats)
