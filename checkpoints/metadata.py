"""Unpickle a DCP `.metadata` file without running code stored in it.

DCP's own `FileSystemReader.read_metadata` uses a plain `pickle.load` (torch 2.11
`torch/distributed/checkpoint/filesystem.py` line 930, torch 2.14 line 938), so a checkpoint
folder from someone else runs whatever its pickle asks for the moment it is loaded;
`torch.load(weights_only=True)` is not involved at all.

Here `_MetadataUnpickler` resolves only the globals DCP metadata is made of (`ALLOWED_GLOBALS`)
and lets BUILD set state only on instances of the DCP metadata dataclasses, never on a class.
The file is refused unread above `MAX_METADATA_BYTES`, and the result must be a `Metadata`
whose data-file names stay inside the checkpoint folder. checkpoints/reader.py
builds the reader and loader on top of this.
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import re
from typing import Any

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    _MEM_FORMAT_ENCODING,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "CorruptCheckpoint",
    "MAX_METADATA_BYTES",
    "UnsafeCheckpoint",
]

MAX_METADATA_BYTES = 64 * 2**20
"""Largest `.metadata` read. The paper's two-tower AlexNet (61M parameters, velocities too,
64 entries) writes 16 KB of metadata; the cap leaves room for models thousands of times larger."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint file asks for something loading must not do: refused before doing it.

    `path` is the file; `global_name` the refused `module.name` where a global was refused.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, global_name: str | None = None):
        super().__init__(message)
        self.path = path
        self.global_name = global_name


class CorruptCheckpoint(ValueError):
    """A checkpoint file is truncated or not what DCP writes (nothing in it was run)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = path


# --- the allow-list -------------------------------------------------------------------------

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_DCP_FILESYSTEM = "torch.distributed.checkpoint.filesystem"

# Instances of these may have their state set by the pickle (BUILD); nothing else may.
_BUILDABLE = (
    Metadata,
    TensorStorageMetadata,
    BytesStorageMetadata,
    ChunkStorageMetadata,
    TensorProperties,
    MetadataIndex,
    StorageMeta,
    _StorageInfo,
)


def _pathlib_globals() -> dict[tuple[str, str], Any]:
    """StorageMeta.checkpoint_id is whatever the saver passed: often a pathlib path.

    Pickled as (class, parts), the class named `pathlib.X` (`pathlib._local.X` from Python
    3.13). A concrete path of the other OS's flavour cannot be built here, so it is read as
    the matching pure path; building a path touches no file.
    """
    posix = os.name != "nt"
    names = {
        "PurePath": pathlib.PurePath,
        "PurePosixPath": pathlib.PurePosixPath,
        "PureWindowsPath": pathlib.PureWindowsPath,
        "Path": pathlib.Path,
        "PosixPath": pathlib.PosixPath if posix else pathlib.PurePosixPath,
        "WindowsPath": pathlib.PureWindowsPath if posix else pathlib.WindowsPath,
    }
    return {(module, name): cls for module in ("pathlib", "pathlib._local") for name, cls in names.items()}


def _torch_constants() -> dict[tuple[str, str], Any]:
    """torch dtypes, layouts and memory formats, pickled as the global `torch.<name>`.

    Taken from torch's namespace once, never by getattr on a name from the file (torch's
    module __getattr__ imports submodules on demand).
    """
    kinds = (torch.dtype, torch.layout, torch.memory_format)
    return {("torch", name): value for name, value in vars(torch).items() if isinstance(value, kinds)}


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # The Metadata tree DCP pickles (torch/distributed/checkpoint/metadata.py).
    (_DCP_METADATA, "Metadata"): Metadata,
    (_DCP_METADATA, "TensorStorageMetadata"): TensorStorageMetadata,
    (_DCP_METADATA, "BytesStorageMetadata"): BytesStorageMetadata,
    (_DCP_METADATA, "ChunkStorageMetadata"): ChunkStorageMetadata,
    (_DCP_METADATA, "TensorProperties"): TensorProperties,
    (_DCP_METADATA, "MetadataIndex"): MetadataIndex,
    (_DCP_METADATA, "StorageMeta"): StorageMeta,
    # TensorProperties.__getstate__ stores the memory format as this enum (called with its value).
    (_DCP_METADATA, "_MEM_FORMAT_ENCODING"): _MEM_FORMAT_ENCODING,
    # Metadata.storage_data values: where each entry lies in which .distcp file.
    (_DCP_FILESYSTEM, "_StorageInfo"): _StorageInfo,
    # Tensor sizes, chunk offsets and sizes.
    ("torch", "Size"): torch.Size,
    # torch.layout pickles as torch.serialization._get_layout("torch.strided") (a lookup by name).
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    # Harmless containers torch's own weights_only list also has; DCP does not write them today.
    ("collections", "OrderedDict"): collections.OrderedDict,
    **_torch_constants(),
    **_pathlib_globals(),
}
"""(module, name) -> object: the only globals a `.metadata` pickle may name.

