"""Packs for the tests: a small one written by hand in the format data/packed.py describes (two classes, three
training images in two shards, one validation image), and what a pack the packer wrote says it skipped."""

import json
from pathlib import Path

import numpy as np
import torch

from data.imageset import IMAGE_SHAPE
from data.packed import IMAGE_BYTES

COUNTS = {"train": [2, 1], "val": [1]}
LABELS = {"train": [0, 1, 1], "val": [1]}


def stats() -> dict[str, torch.Tensor]:
    return {"mean_image": torch.full(IMAGE_SHAPE, 100.0), "channel_mean": torch.full((3,), 100.0),
            "eigenvalues": torch.tensor([1.0, 2.0, 3.0]), "eigenvectors": torch.eye(3)}


def write_pack(root: Path) -> Path:
    """The hand-made pack at `root` (the `pack` fixture's)."""
    for split, counts in COUNTS.items():
        (root / split).mkdir(parents=True)
        for k, count in enumerate(counts):
            (root / split / f"images_{k:05d}.u8").write_bytes(bytes(count * IMAGE_BYTES))
        np.save(root / split / "labels.npy", np.array(LABELS[split], dtype=np.int64))
        (root / split / "index.json").write_text(json.dumps({"counts": counts, "skipped": [["bad.jpg", "empty"]]}))
    torch.save(stats(), root / "stats.pt")
    splits = {split: {"images": sum(counts), "skipped": 1} for split, counts in COUNTS.items()}
    (root / "meta.json").write_text(json.dumps({"format": "alexnet-packed", "version": 1, "side": 256,
                                                "ids": ["a", "b"], "names": ["apple", "pear"], "splits": splits}))
    return root


def skipped_lines(dst: Path) -> list[list[str]]:
    """The packer's skipped.txt in `dst`, each line split into its fields."""
    return [line.split("\t") for line in (dst / "skipped.txt").read_text().splitlines()]
