"""Writing a pack with every core, shard by shard, so that an interrupted run resumes where it stopped.

Each shard is one task for a pool of processes (decode, append, label, skip, add to the statistics), done once
its sidecar exists; packs.assembly then finishes the split. A packing process that dies has its shards packed
again, those decoding alone, and a file that kills its process there too is skipped (docs/DATA.md, "What is
skipped" and "Interrupted runs").
"""

import ctypes
import hashlib
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from data.decode import DECODE_ERRORS
from data.imageset import SIDE
from data.pack_format import RAW, SPLITS, read_json, shard_name, write_json
from data.stats import StatsAccumulator
from files import create_root, make_folder, replacing
from packs.assembly import assemble, atomic_save, sidecar_path, skipped_examples, write_meta
from packs.encoding import Encoding

DIED = "the packing process died decoding it, even alone (out of memory? a crash in the decoder?)"
"""skipped.txt's reason for a file that killed the process decoding it."""
WRITING = -1
"""In _decoding: the shard is being packed, and no image of it decoded just now."""
_decoding = None
"""In a packing process, shared with the parent: per shard, 1 + the position of the image being decoded, else
WRITING once started (0 before). After a process dies, it says which shards were decoding and what."""


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
    """A module-level function (or a functools.partial of one): source -> uint8 [3, 256, 256]; raises one of
    DECODE_ERRORS for a bad image."""
    skipped: tuple[tuple[str, str], ...] = ()
    """(name, reason) of what was left out before decoding (a folder that cannot be read); listed first."""


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
    encoding: Encoding
    deadly: tuple[int, ...] = ()
    """Positions in the shard of files that killed the process decoding them: skipped, not decoded again."""


def pack(dst: Path, splits: list[Split], ids: list[str], names: list[str], shard_size: int, workers: int,
         encoding: Encoding = Encoding()) -> int:
    """Pack `splits` into `dst` with `workers` processes, storing images as `encoding`; returns how many
    images this run decoded.

    Shards and splits already finished in `dst` are kept as they are, so running the
    same command again after an interruption finishes the pack, and over a finished
    pack does nothing.
    """
    if (dst / "meta.json").is_file():
        meta = read_json(dst / "meta.json")
        if meta["ids"] != ids:
            raise ValueError(f"{dst}: already holds a pack with other classes; pack into a new folder")
        held = {"encoding": RAW, **{k: meta[k] for k in ("encoding", "quality") if k in meta}}
        if held != encoding.meta():
            raise ValueError(f"{dst}: already holds a pack stored as {held}, not {encoding.meta()}; pack into a new folder")
    decoded, assembled = 0, False
    for split in splits:
        if split.name not in SPLITS:
            raise ValueError(f"split {split.name!r}: must be one of {SPLITS}")
        if not split.files:
            raise ValueError(f"{split.name}: no images to pack{skipped_examples(split.skipped)}")
        folder = dst / split.name
        _check_plan(folder, split, ids, shard_size, encoding)
        if (folder / "index.json").is_file():
            continue
        decoded += _pack_shards(folder, split, shard_size, workers, encoding)
        assemble(dst, folder, math.ceil(len(split.files) / shard_size), split.skipped, encoding.name)
        assembled = True
    if assembled or not (dst / "meta.json").is_file():
        write_meta(dst, ids, names, encoding.meta())
    return decoded


def _check_plan(folder: Path, split: Split, ids: list[str], shard_size: int, encoding: Encoding) -> None:
    """Refuse to resume a split from a different list of images (its shard k would hold other images),
    or into another encoding."""
    digest = hashlib.sha256(json.dumps([ids, split.files, split.labels, shard_size]).encode()).hexdigest()
    plan = {"images": len(split.files), "shard_size": shard_size, "digest": digest}
    if encoding.name != RAW:  # raw packs' plans predate encodings, and still resume
        plan.update(encoding.meta())
    create_root(folder.parent)
    make_folder(folder)  # a link in its place is refused: shards go only into a folder of the pack's own
    path = folder / "plan.json"
    if path.is_file():
        if read_json(path) != plan:
            raise ValueError(f"{folder}: was started from other images, classes, shard size or encoding; "
                             "pack into a new folder")
        return
    write_json(path, plan)


def _pack_shards(folder: Path, split: Split, shard_size: int, workers: int, encoding: Encoding) -> int:
    tasks = []
    for k, start in enumerate(range(0, len(split.files), shard_size)):
        if not sidecar_path(folder, k).is_file():
            end = start + shard_size
            part = split.files[start:end], split.sources[start:end], split.labels[start:end]
            tasks.append(_Shard(folder, k, *part, split.decode, split.name == "train", encoding))
    todo = sum(len(task.files) for task in tasks)
    if not tasks:
        return 0
    total = len(split.files)
    with tqdm(total=total, initial=total - todo, unit="img", desc=f"packing {split.name}") as bar:
        _Packer(math.ceil(total / shard_size), workers, bar).run(tasks)
    return todo


