"""Writing a pack with every core, shard by shard, so that an interrupted run resumes where it stopped.

Each split's images are cut into shards of `shard_size` in a fixed order, and each
shard is one task for a pool of processes: decode every image, append it to the
shard file, note its label, list it in the skipped files if it cannot be decoded,
and (training split) add it to the shard's running statistics. A shard is done once
its sidecar exists; both files are written under temporary names and renamed, so a
killed run leaves no half shard that a later run would mistake for a finished one.
When every shard of a split is done, the sidecars are combined into labels.npy,
index.json and (training split) stats.pt; meta.json is written last.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from data.decode import DECODE_ERRORS
from data.packed import FORMAT, SIDE, SPLITS, VERSION, read_json, shard_name, write_json
from data.stats import StatsAccumulator


@dataclass(frozen=True)
class Split:
    """The images of one split: where each comes from, its name in listings, and its class."""

    name: str
    """train or val."""
    files: list[str]
    """A name per image, as skipped.txt lists it (e.g. the path relative to the source folder)."""
    sources: list[Any]
    """What `decode` takes for each image (a path, a small array); sent to the packing processes."""
    labels: list[int]
    """Class index of each image."""
    decode: Callable[[Any], torch.Tensor]
    """A module-level function: source -> uint8 [3, 256, 256]; raises one of DECODE_ERRORS for a bad image."""


@dataclass(frozen=True)
class _Shard:
    """One packing task: the images of shard `index` of the split in `folder`."""

    folder: Path
    index: int
    files: list[str]
    sources: list[Any]
    labels: list[int]
    decode: Callable[[Any], torch.Tensor]
    stats: bool


def pack(dst: Path, splits: list[Split], ids: list[str], names: list[str], shard_size: int, workers: int) -> int:
    """Pack `splits` into `dst` with `workers` processes; returns how many images this run decoded.

    Shards and splits already finished in `dst` are kept as they are, so running the
    same command again after an interruption finishes the pack, and over a finished
    pack does nothing.
    """
    if (dst / "meta.json").is_file() and read_json(dst / "meta.json")["ids"] != ids:
        raise ValueError(f"{dst}: already holds a pack with other classes; pack into a new folder")
    decoded, assembled = 0, False
    for split in splits:
        if split.name not in SPLITS:
            raise ValueError(f"split {split.name!r}: must be one of {SPLITS}")
        if not split.files:
            raise ValueError(f"{split.name}: no images to pack")
        folder = dst / split.name
        _check_plan(folder, split, ids, shard_size)
        if (folder / "index.json").is_file():
            continue
        decoded += _pack_shards(folder, split, shard_size, workers)
        _assemble(dst, folder, math.ceil(len(split.files) / shard_size))
        assembled = True
    if assembled or not (dst / "meta.json").is_file():
        _write_meta(dst, ids, names)
    return decoded


def _check_plan(folder: Path, split: Split, ids: list[str], shard_size: int) -> None:
    """Refuse to resume a split from a different list of images: its shard k would hold other images."""
    digest = hashlib.sha256(json.dumps([ids, split.files, split.labels, shard_size]).encode()).hexdigest()
    plan = {"images": len(split.files), "shard_size": shard_size, "digest": digest}
    path = folder / "plan.json"
    if path.is_file():
        if read_json(path) != plan:
            raise ValueError(f"{folder}: was started from other images, classes or shard size; pack into a new folder")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


def _pack_shards(folder: Path, split: Split, shard_size: int, workers: int) -> int:
    tasks = []
    for k, start in enumerate(range(0, len(split.files), shard_size)):
        if not _sidecar(folder, k).is_file():
            end = start + shard_size
            part = split.files[start:end], split.sources[start:end], split.labels[start:end]
            tasks.append(_Shard(folder, k, *part, split.decode, split.name == "train"))
    todo = sum(len(task.files) for task in tasks)
    if not tasks:
        return 0
    total = len(split.files)
    skipped = 0
    with tqdm(total=total, initial=total - todo, unit="img", desc=split.name) as bar, Pool(workers, _one_thread) as pool:
        for done, bad in pool.imap_unordered(_pack_shard, tasks):
            skipped += bad
            bar.set_postfix(skipped=skipped, refresh=False)
            bar.update(done)
    return todo


def _one_thread() -> None:
    # One packing process per core: torch's own threads would only contend with the others.
    torch.set_num_threads(1)


def _sidecar(folder: Path, shard: int) -> Path:
    return (folder / shard_name(shard)).with_suffix(".pt")


def _pack_shard(shard: _Shard) -> tuple[int, int]:
    """Decode and write one shard; returns (images attempted, images skipped)."""
    path = shard.folder / shard_name(shard.index)
    acc = StatsAccumulator(SIDE) if shard.stats else None
    labels, skipped = [], []
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        for name, source, label in zip(shard.files, shard.sources, shard.labels):
            try:
                image = shard.decode(source)
            except DECODE_ERRORS as error:
                skipped.append([name, _reason(error)])
                continue
            if image.shape != (3, SIDE, SIDE) or image.dtype != torch.uint8:
                raise TypeError(f"{name}: decode gave {image.dtype} {tuple(image.shape)}, not uint8 (3, {SIDE}, {SIDE})")
            out.write(image.contiguous().numpy().data)
            labels.append(label)
            if acc is not None:
                acc.add(image[None])
    tmp.replace(path)
    sidecar = {"labels": torch.tensor(labels, dtype=torch.int64), "skipped": skipped, "stats": vars(acc) if acc else {}}
    _save(sidecar, _sidecar(shard.folder, shard.index))
    return len(shard.files), len(skipped)


def _reason(error: Exception) -> str:
    """One line for skipped.txt: the exception's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def _save(value: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(value, tmp)
    tmp.replace(path)


def _assemble(dst: Path, folder: Path, shards: int) -> None:
    """Combine the shard sidecars of a finished split into labels.npy, index.json and stats.pt."""
    counts, labels, skipped = [], [], []
    acc = StatsAccumulator(SIDE)
    for k in range(shards):
        part = torch.load(_sidecar(folder, k), weights_only=True)
        counts.append(len(part["labels"]))
        labels.append(part["labels"])
        skipped += part["skipped"]
        if part["stats"]:
            # The sidecar holds an accumulator's running sums (its vars), saved as plain tensors and ints.
            shard_acc = StatsAccumulator(SIDE)
            shard_acc.__dict__.update(part["stats"])
            acc.merge(shard_acc)
    with open(folder / "labels.npy.tmp", "wb") as f:
        np.save(f, torch.cat(labels).numpy())
    (folder / "labels.npy.tmp").replace(folder / "labels.npy")
    if folder.name == "train":
        _save(acc.result().as_dict(), dst / "stats.pt")
    write_json(folder / "index.json", {"counts": counts, "skipped": skipped})


def _write_meta(dst: Path, ids: list[str], names: list[str]) -> None:
    """meta.json and skipped.txt for the splits finished in `dst`."""
    splits, lines = {}, []
    for split in SPLITS:
        if (dst / split / "index.json").is_file():
            index = read_json(dst / split / "index.json")
            splits[split] = {"images": sum(index["counts"]), "skipped": len(index["skipped"])}
            lines += [f"{split}\t{name}\t{reason}\n" for name, reason in index["skipped"]]
    (dst / "skipped.txt").write_text("".join(lines))
    write_json(dst / "meta.json", {"format": FORMAT, "version": VERSION, "side": SIDE, "ids": ids, "names": names, "splits": splits})
