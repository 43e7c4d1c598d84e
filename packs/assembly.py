"""Finishing a pack from its shards: the sidecar each packed shard leaves, and the files of a finished split.

packs.packing writes a sidecar beside each shard it packs (its labels, its skipped files and, training split,
its running statistics); the sidecar's existence marks the shard done. Once every shard of a split has one,
`assemble` combines them into labels.npy, index.json and (training split) stats.pt; `write_meta` then
writes skipped.txt and, last, meta.json.
"""

from pathlib import Path

import numpy as np
import torch

from data.imageset import SIDE
from data.pack_format import FORMAT, RAW, SPLITS, VERSION, read_json, shard_name, write_json
from data.stats import StatsAccumulator
from files import read_torch, replacing, write_atomic

MAX_SIDECAR_BYTES = 2**28
"""Largest sidecar read: a shard's labels, skipped files and running sums (1.6 MB) take far less."""


def sidecar_path(folder: Path, shard: int) -> Path:
    """The sidecar of shard `shard` of the split in `folder`: once it exists, the shard is done."""
    return (folder / shard_name(shard)).with_suffix(".pt")


def atomic_save(value: dict, path: Path) -> None:
    """torch.save under a temporary name, then renamed: a killed run leaves no half file under `path`."""
    with replacing(path) as out:
        torch.save(value, out)


def assemble(dst: Path, folder: Path, shards: int, left_out: tuple[tuple[str, str], ...], encoding: str) -> None:
    """Combine the shard sidecars of a finished split into labels.npy, index.json, stats.pt and (images
    stored as `encoding` jpeg) lengths.npy.

    `left_out` (what was skipped before decoding) comes first in the skipped files.
    """
    counts, labels, lengths, skipped = [], [], [], [list(entry) for entry in left_out]
    acc = StatsAccumulator(SIDE)
    for k in range(shards):
        part = read_torch(sidecar_path(folder, k), MAX_SIDECAR_BYTES, "a shard's sidecar")
        counts.append(len(part["labels"]))
        labels.append(part["labels"])
        if encoding != RAW:
            lengths.append(part["lengths"])
        skipped += part["skipped"]
        if part["stats"]:
            # The sidecar holds an accumulator's running sums (its vars), saved as plain tensors and ints.
            shard_acc = StatsAccumulator(SIDE)
            shard_acc.__dict__.update(part["stats"])
            acc.merge(shard_acc)
    if not sum(counts):
        _write_skipped(dst, _lines(folder.name, skipped))
        raise ValueError(
            f"{folder.name}: not one image could be decoded; {dst / 'skipped.txt'} lists the {len(skipped)} "
            f"skipped and why{skipped_examples(skipped)}"
        )
    _save_npy(torch.cat(labels), folder / "labels.npy")
    if encoding != RAW:  # JPEG records: their lengths say where each one is
        _save_npy(torch.cat(lengths), folder / "lengths.npy")
    if folder.name == "train":
        atomic_save(acc.result().as_dict(), dst / "stats.pt")
    write_json(folder / "index.json", {"counts": counts, "skipped": skipped})


def _save_npy(values: torch.Tensor, path: Path) -> None:
    with replacing(path) as f:
        np.save(f, values.numpy())


def skipped_examples(skipped: list | tuple) -> str:
    """The first few skipped entries and why, for an error message."""
    return "".join(["; for example:"] + [f"\n  {name}: {reason}" for name, reason in skipped[:3]]) if skipped else ""


def write_meta(dst: Path, ids: list[str], names: list[str], encoding: dict) -> None:
    """meta.json (with `encoding`'s fields: packs/encoding.py's Encoding.meta) and skipped.txt for the splits
    finished in `dst`."""
    finished = _finished(dst)
    splits = {split: {"images": sum(index["counts"]), "skipped": len(index["skipped"])} for split, index in finished}
    _write_skipped(dst, [])
    write_json(dst / "meta.json", {"format": FORMAT, "version": VERSION, **encoding, "side": SIDE, "ids": ids,
                                   "names": names, "splits": splits})


def _finished(dst: Path) -> list[tuple[str, dict]]:
    """(split, its index.json) of each split finished in `dst`."""
    indexes = [(split, dst / split / "index.json") for split in SPLITS]
    return [(split, read_json(index)) for split, index in indexes if index.is_file()]


def _write_skipped(dst: Path, more: list[str]) -> None:
    """skipped.txt: the skipped files of the finished splits, then the lines `more`."""
    lines = [line for split, index in _finished(dst) for line in _lines(split, index["skipped"])]
    write_atomic(dst / "skipped.txt", "".join(lines + more))


def _lines(split: str, skipped: list) -> list[str]:
    return [f"{split}\t{printable(name)}\t{printable(reason)}\n" for name, reason in skipped]


def printable(text: str) -> str:
    """`text` as UTF-8 can hold it: a file name's bytes that are not UTF-8 (which Python keeps as lone
    surrogates) are written as \\xNN escapes instead of failing the write."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
