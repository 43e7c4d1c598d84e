"""Trained weights as one file to share: the grouped, Caffe-named state dict in safetensors.

`python -m results export --out FILE.safetensors` writes model/export.py's grouped state dict
with the ModelConfig it was trained with (JSON under the metadata key "model"); every command
that takes `--checkpoint` loads such a file into any layout, each process cutting its own
tower's slices out of the whole layers (model/export.py `towers_state_dict`).

Safetensors rather than torch.save: a .pt file is a pickle, so opening one that someone sent
runs what its author chose; a safetensors file is an 8-byte length, a JSON header and raw
tensor bytes. Reading one here also never reads more than this model needs. Before a tensor
byte is read, `check_weights` has the header checked (checkpoints/tensor_file.py: its length held
to tensor_file.MAX_HEADER_BYTES and the data to what this model's weights take, then safetensors' own parser:
tensors laid end to end, covering exactly the rest of the file), compares its model config with this run's (checkpoints/recorded_model.py), and
requires exactly this model's keys, each with this model's dtype and shape. Every mismatch is a
UserError naming the file, the key and both values.
"""

from pathlib import Path
from typing import Any, Sequence

import safetensors.torch
import torch

import files
from checkpoints.recorded_model import check_recorded, record
from checkpoints.tensor_file import Spec, check_tensors, open_checked, spec_bytes, spec_of, specs
from config.errors import UserError
from model.alexnet import AlexNet
from model.config import ModelConfig
from model.export import grouped_state_dict, towers_state_dict

SUFFIX = ".safetensors"
MODEL_KEY = "model"
"""The metadata entry holding the ModelConfig the weights were trained with, as JSON."""


def is_weights_file(path: str | Path) -> bool:
    """Whether `path` names a weights file (rather than a checkpoint folder), there or not."""
    return Path(path).suffix == SUFFIX and not Path(path).is_dir()


def save_weights(towers_state: dict[str, torch.Tensor], cfg: ModelConfig, target: str | Path) -> Path:
    """Write every tower of `towers_state` as one grouped state dict, atomically, with `cfg` in its
    metadata. Name `target` *.safetensors: that suffix is what tells a weights file from a checkpoint."""
    target = Path(target)
    grouped = {k: v.detach().cpu().contiguous() for k, v in grouped_state_dict(towers_state, cfg.towers).items()}
    with files.atomic_path(target) as partial:
        safetensors.torch.save_file(grouped, partial, metadata={MODEL_KEY: record(cfg)})
    return target


def _expected(cfg: ModelConfig) -> dict[str, Spec]:
    """key -> (dtype name, shape) of the grouped state dict of `cfg`'s net, built on the meta device: the
    shapes without allocating a weight. float32 in every layout and precision (bf16 is autocast)."""
    with torch.device("meta"):
        grouped = grouped_state_dict(AlexNet(cfg).state_dict(), cfg.towers)
    return {k: spec_of(v) for k, v in grouped.items()}


def _check_open(path: Path, opened: Any, cfg: ModelConfig) -> None:
    recorded = (opened.metadata() or {}).get(MODEL_KEY)
    if recorded is None:
        raise UserError(f"{path}: no model config in its metadata (key {MODEL_KEY!r}); only files written by "
                        "python -m results export are read")
    check_recorded("weights file", path, recorded, cfg)
    check_tensors(path, specs(opened), _expected(cfg))


def _opened(path: Path, cfg: ModelConfig):
    """The weights file `path` opened, once it holds no more than twice the data of `cfg`'s weights: a file
    declaring far more (a terabyte in a sparse file) is refused before it is mapped, and one that differs by a
    tensor or a shape gets to the checks that name it."""
    weights = sum(spec_bytes(s) for s in _expected(cfg).values())
    return open_checked(path, 2 * weights, "twice this model's weights")


def check_weights(path: str | Path, cfg: ModelConfig) -> None:
    """Refuse the weights file `path` unless it holds exactly the grouped weights of `cfg`'s net;
    only its header is read."""
    path = Path(path)
    with _opened(path, cfg) as opened:
        _check_open(path, opened, cfg)


class _Lazy:
    """A tensor in a safetensors file as towers_state_dict needs it: a shape, and indexing that reads
    only the part asked for (one process's tower, not the whole layer)."""

    def __init__(self, part: Any) -> None:
        self.part, self.shape = part, tuple(part.get_shape())

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.part[index]


def load_weights(net: AlexNet, path: str | Path, cfg: ModelConfig) -> None:
    """Fill `net`'s towers (all, or this process's one) from the weights file `path`, checked first."""
    path = Path(path)
    state = net.state_dict()
    towers: Sequence[int] = [int(t) for t in net.towers]
    with _opened(path, cfg) as opened:
        _check_open(path, opened, cfg)
        parts = towers_state_dict({k: _Lazy(opened.get_slice(k)) for k in opened.keys()}, cfg.towers, towers)
    with torch.no_grad():
        for key, value in parts.items():
            target = state[key]
            if value.shape != target.shape or value.dtype != target.dtype:
                raise UserError(f"{path}: {key} is {value.dtype} {list(value.shape)}, this net's is "
                                f"{target.dtype} {list(target.shape)}")
            target.copy_(value)
