"""One safetensors file, its header checked before a tensor byte is read: what checkpoint folders
(checkpoints/shards.py) and shared weights files (checkpoints/weights.py) both need. Nothing in the format
can run; each lie a file can tell (the lies are listed in docs/ARCHITECTURE.md, "Checkpoints") is refused
as one line naming the file."""

import json
import math
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import safetensors
import torch

import files
from config.errors import UserError

MAX_HEADER_BYTES = 64 * 1024
"""Largest header read. The paper's net writes about 1.5 KB as a weights file (16 tensors and the model
config) and about 10 KB for the biggest checkpoint file (one process holding both towers: 69 tensors)."""
DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}
"""safetensors' name of each dtype a state here may hold (the names of its format's header)."""

Spec = tuple[str, tuple[int, ...]]
"""A tensor as a header describes it: (safetensors dtype name, shape)."""


class UnreadableFile(UserError):
    """Not a complete safetensors file: too short, a header over the limit or not JSON, spans that do not
    tile the file (truncated, say), not a regular file."""


class OtherTensors(UserError):
    """A well-formed safetensors file whose tensors are not the ones asked for (a key, a dtype, a shape)."""


def spec_of(tensor: torch.Tensor) -> Spec:
    """How a header describes `tensor` (any device, meta included)."""
    return DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)), tuple(tensor.shape)


def spec_bytes(spec: Spec) -> int:
    """The bytes a tensor of `spec` takes."""
    dtype, shape = spec
    itemsize = next((d.itemsize for d, name in DTYPE_NAMES.items() if name == dtype), 8)
    return itemsize * math.prod(shape)


def data_bytes(path: str | Path) -> int:
    """The bytes of tensor data the safetensors file `path` holds (its size less its header), from its first 8
    bytes; UnreadableFile if it is not a file whose header length can be read."""
    return _sizes(Path(path), MAX_HEADER_BYTES)[1]


def _sizes(path: Path, max_header_bytes: int) -> tuple[int, int]:
    """(header bytes, tensor data bytes) of `path`, its header length held to `max_header_bytes` and the file."""
    try:
        with files.open_regular(path) as f:  # a pipe or a device refused unread, without blocking
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
    except files.Refused as err:
        raise UnreadableFile(str(err)) from None
    if len(prefix) < 8:
        raise UnreadableFile(f"{path}: {size} bytes, too short to be a safetensors file")
    (length,) = struct.unpack("<Q", prefix)
    if length > max_header_bytes or length > size - 8:
        raise UnreadableFile(f"{path}: its header says it is {length} bytes long, over the {max_header_bytes}-byte "
                             f"limit or the file's {size} bytes; not a file this project wrote, refused unread")
    return length, size - 8 - length


def header_metadata(path: str | Path, max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, str]:
    """The `__metadata__` of the safetensors file `path`, from its header alone (read within `max_header_bytes`,
    nothing mapped): what a reader needs before it knows how much tensor data to allow."""
    path = Path(path)
    length, _ = _sizes(path, max_header_bytes)
    try:
        with files.open_regular(path) as f:
            header = json.loads(f.read(8 + length)[8:])  # length: held to max_header_bytes above
    except (files.Refused, ValueError, RecursionError) as err:
        raise UnreadableFile(f"{path}: its header is not a safetensors header ({err})") from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UnreadableFile(f"{path}: its header's __metadata__ is not a map of strings")
    return metadata


@contextmanager
def open_checked(path: str | Path, max_data_bytes: int, holds: str = "what is asked for",
                 max_header_bytes: int = MAX_HEADER_BYTES) -> Iterator[Any]:
    """`safetensors.safe_open(path)` on CPU, once the header's length is within `max_header_bytes` and the tensor
    data within `max_data_bytes` (`holds`: what that bound is, for the message); every failure to open it an
    UnreadableFile. safe_open maps the file and parses the header: no tensor is read until one is asked for."""
    path = Path(path)
    _, data = _sizes(path, max_header_bytes)
    if data > max_data_bytes:
        raise UnreadableFile(f"{path}: holds {data} bytes of tensors, more than {holds} ({max_data_bytes} bytes); "
                             "refused unread")
    # safe_open opens the file again by name: the check above holds against a file handed over, not against
    # someone swapping it in the run's own folder meanwhile (files/: what the rules promise).
    try:
        handle = safetensors.safe_open(path, framework="pt", device="cpu")
    except (safetensors.SafetensorError, OSError) as err:
        raise UnreadableFile(f"{path}: not a complete safetensors file (truncated, or not written by this "
                             f"project): {err}") from None
    with handle as opened:
        yield opened


def specs(opened: Any) -> dict[str, Spec]:
    """key -> (dtype name, shape) of every tensor in an open safetensors file (its header only)."""
    return {key: (opened.get_slice(key).get_dtype(), tuple(opened.get_slice(key).get_shape()))
            for key in opened.keys()}


def check_tensors(path: str | Path, found: dict[str, Spec], expected: dict[str, Spec], exact: bool = True) -> None:
    """Refuse (OtherTensors) unless every expected key is found with its dtype and shape; with `exact`, no
    other key either. `path` names what is checked in the messages."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected)) if exact else []
    if extra or missing:
        raise OtherTensors(f"{path}: its tensors are not this model's: "
                           + "; ".join([f"unexpected {k!r}" for k in extra[:5]] + [f"missing {k!r}" for k in missing[:5]]))
    for key, (dtype, shape) in expected.items():
        got_dtype, got_shape = found[key]
        if got_dtype != dtype:
            raise OtherTensors(f"{path}: {key} has dtype {got_dtype!r}, this model's is {dtype!r}")
        if got_shape != shape:
            raise OtherTensors(f"{path}: {key} has shape {list(got_shape)}, this model's is {list(shape)}")
