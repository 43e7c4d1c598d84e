"""Trained weights as one file to share: the grouped, Caffe-named state dict in safetensors.

`python -m results export --out FILE.safetensors` writes model/export.py's grouped state dict
with the ModelConfig it was trained with (JSON under the metadata key "model"); every command
that takes `--checkpoint` loads such a file into any layout, each process cutting its own
tower's slices out of the whole layers (model/export.py `towers_state_dict`).

Safetensors rather than torch.save: a .pt file is a pickle, so opening one that someone sent
runs what its author chose; a safetensors file is an 8-byte length, a JSON header and raw
tensor bytes. Reading one here also never reads more than this model needs. Before a tensor
byte is read, `check_weights` holds the header to MAX_HEADER_BYTES, compares its model config
with this run's (ModelConfig.differences), requires exactly this model's keys, each with this
model's dtype and shape, laid end to end, and the file's size to be exactly the header plus
those bytes. Every mismatch is a UserError naming the file, the key and both values.
"""

import json
import os
import stat
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from config.errors import UserError
from model.alexnet import AlexNet
from model.config import ModelConfig
from model.export import grouped_state_dict, towers_state_dict

SUFFIX = ".safetensors"
MODEL_KEY = "model"
"""The metadata entry holding the ModelConfig the weights were trained with, as JSON."""
MAX_HEADER_BYTES = 64 * 1024
"""Largest header read. The paper's net writes about 1.5 KB (16 entries and the model config)."""
DTYPES = {torch.float32: "F32"}
"""safetensors' name of each dtype a net's weights have here: float32 in every layout and precision
(bf16 is autocast, the parameters stay float32)."""


def _safetensors():
    """The safetensors package, imported where a weights file is written or its tensors read: training and
    checkpoints do without it (a GPU image may lack it)."""
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("weights files need the safetensors package: pip install -r requirements.txt") from None
    return safetensors


def is_weights_file(path: str | Path) -> bool:
    """Whether `path` names a weights file (rather than a checkpoint folder), there or not."""
    return Path(path).suffix == SUFFIX and not Path(path).is_dir()


def save_weights(towers_state: dict[str, torch.Tensor], cfg: ModelConfig, target: str | Path) -> Path:
    """Write every tower of `towers_state` as one grouped state dict, atomically, with `cfg` in its
    metadata. Name `target` *.safetensors: that suffix is what tells a weights file from a checkpoint."""
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    grouped = {k: v.detach().cpu().contiguous() for k, v in grouped_state_dict(towers_state, cfg.towers).items()}
    _safetensors().torch.save_file(grouped, partial, metadata={MODEL_KEY: json.dumps(asdict(cfg))})
    partial.rename(target)
    return target


def _expected(cfg: ModelConfig) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """key -> (dtype name, shape, bytes) of the grouped state dict of `cfg`'s net, built on the meta
    device: the shapes without allocating a weight."""
    with torch.device("meta"):
        grouped = grouped_state_dict(AlexNet(cfg).state_dict(), cfg.towers)
    return {k: (DTYPES[v.dtype], tuple(v.shape), v.numel() * v.element_size()) for k, v in grouped.items()}


def _read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of the safetensors file `path` and the bytes that follow it, reading at most
    8 + MAX_HEADER_BYTES bytes of the file."""
    try:
        f = open(path, "rb")
    except OSError as err:
        raise UserError(f"cannot read weights file {path}: {err.strerror or err}") from None
    with f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is not a regular file")
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UserError(f"{path}: {info.st_size} bytes, too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or length > info.st_size - 8:
            raise UserError(f"{path}: its header says it is {length} bytes long, over the {MAX_HEADER_BYTES}-byte "
                            f"limit or the file's {info.st_size} bytes; not a weights file of this project, "
                            "refused unread")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"{path}: its safetensors header is not JSON ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: its safetensors header is a {type(header).__name__}, not a JSON object")
    return header, info.st_size - 8 - length


def _check_config(path: Path, metadata: Any, cfg: ModelConfig) -> None:
    recorded = metadata.get(MODEL_KEY) if isinstance(metadata, dict) else None
    try:
        saved = json.loads(recorded) if isinstance(recorded, str) else None
    except (ValueError, RecursionError):
        saved = None
    if not isinstance(saved, dict):
        raise UserError(f"{path}: no model config in its metadata (key {MODEL_KEY!r}); only files written by "
                        "python -m results export are read")
    differences = cfg.differences(saved)
    if differences:
        raise UserError(f"{path} holds weights of another model config (file -> this run): " + "; ".join(differences)
                        + "; pass the config the weights were trained with")


def check_weights(path: str | Path, cfg: ModelConfig) -> None:
    """Refuse the weights file `path` unless it holds exactly the grouped weights of `cfg`'s net;
    only its header is read."""
    path = Path(path)
    header, data_bytes = _read_header(path)
    _check_config(path, header.pop("__metadata__", None), cfg)
    expected = _expected(cfg)
    extra, missing = sorted(set(header) - set(expected)), sorted(set(expected) - set(header))
    if extra or missing:
        raise UserError(f"{path}: its tensors are not this model's: "
                        + "; ".join([f"unexpected {k!r}" for k in extra[:5]] + [f"missing {k!r}" for k in missing[:5]]))
    spans = []
    for key, (dtype, shape, nbytes) in expected.items():
        entry = header[key]
        entry = entry if isinstance(entry, dict) else {}
        got_dtype, got_shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if got_dtype != dtype:
            raise UserError(f"{path}: {key} has dtype {got_dtype!r}, this model's is {dtype!r}")
        if not isinstance(got_shape, list) or tuple(got_shape) != shape:
            raise UserError(f"{path}: {key} has shape {got_shape!r:.80}, this model's is {list(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and offsets[1] - offsets[0] == nbytes):
            raise UserError(f"{path}: {key} has data offsets {offsets!r:.80}, not a span of its {nbytes} bytes")
        spans.append(offsets)
    total = sum(nbytes for _, _, nbytes in expected.values())
    spans.sort()
    if [start for start, _ in spans] != [0] + [end for _, end in spans[:-1]] or data_bytes != total:
        raise UserError(f"{path}: {data_bytes} bytes follow its header, but this model's tensors take {total} bytes "
                        "laid end to end; truncated, or not written by python -m results export")


class _Lazy:
    """A tensor in a safetensors file as towers_state_dict needs it: a shape, and indexing that reads
    only the part asked for (one process's tower, not the whole layer)."""

    def __init__(self, part: Any) -> None:
        self.part, self.shape = part, tuple(part.get_shape())

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.part[index]


def load_weights(net: AlexNet, path: str | Path, cfg: ModelConfig) -> None:
    """Fill `net`'s towers (all, or this process's one) from the weights file `path`, checked first."""
    check_weights(path, cfg)
    safetensors = _safetensors()
    state = net.state_dict()
    towers: Sequence[int] = [int(t) for t in net.towers]
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            parts = towers_state_dict({k: _Lazy(f.get_slice(k)) for k in f.keys()}, cfg.towers, towers)
    except (safetensors.SafetensorError, KeyError) as err:  # the file changed since it was checked
        raise UserError(f"{path}: cannot be read as checked: {type(err).__name__}: {err}") from None
    with torch.no_grad():
        for key, value in parts.items():
            target = state[key]
            if value.shape != target.shape or value.dtype != target.dtype:
                raise UserError(f"{path}: {key} is {value.dtype} {list(value.shape)}, this net's is "
                                f"{target.dtype} {list(target.shape)}")
            target.copy_(value)
