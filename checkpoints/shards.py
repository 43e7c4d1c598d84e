"""The checkpoint format: safetensors files written and read through torch.distributed.checkpoint's public
HuggingFace storage, one file per process, each entry under its full name, so loading a folder unpickles
nothing and a folder two processes wrote loads into one. `check` reads every header first and refuses what
DCP's reader would trust (docs/ARCHITECTURE.md, "Checkpoints")."""

import json
import os
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter

from checkpoints.tensor_file import (
    OtherTensors,
    Spec,
    UnreadableFile,
    check_tensors,
    data_bytes,
    open_checked,
    spec_of,
    specs,
)
from distributed.reductions import first_failure

SUFFIX = ".safetensors"
"""DCP's reader reads every file of the folder with this suffix."""
SHARDING_KEY = "DCP_SHARDING_INFO"
"""The safetensors metadata entry where HuggingFaceStorageWriter records where each tensor's piece starts."""


def flat_specs(state: dict, prefix: str = "") -> dict[str, Spec]:
    """Each tensor of a nested state by DCP's name for it (dict keys joined by '.'), with its dtype and shape."""
    found: dict[str, Spec] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(flat_specs(value, name + "."))
        elif isinstance(value, torch.Tensor):
            found[name] = spec_of(value)
        else:  # DCP would write it as pickled bytes into the safetensors file, which no reader could open
            raise TypeError(f"checkpoint entry {name} is a {type(value).__name__}: safetensors holds tensors only")
    return found


def write(state: dict, folder: Path) -> None:
    """Save `state` (this process's entries) into `folder`, every process its own file; a collective.
    Every value must be a tensor (TypeError before anything is written)."""
    flat_specs(state)
    dcp.save(_dense(state), storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))


def _dense(state: dict) -> dict:
    """`state` with every tensor laid out row-major, as safetensors stores it: a channels_last run's conv
    weights are copied (a few MB); the rest are the tensors themselves. A load copies into any layout."""
    return {k: _dense(v) if isinstance(v, dict) else v.contiguous() for k, v in state.items()}


def check(folder: Path, expected: dict[str, Spec], max_data_bytes: int) -> dict[str, Spec]:
    """Every tensor the files of `folder` hold (DCP's name -> dtype and shape), once each header has been
    checked; UnreadableFile for a damaged folder, or one whose files hold more than `max_data_bytes` of tensors
    together (each is refused before it is mapped), OtherTensors unless the `expected` tensors are there
    (other tensors may be there too: a net loads without the velocity)."""
    try:
        entries = sorted((e for e in os.scandir(folder) if e.name.endswith(SUFFIX)), key=lambda e: e.name)
    except OSError as err:
        raise UnreadableFile(f"cannot list {folder}: {err.strerror or err}") from None
    if not entries:
        raise UnreadableFile(f"{folder} holds no {SUFFIX} file")
    found: dict[str, Spec] = {}
    where: dict[str, str] = {}
    left = max_data_bytes
    for entry in entries:
        path = Path(folder) / entry.name
        if not entry.is_file(follow_symlinks=False):  # a link could lead out of the folder
            raise UnreadableFile(f"{path} is not a regular file (a link, a folder); refused")
        held = data_bytes(path)
        with open_checked(path, left, "a checkpoint of this model holds beside its other files") as opened:
            left -= held
            held = specs(opened)
            _check_whole(path, held, (opened.metadata() or {}).get(SHARDING_KEY))
        for key in held:
            if key in where:
                raise UnreadableFile(f"{folder}: {key} is in both {where[key]} and {entry.name}")
            where[key] = entry.name
        found.update(held)
    check_tensors(folder, found, expected, exact=False)
    return found


def _check_whole(path: Path, held: dict[str, Spec], sharding: str | None) -> None:
    """Each tensor of the file `path` starts at offset 0 in every dimension (DCP's reader would place a piece
    where the file says, and trusts the JSON's form)."""
    if sharding is None:
        return  # DCP's reader takes every tensor as whole
    try:
        pieces = json.loads(sharding)
    except (ValueError, RecursionError):
        pieces = None
    for key, (_, shape) in held.items():
        piece = pieces.get(key) if isinstance(pieces, dict) else None
        offsets = piece.get("saved_offsets") if isinstance(piece, dict) else None
        if offsets != [0] * len(shape):
            raise UnreadableFile(f"{path}: {key} is not a whole tensor ({SHARDING_KEY} gives offsets "
                                 f"{offsets!r:.80}); this project writes whole tensors only")


def read(state: dict, folder: Path, max_data_bytes: int) -> None:
    """Fill `state`'s tensors in place from `folder`, checked first (`check`: its files holding at most
    `max_data_bytes` of tensors); a collective. A check that fails on any process raises its error on every
    process, so none waits in DCP's load for a peer that gave up (each process checks the tensors it holds:
    rank 1's file may be missing for rank 1 alone)."""
    failure: UnreadableFile | OtherTensors | None = None
    try:
        check(folder, flat_specs(state), max_data_bytes)
    except (UnreadableFile, OtherTensors) as err:
        failure = err
    # Each process's failure as (kind, message), strings this run made, gathered as DCP gathers its plans.
    first = first_failure(None if failure is None else (type(failure).__name__, str(failure)))
    if first is not None:
        kind, message = first
        raise OtherTensors(message) if kind == OtherTensors.__name__ else UnreadableFile(message)
    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(folder)))
