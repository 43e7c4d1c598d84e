"""A small genuine checkpoint for the checkpoint reader tests, and the tools to tamper with its files.

Every code payload only creates a marker file (in the test's tmp_path) when it runs.
"""

import json
import os
import pathlib
import struct

import torch

from checkpoints import store


def genuine_state() -> dict:
    """A model and progress state of several dtypes and shapes (0-d included), nested, the same at every call."""
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
            "conv.bias": torch.randn(4, generator=g),
            "fc.weight": torch.randn(5, 6, generator=g).to(torch.bfloat16),
            "fc.index": torch.arange(7),
            "towers": {"1": {"mask": torch.tensor([True, False, True])}},
        },
        "progress": {"step": torch.tensor(3), "best": torch.tensor(0.3, dtype=torch.float64)},
    }


ROOM = store.max_data_bytes(genuine_state(), None)
"""The tensor data a reader of the genuine state allows a folder (store.load's bound without a model config)."""


def zeros_like(state: dict) -> dict:
    """A state of the same structure, shapes and dtypes, all zeros: what a load fills."""
    return {k: zeros_like(v) if isinstance(v, dict) else torch.zeros_like(v) for k, v in state.items()}


def save_checkpoint(state: dict, root: pathlib.Path, step: int = 1) -> pathlib.Path:
    """`state` saved by the project's writer as checkpoint `step` in `root`; returns its folder."""
    return store.save(state, root, step, keep=10)


def shard(folder: pathlib.Path) -> pathlib.Path:
    """The one data file of a checkpoint written by one process."""
    (only,) = folder.glob("*.safetensors")
    return only


def read_header(path: pathlib.Path) -> tuple[dict, bytes]:
    """A safetensors file's header (parsed, trusting it) and the bytes after it."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_file(path: pathlib.Path, header: dict, data: bytes) -> pathlib.Path:
    """A safetensors file with `header` (as given, consistent or not) followed by `data`."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def relaid(header: dict, changes: dict[str, dict]) -> tuple[dict, int]:
    """`header` with each key's entry updated by `changes` (a dtype, a shape) and every tensor laid end to
    end again, and the bytes its tensors then take: a well-formed file, only its tensors are not the ones
    saved."""
    sizes = {"F64": 8, "F32": 4, "I64": 8, "BF16": 2, "BOOL": 1, "F16": 2, "I32": 4, "U8": 1}
    out, offset = {"__metadata__": header.get("__metadata__", {})}, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        entry = {**entry, **changes.get(key, {})}
        length = sizes[entry["dtype"]] * int(torch.tensor(entry["shape"]).prod())
        out[key] = {**entry, "data_offsets": [offset, offset + length]}
        offset += length
    return out, offset


class Touch:
    """Pickles as pathlib.Path.touch(marker): unpickling it creates the marker file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def sparse(path: pathlib.Path, prefix: bytes, size: int) -> pathlib.Path:
    """A file of `size` bytes that starts with `prefix`, the rest a hole (no disk used)."""
    path.write_bytes(prefix)
    os.truncate(path, size)
    return path


def assert_same_state(got: dict, want: dict) -> None:
    """`got` holds `want`'s keys, nested alike, each tensor of the same dtype, shape and values."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, dict):
            assert_same_state(got[key], value)
        else:
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key
