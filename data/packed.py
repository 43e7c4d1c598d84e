"""The packed on-disk format: the paper's uint8 256x256 images in raw shards, read back by index.

A pack DST (made by `python -m data.prepare` or `python -m data.fashion_mnist`):

    DST/meta.json                format name and version, class ids, readable names, counts per split
    DST/stats.pt                 the training set's ImageStats tensors (a dict saved with torch.save)
    DST/skipped.txt              files that could not be decoded: "split<TAB>file<TAB>reason" lines
    DST/<split>/images_00000.u8  uint8 [count, 3, 256, 256] in C order, no header
    DST/<split>/images_00000.pt  that shard's labels, skipped files and partial statistics (for resuming)
    DST/<split>/labels.npy       int64 [n]: the class index of every image of the split, in order
    DST/<split>/plan.json        what the split is packed from (a digest of files, labels, classes, shard size)
    DST/<split>/index.json       images per shard and the skipped files; written last, it marks the split done

Shards are raw arrays with no header, so reading image i of a shard is one read at
offset i * IMAGE_BYTES: no decoding on the training path, which is the point.

A pack may come from someone else, so it is checked whole when opened (by `read_pack_meta`,
which training/build.py's check_data runs before any process group, and `open_packed`),
reading everything but the images: each JSON file's fields, counts against shard sizes,
labels.npy's dtype, length and range, stats.pt's size, keys and shapes. A bad pack is refused
there with a ValueError naming the file, never in the middle of an epoch; nothing in it is
unpickled but stats.pt, through torch's weights-only allow-list. Every file is read through
files/: regular files only (a named pipe is refused, not waited on), each read bounded before it
starts (stats.pt by its zip directory too, so it cannot inflate).
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from data.imageset import IMAGE_SHAPE, SIDE, Datasets
from data.stats import ImageStats
from files import Refused, map_npy, open_regular, read_torch, write_atomic
from files import read_json as read_json_file

FORMAT = "alexnet-packed"
VERSION = 1
IMAGE_BYTES = 3 * SIDE * SIDE
SPLITS = ("train", "val")
MAKE_ONE = "make one with python -m data.prepare SRC DST"
MAX_JSON_BYTES = 16 * 2**20
"""Largest JSON file read; ImageNet's meta.json is about 40 KB, an index.json listing every skipped file under 1 MB."""
STATS_SHAPES = {"mean_image": IMAGE_SHAPE, "channel_mean": (3,), "eigenvalues": (3,), "eigenvectors": (3, 3)}
MAX_STATS_BYTES = 2 * 2**20
"""Largest stats.pt read: its float32 tensors take 0.8 MB."""


def shard_name(shard: int) -> str:
    """The images file of shard `shard`; its sidecar has the same stem and the suffix .pt."""
    return f"images_{shard:05d}.u8"


def read_json(path: Path) -> Any:
    """A JSON file of a pack, refused (naming it) when larger than MAX_JSON_BYTES or not JSON."""
    return read_json_file(path, MAX_JSON_BYTES, "a pack's JSON file")


def write_json(path: Path, value: dict) -> None:
    """Replace `path` atomically, so an interrupted run never leaves half a file behind."""
    write_atomic(path, json.dumps(value, indent=1))


class PackedImages:
    """One split of a pack, as an ImageSet.

    Pickling it (to DataLoader workers) carries only paths and shard sizes; the labels
    are memory-mapped on first use in whichever process loads. Images are read with a
    plain seek + readinto straight into the batch tensor, opening each shard only for
    the duration of a load: a memory map per shard would keep a file descriptor per
    shard open in every worker (ImageNet has over a thousand shards).
    """

    def __init__(self, folder: Path, classes: list[str], ids: list[str], counts: list[int] | None = None) -> None:
        """The split in `folder`, whose shards hold `counts` images (as open_packed checked them; by
        default index.json's, unchecked)."""
        self.folder, self.classes, self.ids = folder, classes, ids
        counts = read_json(folder / "index.json")["counts"] if counts is None else counts
        self.files = [folder / shard_name(k) for k in range(len(counts))]
        counts = torch.tensor(counts, dtype=torch.int64)
        self.ends = counts.cumsum(0)
        self.starts = self.ends - counts
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_labels": None}

    def labels(self) -> np.ndarray:
        """int64 [n] labels of the whole split, memory-mapped."""
        if self._labels is None:
            self._labels = map_npy(self.folder / "labels.npy")
        return self._labels

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, 3, 256, 256] images and int64 [N] labels of `indices`."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"{self.folder}: indices must be in [0, {len(self)})")
        images = torch.empty((len(indices), 3, SIDE, SIDE), dtype=torch.uint8)
        if get_worker_info() is not None:
            # Read straight into shared memory, as DataLoader's collate does: a batch
            # returned from a worker is otherwise copied there once more on its way out.
            images.share_memory_()
        rows = images.view(len(indices), IMAGE_BYTES).numpy()
        shards = torch.searchsorted(self.ends, indices, right=True)
        for shard in shards.unique().tolist():
            picks = (shards == shard).nonzero().flatten().tolist()
            first = int(self.starts[shard])
            with open_regular(self.files[shard]) as f:
                for i in picks:
                    f.seek((int(indices[i]) - first) * IMAGE_BYTES)
                    if f.readinto(rows[i]) != IMAGE_BYTES:
                        raise ValueError(f"{self.files[shard]}: short read of image {int(indices[i]) - first}")
        labels = torch.from_numpy(np.array(self.labels()[indices.numpy()], dtype=np.int64))
        return images, labels


