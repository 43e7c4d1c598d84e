"""A trained net as one file to share: the grouped, Caffe-named state dict in safetensors, with the training
mean and, in its metadata, the model config and class names, so the file alone classifies an image.
`check_weights` checks the header, the model config, the keys, dtypes and shapes before a tensor byte is
read (why safetensors, and what is refused: docs/ARCHITECTURE.md, "Checkpoints")."""

import json
from pathlib import Path
from typing import Any, Sequence

import safetensors.torch
import torch

import files
from checkpoints.recorded_model import check_recorded, parse_recorded, record
from checkpoints.tensor_file import Spec, check_tensors, header_metadata, open_checked, spec_bytes, spec_of, specs
from config.errors import UserError
from config.model import ModelConfig
from data.pack_format import MAX_JSON_BYTES
from data.preprocessing import MEANS, Preprocessing
from model.alexnet import AlexNet
from model.export import grouped_state_dict, towers_state_dict

SUFFIX = ".safetensors"
MODEL_KEY = "model"
"""The metadata entry holding the ModelConfig the weights were trained with, as JSON."""
CLASSES_KEY = "classes"
"""The metadata entry holding the class names, a JSON list: output i is the class named i-th."""
MEAN = "mean"
"""The tensor holding the training mean, subtracted from an image before the net sees it."""
MAX_HEADER_BYTES = MAX_JSON_BYTES
"""Largest header read: the class names are a pack's (its meta.json, read up to the same 16 MiB); the tensors'
entries and the model config take 2 KB, ImageNet's 1000 names 17 KB."""


def is_weights_file(path: str | Path) -> bool:
    """Whether `path` names a weights file (rather than a checkpoint folder), there or not."""
    return Path(path).suffix == SUFFIX and not Path(path).is_dir()


def save_weights(towers_state: dict[str, torch.Tensor], cfg: ModelConfig, preprocessing: Preprocessing,
                 target: str | Path) -> Path:
    """Write every tower of `towers_state` as one grouped state dict with the mean, atomically, with `cfg` and
    the class names in its metadata. Name `target` *.safetensors: that suffix is what tells a weights file from
    a checkpoint. The file is read back as loading reads it before it takes `target`'s name."""
    target = Path(target)
    state = {**grouped_state_dict(towers_state, cfg.towers), MEAN: preprocessing.mean}
    metadata = {MODEL_KEY: record(cfg), CLASSES_KEY: json.dumps(preprocessing.classes)}
    with files.atomic_path(target) as partial:
        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, partial, metadata)
        check_weights(partial, cfg)  # a header over the limit (names too long) is refused here, not by a reader
    return target


def _expected(cfg: ModelConfig) -> dict[str, Spec]:
    """key -> (dtype name, shape) of the grouped state dict of `cfg`'s net, built on the meta device: the
    shapes without allocating a weight. float32 in every layout and precision (bf16 is autocast)."""
    with torch.device("meta"):
        grouped = grouped_state_dict(AlexNet(cfg).state_dict(), cfg.towers)
    return {k: spec_of(v) for k, v in grouped.items()}


def _metadata(path: Path, metadata: dict[str, str], key: str, what: str) -> str:
    value = metadata.get(key)
    if value is None:
        raise UserError(f"{path}: no {what} in its metadata (key {key!r}); only files written by python -m results "
                        "export are read (one exported before it recorded them: export its checkpoint again)")
    return value


def _classes(path: Path, opened: Any, cfg: ModelConfig) -> list[str]:
    try:
        classes = json.loads(_metadata(path, opened.metadata() or {}, CLASSES_KEY, "class names"))
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path}: its class names (metadata {CLASSES_KEY!r}) are not JSON ({err})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{path}: its class names (metadata {CLASSES_KEY!r}) are not a list of strings")
    if not 1 <= len(classes) <= cfg.num_classes:
        raise UserError(f"{path}: {len(classes)} class names for a net of {cfg.num_classes} outputs")
    return classes


def _check_open(path: Path, opened: Any, cfg: ModelConfig) -> list[str]:
    """The class names of the open weights file `path`, once all of its header is this net's."""
    check_recorded("weights file", path, _metadata(path, opened.metadata() or {}, MODEL_KEY, "model config"), cfg)
    found = specs(opened)
    mean = found.get(MEAN, ("F32", MEANS["image"]))  # a missing mean is named as missing by check_tensors
    if mean[1] not in MEANS.values():
        raise UserError(f"{path}: {MEAN} has shape {list(mean[1])}, neither per position {list(MEANS['image'])} "
                        f"nor per channel {list(MEANS['channel'])}")
    check_tensors(path, found, {**_expected(cfg), MEAN: ("F32", mean[1])})
    return _classes(path, opened, cfg)


def recorded_model(path: str | Path) -> dict:
    """The model config the weights file `path` records, as the dict of its JSON (checked against a config by
    check_weights); only its header is read."""
    metadata = header_metadata(path, MAX_HEADER_BYTES)  # read before any config bounds the data: nothing mapped
    return parse_recorded("weights file", path, _metadata(Path(path), metadata, MODEL_KEY, "model config"))


def _opened(path: Path, cfg: ModelConfig):
    """The weights file `path` opened, once it holds no more than twice the data of `cfg`'s weights: a file
    declaring far more (a terabyte in a sparse file) is refused before it is mapped, and one that differs by a
    tensor or a shape gets to the checks that name it."""
    weights = sum(spec_bytes(s) for s in _expected(cfg).values()) + max(spec_bytes(("F32", m)) for m in MEANS.values())
    return open_checked(path, 2 * weights, "twice this model's weights", MAX_HEADER_BYTES)


def check_weights(path: str | Path, cfg: ModelConfig) -> None:
    """Refuse the weights file `path` unless it holds exactly the grouped weights of `cfg`'s net and its
    preprocessing; only its header is read."""
    path = Path(path)
    with _opened(path, cfg) as opened:
        _check_open(path, opened, cfg)


def load_preprocessing(path: str | Path, cfg: ModelConfig) -> Preprocessing:
    """The class names and the mean the weights file `path` carries, checked first (a mean that is not finite
    would give NaN probabilities)."""
    path = Path(path)
    with _opened(path, cfg) as opened:
        classes = _check_open(path, opened, cfg)
        mean = opened.get_tensor(MEAN)
    if not bool(mean.isfinite().all()):
        raise UserError(f"{path}: its {MEAN} is not finite (NaN or infinite); it would give NaN probabilities")
    return Preprocessing(classes, mean)


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