Derived by recording every global the unpickler asks for while loading the `.metadata` of
checkpoints written with `dcp.save` on torch 2.14 (tensors of many dtypes, 0-d tensors, nested
dicts, channels-last and non-contiguous tensors, ints/strings/lists as bytes entries, one file
per rank or per entry, the project's AlexNet training state), and by reading metadata.py and
filesystem.py of torch 2.11 and 2.14 (identical classes). No builtins are needed: dicts,
lists, tuples, strings, numbers, booleans and None have opcodes of their own, and DCP pickles
with protocol >= 4, where dataclasses are made with NEWOBJ (no copyreg global)."""


def _describe(path: Any) -> str:
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)


# The pure-Python unpickler: its memo is a dict, where the C unpickler's is an array grown to
# the largest index a pickle names (a 9-byte file with LONG_BINPUT 2**30 would cost 16 GiB).
_PyUnpickler = getattr(pickle, "_Unpickler", pickle.Unpickler)


class _MetadataUnpickler(_PyUnpickler):  # type: ignore[misc, valid-type]
    """Unpickles DCP metadata; refuses every global outside ALLOWED_GLOBALS."""

    def __init__(self, file: Any, path: Any) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # Exact (module, name) pairs only: never resolve dotted names or import anything.
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            pass
        where = _describe(self._path)
        raise UnsafeCheckpoint(
            f"{where}: refusing to unpickle global '{module}.{name}': a DCP metadata file holds only "
            "torch.distributed.checkpoint metadata classes, torch sizes, dtypes and layouts; this file was "
            "not written by torch.distributed.checkpoint or was tampered with, and nothing in it was run",
            path=self._path,
            global_name=f"{module}.{name}",
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpoint(
            f"{_describe(self._path)}: refusing a pickle persistent id ({pid!r:.80}): DCP metadata has none",
            path=self._path,
        )

    if hasattr(_PyUnpickler, "dispatch"):
        dispatch = dict(_PyUnpickler.dispatch)

        def load_build(self) -> None:
            # BUILD on a class would rewrite that class for the whole process.
            target = self.stack[-2] if len(self.stack) >= 2 else None
            if type(target) not in _BUILDABLE:
                raise UnsafeCheckpoint(
                    f"{_describe(self._path)}: refusing to set the state of a {type(target).__qualname__} "
                    "(only DCP metadata objects may have state in a DCP metadata file)",
                    path=self._path,
                )
            super().load_build()

        dispatch[pickle.BUILD[0]] = load_build


def _unsafe_relative_path(name: Any) -> bool:
    """A data file name that leaves the checkpoint folder (absolute, a drive, or '..')."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return True
    if name.startswith(("/", "\\")) or pathlib.PureWindowsPath(name).drive:
        return True
    return any(part == ".." for part in re.split(r"[\\/]+", name))


def _check_metadata(md: Any, path: Any) -> Metadata:
    """What was unpickled is a Metadata whose data files lie inside the checkpoint folder."""
    where = _describe(path)
    if not isinstance(md, Metadata):
        raise CorruptCheckpoint(f"{where}: holds a {type(md).__qualname__}, not DCP Metadata", path=path)
    entries = getattr(md, "state_dict_metadata", None)
    if not isinstance(entries, dict) or not all(
        isinstance(k, str) and isinstance(v, (TensorStorageMetadata, BytesStorageMetadata)) for k, v in entries.items()
    ):
        raise CorruptCheckpoint(f"{where}: its state_dict_metadata is not a dict of DCP entries", path=path)
    storage = getattr(md, "storage_data", None)
    if storage is None:
        return md
    if not isinstance(storage, dict):
        raise CorruptCheckpoint(f"{where}: its storage_data is a {type(storage).__qualname__}, not a dict", path=path)
    for index, info in storage.items():
        if not isinstance(info, _StorageInfo):
            raise CorruptCheckpoint(f"{where}: storage entry {index!r:.200} is a {type(info).__qualname__}", path=path)
        if _unsafe_relative_path(getattr(info, "relative_path", None)):
            raise UnsafeCheckpoint(
                f"{where}: storage entry {index!r:.200} points outside the checkpoint folder "
                f"({getattr(info, 'relative_path', None)!r:.200})",
                path=path,
            )
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not (type(offset) is int and type(length) is int and offset >= 0 and length >= 0):
            raise CorruptCheckpoint(
                f"{where}: storage entry {index!r:.200} has offset {offset!r:.40} and length {length!r:.40}",
                path=path,
            )
    return md


def _read_bounded(stream: Any, path: Any, max_bytes: int) -> bytes:
    """The whole file, refused before reading if the file system says it is over max_bytes,
    and never more than max_bytes + 1 bytes read whatever it says (a pipe, /dev/zero)."""
    where = _describe(path)
    size = None
    try:
        size = os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    if size is not None and size > max_bytes:
        raise UnsafeCheckpoint(
            f"{where}: metadata file is {size} bytes, over the {max_bytes}-byte limit; refusing to read it "
            "(DCP metadata is a few KB to a few MB)",
            path=path,
        )
    chunks, total = [], 0
    while total <= max_bytes:  # in pieces: read(n) sets aside n bytes however short the file
        chunk = stream.read(min(2**20, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise UnsafeCheckpoint(
            f"{where}: metadata file is over the {max_bytes}-byte limit (more than {max_bytes} bytes read); "
            "refusing it",
            path=path,
        )
    return data


def _unpickle_metadata(data: bytes, path: Any) -> Metadata:
    where = _describe(path)
    try:
        md = _MetadataUnpickler(io.BytesIO(data), path).load()
    except UnsafeCheckpoint:
        raise
    except Exception as err:  # EOFError, UnpicklingError, and the rest a malformed pickle raises
        raise CorruptCheckpoint(
            f"{where}: not a readable DCP metadata file ({len(data)} bytes; truncated or corrupt): "
            f"{type(err).__name__}: {err}",
            path=path,
        ) from err
    return _check_metadata(md, path)
