"""A small genuine DCP checkpoint for the checkpoint_reader tests, and the tools to tamper with it.

Every payload only creates a marker file (in the test's tmp_path) when it runs.
"""

import pathlib
import pickle

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import Metadata


def genuine_state() -> dict:
    """A model and progress state of several dtypes, nested, the same at every call."""
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
            "conv.bias": torch.randn(4, generator=g),
            "fc.weight": torch.randn(5, 6, generator=g).to(torch.bfloat16),
            "fc.index": torch.arange(7),
            "towers": {"1": {"mask": torch.tensor([True, False, True])}},
        },
        "progress": {"step": torch.tensor(3)},
    }


def zeros_like(state: dict) -> dict:
    """A state of the same structure, shapes and dtypes, all zeros: what a load fills."""
    return {k: zeros_like(v) if isinstance(v, dict) else torch.zeros_like(v) for k, v in state.items()}


def save_checkpoint(state: dict, path: pathlib.Path) -> pathlib.Path:
    """`state` saved by stock DCP into the folder `path`; returns `path`."""
    dcp.save(state, checkpoint_id=path)
    return path


class Touch:
    """Pickles as pathlib.Path.touch(marker): a dotted name inside the allowed `pathlib` module."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def write_metadata(md: Metadata, path: pathlib.Path) -> None:
    """Replace the .metadata of the checkpoint in `path` with `md`, pickled as is."""
    with open(path / ".metadata", "wb") as f:
        pickle.dump(md, f)


def plain_metadata(path: pathlib.Path) -> Metadata:
    """The .metadata of the checkpoint in `path`, read with plain pickle.load (trusting it)."""
    with open(path / ".metadata", "rb") as f:
        return pickle.load(f)