def _fail(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: {why}; the pack is damaged or not made by data.prepare ({MAKE_ONE})")


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
    for split, counts in splits.items():
        if not (isinstance(counts, dict) and _is_int(counts.get("images"), 1) and _is_int(counts.get("skipped"))):
            raise _fail(path, f"splits.{split!s:.40} is not {{'images': n >= 1, 'skipped': n >= 0}}")


def _check_split(folder: Path, images: int, classes: int) -> list[int]:
    """The images per shard of one split, after checking index.json, the shards' sizes and labels.npy."""
    index = read_json(folder / "index.json")
    counts, skipped = (index.get("counts"), index.get("skipped")) if isinstance(index, dict) else (None, None)
    if not (isinstance(counts, list) and all(_is_int(c) for c in counts)):
        raise _fail(folder / "index.json", "'counts' is not a list of image counts")
    if not (isinstance(skipped, list) and all(isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
                                              for e in skipped)):
        raise _fail(folder / "index.json", "'skipped' is not a list of [file, reason] pairs")
    if sum(counts) != images:
        raise _fail(folder / "index.json", f"its counts add up to {sum(counts)} images, meta.json says {images}")
    for k, count in enumerate(counts):
        path = folder / shard_name(k)
        size = path.stat().st_size if path.is_file() else -1
        if size != count * IMAGE_BYTES:
            raise ValueError(f"{path}: expected {count} images ({count * IMAGE_BYTES} bytes), found {size} bytes")
    _check_labels(folder / "labels.npy", images, classes)
    return counts


def _check_labels(path: Path, images: int, classes: int) -> None:
    """labels.npy: int64 [images], every label a class index; memory-mapped, never unpickled."""
    try:
        labels = map_npy(path)
    except Refused as err:  # a named pipe, truncated, an object array, not .npy at all
        raise _fail(path, str(err).removeprefix(f"{path}: ")) from None
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (images,):
        what = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise _fail(path, f"holds {what}, not int64 ({images},): one label per image")
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (None, None)
        raise ValueError(
            f"data.root={root}: meta.json is not format {FORMAT} version {VERSION} "
            f"(found {found[0]!r:.60} version {found[1]!r:.20}); {MAKE_ONE}"
        )
    _check_meta(path / "meta.json", meta)
    missing = [split for split in SPLITS if split not in meta["splits"]]
    if missing:
        raise ValueError(f"data.root={root}: the pack has no {' or '.join(missing)} split; add it with prepare's --val-src")
    counts = {split: _check_split(path / split, meta["splits"][split]["images"], len(meta["ids"])) for split in SPLITS}
    return meta, counts, _read_stats(path / "stats.pt")


def read_pack_meta(root: str) -> dict:
    """The pack's meta.json, once the whole pack is checked (everything but the image bytes read): a
    folder that is not a finished, sound pack of this format is refused, naming the file and why."""
    return _checked(root)[0]


def open_packed(root: str) -> Datasets:
    """The training and validation splits and training statistics of the pack at `root`, checked."""
    path = Path(root)
    meta, counts, stats = _checked(root)
    train, val = (PackedImages(path / split, meta["names"], meta["ids"], counts[split]) for split in SPLITS)
    return Datasets(train, val, stats)