class _Packer:
    """Packs shards in a pool of processes, and goes on when one of them dies (the module doc says how)."""

    def __init__(self, shards: int, workers: int, bar: tqdm) -> None:
        self.workers, self.bar, self.skipped = workers, bar, 0
        self.decoding = multiprocessing.RawArray(ctypes.c_int64, shards)

    def run(self, tasks: list[_Shard]) -> None:
        """Pack `tasks`; after a death, the shards that were decoding are packed alone, the others pooled again."""
        while tasks:
            self._pool(tasks, self.workers)
            left = [task for task in tasks if not sidecar_path(task.folder, task.index).is_file()]
            suspects = [task for task in left if self.decoding[task.index] > 0]
            if left and not suspects:
                raise _died(left[0].folder, [task for task in left if self.decoding[task.index] == WRITING])
            tasks = [task for task in left if self.decoding[task.index] <= 0]
            for task in tasks:
                self.decoding[task.index] = 0
            for task in suspects:
                self._alone(task)

    def _alone(self, task: _Shard) -> None:
        """Pack a shard whose process died while it was decoding, in a process of its own.

        Its own image may not be what killed it: the pool stops every process when one
        dies, and the out-of-memory killer picks a process, not a file. Alone, a file
        that kills the process is the culprit.
        """
        while True:
            self.decoding[task.index] = 0
            self._pool([task], 1)
            at = self.decoding[task.index]
            if sidecar_path(task.folder, task.index).is_file():
                return
            if at <= 0:
                raise _died(task.folder, [task] if at == WRITING else [])
            task = replace(task, deadly=task.deadly + (at - 1,))

    def _pool(self, tasks: list[_Shard], workers: int) -> None:
        """Pack `tasks` with `workers` processes, until all are done or one of the processes dies."""
        pool = ProcessPoolExecutor(min(workers, len(tasks)), initializer=_start_worker, initargs=(self.decoding,))
        futures = []
        try:
            try:
                for task in tasks:
                    futures.append(pool.submit(_pack_shard, task))
            except BrokenProcessPool:
                pass  # a process died already; the shards it did not take are packed again
            for future in as_completed(futures):
                try:
                    done, skipped = future.result()
                except BrokenProcessPool:
                    continue
                self.skipped += skipped
                self.bar.set_postfix(skipped=self.skipped, refresh=False)
                self.bar.update(done)
        finally:
            pool.shutdown(cancel_futures=True)


def _died(folder: Path, writing: list[_Shard]) -> BrokenProcessPool:
    """The error for a packing process that died without decoding an image: no file to blame, so no way on."""
    where = f"writing {', '.join(shard_name(task.index) for task in writing)}" if writing else "before packing a shard"
    return BrokenProcessPool(
        f"{folder}: a packing process died {where}, not while decoding an image (out of memory? killed?); "
        "finished shards are kept: run the same command again to resume"
    )


def _start_worker(decoding) -> None:
    """Set up a packing process: one process per core, so torch's own threads would only contend with the others."""
    global _decoding
    torch.set_num_threads(1)
    _decoding = decoding



def _pack_shard(shard: _Shard) -> tuple[int, int]:
    """Decode and write one shard; returns (images attempted, images skipped)."""
    path = shard.folder / shard_name(shard.index, shard.encoding.name)
    acc = StatsAccumulator(SIDE) if shard.stats else None
    labels, lengths, skipped = [], [], []
    _decoding[shard.index] = WRITING
    with replacing(path) as out:
        for at, (name, source, label) in enumerate(zip(shard.files, shard.sources, shard.labels)):
            if at in shard.deadly:
                skipped.append([name, DIED])
                continue
            _decoding[shard.index] = at + 1
            try:
                image = shard.decode(source)
            except DECODE_ERRORS as error:
                skipped.append([name, skip_reason(error)])
                continue
            finally:
                _decoding[shard.index] = WRITING
            if image.shape != (3, SIDE, SIDE) or image.dtype != torch.uint8:
                raise TypeError(f"{name}: decode gave {image.dtype} {tuple(image.shape)}, not uint8 (3, {SIDE}, {SIDE})")
            try:
                stored, image = shard.encoding.store(image)
            except DECODE_ERRORS as error:  # a JPEG record that does not decode back
                skipped.append([name, skip_reason(error)])
                continue
            out.write(stored)
            labels.append(label)
            lengths.append(stored.nbytes)
            if acc is not None:
                acc.add(image[None])
    sidecar = {"labels": torch.tensor(labels, dtype=torch.int64), "skipped": skipped, "stats": vars(acc) if acc else {}}
    if shard.encoding.name != RAW:
        sidecar["lengths"] = torch.tensor(lengths, dtype=torch.int64)
    atomic_save(sidecar, sidecar_path(shard.folder, shard.index))
    return len(shard.files), len(skipped)


def skip_reason(error: Exception) -> str:
    """One line for skipped.txt: the exception's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
