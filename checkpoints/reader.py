"""Read torch.distributed.checkpoint (DCP) folders without running code stored in them.

DCP runs code from a checkpoint in two places. Its `FileSystemReader.read_metadata` unpickles
`.metadata` with a plain `pickle.load`: here checkpoints/metadata.py reads it with
an allow-listed unpickler instead. And for every entry the metadata calls
`BytesStorageMetadata`, `DefaultLoadPlanner.load_bytes` unpickles the entry's bytes from the
`.distcp` file with `torch.load(weights_only=False)` (torch 2.11 `default_planner.py` lines
367/370-371, torch 2.14 lines 388/391-393); since the metadata chooses which entries are
bytes, a crafted `.metadata` can turn even a tensors-only state dict into a code-running load.
So `SafeFileSystemReader.read_data` first loads each bytes entry with
`torch.load(weights_only=True)` (refusing it with `UnsafeCheckpoint` if that fails) and hands
the planner a re-serialization of that safe object: the planner's unsafe load only ever sees
bytes this module wrote.

Tensor entries were already safe: DCP reads them with `torch.load(..., weights_only=True)`
(torch 2.11 `filesystem.py` lines 899-903, torch 2.14 lines 907-911).

Usage::

    dcp.load(state, storage_reader=SafeFileSystemReader(path))   # errors wrapped by DCP
    load_checkpoint(state, path)                                  # same, errors unwrapped
    md = read_metadata(path)                                      # keys and shapes only
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from checkpoints.metadata import (
    ALLOWED_GLOBALS,
    MAX_METADATA_BYTES,
    CorruptCheckpoint,
    UnsafeCheckpoint,
    _describe,
    _read_bounded,
    _unpickle_metadata,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "CorruptCheckpoint",
    "MAX_METADATA_BYTES",
    "SafeFileSystemReader",
    "UnsafeCheckpoint",
    "load_checkpoint",
    "read_metadata",
]

METADATA_FILE = ".metadata"


def _metadata_file(path: str | os.PathLike, rank: int | None = None) -> pathlib.Path:
    p = pathlib.Path(path)
    if p.is_dir():
        return p / (METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}")
    return p


def read_metadata(
    path: str | os.PathLike, *, rank: int | None = None, max_bytes: int = MAX_METADATA_BYTES
) -> Metadata:
    """The Metadata of the checkpoint folder `path` (or of the metadata file `path` itself).

    `rank` reads the rank-local `__{rank}.metadata` DCP writes without rank coordination.
    Raises UnsafeCheckpoint (a refused global, an oversized file, a data file outside the
    folder), CorruptCheckpoint (truncated or not DCP metadata), or OSError (no such file).
    """
    file = _metadata_file(path, rank)
    with open(file, "rb") as stream:
        data = _read_bounded(stream, file, max_bytes)
    return _unpickle_metadata(data, file)


def _first_line_with(text: str, marker: str) -> str:
    for line in text.splitlines():
        if marker in line:
            return line.strip()
    return " ".join(text.split())[:500]


class _CheckedBytesPlanner:
    """A LoadPlanner stand-in for read_data: bytes entries pass torch.load(weights_only=True)."""

    def __init__(self, planner: Any, reader: SafeFileSystemReader) -> None:
        self._planner = planner
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        info = self._reader.storage_data.get(read_item.storage_index)
        relative = getattr(info, "relative_path", "?")
        where = _describe(self._reader.fs.concat_path(self._reader.path, relative))
        fqn = read_item.storage_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as err:
            reason = _first_line_with(str(err), "WeightsUnpickler error")
            raise UnsafeCheckpoint(
                f"{where}: refusing entry {fqn!r}: its bytes do not load with torch.load(weights_only=True), "
                f"which DCP's planner would have unpickled with weights_only=False: {type(err).__name__}: {reason}",
                path=where,
            ) from err
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        self._planner.load_bytes(read_item, clean)


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader that runs nothing stored in the checkpoint.

    `.metadata` goes through the allow-listed unpickler of checkpoints/metadata.py,
    capped at `max_metadata_bytes`. With `check_bytes` (the default) every bytes entry must load
    with `torch.load(weights_only=True)` before the planner sees it; turn it off only for a
    planner that does not unpickle bytes entries itself.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        _extension_registry: Any = None,
        *,
        max_metadata_bytes: int = MAX_METADATA_BYTES,
        check_bytes: bool = True,
    ) -> None:
        super().__init__(path, _extension_registry)
        self.max_metadata_bytes = max_metadata_bytes
        self.check_bytes = check_bytes

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        # DCP's loader looks for "kwargs" in this signature to try rank-local metadata (rank=...).
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as stream:
            data = _read_bounded(stream, path, self.max_metadata_bytes)
        metadata = _unpickle_metadata(data, path)

        # What FileSystemReader.read_metadata does after unpickling (identical in torch 2.11-2.14).
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: Any, planner: Any) -> Any:
        if self.check_bytes:
            planner = _CheckedBytesPlanner(planner, self)
        return super().read_data(plan, planner)


def _own_error(err: BaseException) -> BaseException | None:
    """The UnsafeCheckpoint/CorruptCheckpoint a DCP CheckpointException wraps, if it wraps one."""
    for exc, _ in getattr(err, "failures", {}).values():
        if isinstance(exc, (UnsafeCheckpoint, CorruptCheckpoint)):
            return exc
    return None


def load_checkpoint(
    state_dict: dict[str, Any],
    path: str | os.PathLike,
    *,
    planner: Any = None,
    process_group: Any = None,
    max_metadata_bytes: int = MAX_METADATA_BYTES,
) -> None:
    """`dcp.load(state_dict, storage_reader=SafeFileSystemReader(path))`, errors unwrapped.

    DCP swallows an exception from read_metadata (it then tries rank-local metadata and fails
    with "metadata is None"; torch 2.11 does not even keep the cause) and wraps errors of
    read_data in a CheckpointException (a BaseException). So the metadata is checked here
    first, and an UnsafeCheckpoint/CorruptCheckpoint from read_data is re-raised unwrapped.
    """
    reader = SafeFileSystemReader(path, max_metadata_bytes=max_metadata_bytes)
    try:
        reader.read_metadata()
    except FileNotFoundError as missing:
        # DCP falls back to the rank-local __{rank}.metadata: check that one the same way.
        rank = dist.get_rank(process_group) if dist.is_available() and dist.is_initialized() else 0
        try:
            reader.read_metadata(rank=rank)
        except FileNotFoundError:
            raise missing from None
    try:
        dcp.load(state_dict, storage_reader=reader, planner=planner, process_group=process_group)
    except dcp.CheckpointException as err:
        own = _own_error(err)
        if own is not None:
            raise own from err
        raise

