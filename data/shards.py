"""One split of a pack read back by index: raw rows, or JPEG records decoded here or handed over whole."""

from pathlib import Path

import numpy as np
import torch

from data import compact
from data.compact import DamagedImage
from data.imageset import IMAGE_BYTES, IMAGE_SHAPE
from data.pack_format import JPEG, RAW, read_json, shard_name
from files import map_npy, open_regular


class PackedImages:
    """One split of a pack, as an ImageSet.

    Pickling it (to DataLoader workers) carries only paths and shard sizes; the labels (and a
    compact pack's record lengths) are memory-mapped on first use in whichever process loads.
    Images are read with a plain seek + readinto straight into the batch tensor, opening each
    shard only for the duration of a load: a memory map per shard would keep a file descriptor
    per shard open in every worker (ImageNet has over a thousand shards).
    """

    def __init__(self, folder: Path, classes: list[str], ids: list[str], counts: list[int] | None = None,
                 encoding: str = RAW) -> None:
        """The split in `folder`, whose shards hold `counts` images (as open_packed checked them; by
        default index.json's, unchecked), stored as `encoding` (data/pack_format.py's ENCODINGS)."""
        self.folder, self.classes, self.ids, self.encoding = folder, classes, ids, encoding
        counts = read_json(folder / "index.json")["counts"] if counts is None else counts
        self.files = [folder / shard_name(k, encoding) for k in range(len(counts))]
        counts = torch.tensor(counts, dtype=torch.int64)
        self.ends = counts.cumsum(0)
        self.starts = self.ends - counts
        self._labels: np.ndarray | None = None
        self._records: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def compressed(self) -> bool:
        """Images are JPEG records, which `read_records` hands over undecoded."""
        return self.encoding == JPEG

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_labels": None, "_records": None}

    def labels(self) -> np.ndarray:
        """int64 [n] labels of the whole split, memory-mapped."""
        if self._labels is None:
            self._labels = map_npy(self.folder / "labels.npy")
        return self._labels

    def records(self) -> tuple[np.ndarray, np.ndarray]:
        """A compact split's (byte offset in its shard, length) of every image: int64 [n] each.

        lengths.npy was checked when the pack was opened (each length within 1..MAX_RECORD_BYTES,
        each shard's lengths adding up to its file's size), so no read goes past a record."""
        if self._records is None:
            lengths = map_npy(self.folder / "lengths.npy")
            ends = np.cumsum(lengths)
            shard_start = (ends - lengths)[self.starts.numpy()]
            offsets = ends - lengths - np.repeat(shard_start, (self.ends - self.starts).numpy())
            self._records = offsets, np.asarray(lengths)
        return self._records

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, 3, 256, 256] images and int64 [N] labels of `indices`."""
        images = torch.empty((len(indices), *IMAGE_SHAPE), dtype=torch.uint8)
        return images, self.load_into(indices, images)

    def load_into(self, indices: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Read (and decode) `indices` into images[:N] (uint8 [>= N, 3, 256, 256]); their int64 [N] labels."""
        n = len(indices)
        lengths = torch.empty(n, dtype=torch.int64)
        rows = images[:n].view(n, IMAGE_BYTES)
        labels = self.read_records(indices, rows, lengths)
        if self.compressed:
            for i in range(n):  # row i holds record i; the decoded image replaces it
                images[i].copy_(self._decode(rows[i, : lengths[i]], int(indices[i])))
        return labels

    def read_records(self, indices: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Image `indices[i]`'s stored bytes into rows[i] (uint8 [>= N, IMAGE_BYTES]) and their count into
        lengths[i]: a raw image, or a JPEG record whose header is checked; returns the int64 [N] labels."""
        indices = torch.as_tensor(indices, dtype=torch.int64)
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"{self.folder}: indices must be in [0, {len(self)})")
        offsets, sizes = self.records() if self.compressed else (None, None)
        shards = torch.searchsorted(self.ends, indices, right=True)
        out = rows.numpy()
        for shard in shards.unique().tolist():
            picks = (shards == shard).nonzero().flatten().tolist()
            first = int(self.starts[shard])
            with open_regular(self.files[shard]) as f:
                for i in picks:
                    image = int(indices[i])
                    offset, size = (image - first) * IMAGE_BYTES, IMAGE_BYTES
                    if sizes is not None:
                        offset, size = int(offsets[image]), int(sizes[image])
                    f.seek(offset)
                    if f.readinto(out[i, :size]) != size:
                        raise self.damaged(image, "the shard ends before the image does")
                    lengths[i] = size
                    if sizes is not None and (why := compact.check_record(rows[i, :size])):
                        raise self.damaged(image, why)
        return torch.from_numpy(np.array(self.labels()[indices.numpy()], dtype=np.int64))

    def _decode(self, record: torch.Tensor, image: int) -> torch.Tensor:
        try:
            return compact.decode(record)
        except ValueError as err:
            raise self.damaged(image, str(err)) from None

    def damaged(self, image: int, why: str) -> DamagedImage:
        """The error for image `image` of the split: the pack, the shard and the image, and why."""
        shard = int(torch.searchsorted(self.ends, torch.tensor(image), right=True))
        return DamagedImage(
            f"{self.folder.parent}: {self.folder.name} image {image} ({self.files[shard].name}, image "
            f"{image - int(self.starts[shard])} of the shard) cannot be read: {why}; the pack is damaged, "
            "make it again with python -m packs.prepare"
        )
