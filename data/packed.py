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
"""

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import get_worker_info

from data.imageset import SIDE, Datasets
from data.stats import ImageStats

FORMAT = "alexnet-packed"
VERSION = 1
IMAGE_BYTES = 3 * SIDE * SIDE
SPLITS = ("train", "val")
MAKE_ONE = "make one with python -m data.prepare SRC DST"


def shard_name(shard: int) -> str:
    """The images file of shard `shard`; its sidecar has the same stem and the suffix .pt."""
    return f"images_{shard:05d}.u8"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, value: dict) -> None:
    """Replace `path` atomically, so an interrupted run never leaves half a file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


class PackedImages:
    """One split of a pack, as an ImageSet.

    Pickling it (to DataLoader workers) carries only paths and shard sizes; the labels
    are memory-mapped on first use in whichever process loads. Images are read with a
    plain seek + readinto straight into the batch tensor, opening each shard only for
    the duration of a load: a memory map per shard would keep a file descriptor per
    shard open in every worker (ImageNet has over a thousand shards).
    """

    def __init__(self, folder: Path, classes: list[str], ids: list[str]) -> None:
        self.folder, self.classes, self.ids = folder, classes, ids
        index = read_json(folder / "index.json")
        self.files = [folder / shard_name(k) for k in range(len(index["counts"]))]
        counts = torch.tensor(index["counts"], dtype=torch.int64)
        for path, count in zip(self.files, counts.tolist()):
            size = path.stat().st_size if path.is_file() else -1
            if size != count * IMAGE_BYTES:
                raise ValueError(f"{path}: expected {count} images ({count * IMAGE_BYTES} bytes), found {size} bytes")
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
            self._labels = np.load(self.folder / "labels.npy", mmap_mode="r")
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
            with open(self.files[shard], "rb", buffering=0) as f:
                for i in picks:
                    f.seek((int(indices[i]) - first) * IMAGE_BYTES)
                    if f.readinto(rows[i]) != IMAGE_BYTES:
                        raise ValueError(f"{self.files[shard]}: short read of image {int(indices[i]) - first}")
        labels = torch.from_numpy(np.array(self.labels()[indices.numpy()], dtype=np.int64))
        return images, labels


def read_pack_meta(root: str) -> dict:
    """The pack's meta.json, checked: a folder that is not a finished pack of this format is refused, naming why."""
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
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"data.root={root}: meta.json is not format {FORMAT} version {VERSION} "
            f"(found {meta.get('format')!r} version {meta.get('version')!r}); {MAKE_ONE}"
        )
    missing = [split for split in SPLITS if split not in meta["splits"]]
    if missing:
        raise ValueError(f"data.root={root}: the pack has no {' or '.join(missing)} split; add it with prepare's --val-src")
    return meta


def open_packed(root: str) -> Datasets:
    """The training and validation splits and training statistics of the pack at `root`."""
    path = Path(root)
    meta = read_pack_meta(root)
    train, val = (PackedImages(path / split, meta["names"], meta["ids"]) for split in SPLITS)
    stats = ImageStats(**torch.load(path / "stats.pt", weights_only=True))
    return Datasets(train, val, stats)
