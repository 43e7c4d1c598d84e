"""Reading what someone else may have made: regular files only, never blocking, never more than declared.

`open_regular` is the one open: O_NONBLOCK, so opening a named pipe returns at once instead of
waiting for a writer, then fstat on the descriptor (not the name, which could change meanwhile):
anything but a regular file is refused unread. Every reader below sizes its read from fstat and
its limit before reading, so /dev/zero, a pipe, a file that grows, or one that declares more
than it holds, never take memory the format does not allow.
"""

import io
import json
import os
import stat
import zipfile
from typing import Any, BinaryIO

import numpy as np
import torch

from files.errors import Refused, kind, refusal


def open_regular(path: str | os.PathLike, *, follow_links: bool = True) -> BinaryIO:
    """`path` opened for reading (unbuffered), once proven a regular file; Refused otherwise, naming it.

    Links are followed by default: reading through one changes nothing, and what it leads to is
    checked like any file. `follow_links=False` refuses a link (for files inside the run's own folders).
    """
    fd = open_fd(path, os.O_RDONLY | (0 if follow_links else os.O_NOFOLLOW), "open")
    return os.fdopen(fd, "rb", buffering=0)


def open_fd(path: str | os.PathLike, flags: int, doing: str, mode: int = 0o644) -> int:
    """A descriptor of `path` opened with `flags` (and O_NONBLOCK, so a pipe cannot hold the open), once
    fstat proves it a regular file; Refused otherwise, naming it and what was being done."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as err:
        raise refusal(path, err, doing) from None
    try:
        info = os.fstat(fd).st_mode
        if not stat.S_ISREG(info):
            raise Refused(path, f"{kind(info)}, not a regular file; refused unread")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def size_of(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


def read_exactly(f: BinaryIO, size: int, path: str | os.PathLike) -> bytearray:
    """The next `size` bytes of `f`, in one buffer of that size; Refused if the file ends first."""
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            raise Refused(path, f"ended after {got} of its {size} bytes (it shrank while being read)")
        got += n
    return data


def read_capped(path: str | os.PathLike, max_bytes: int, what: str = "this file") -> bytearray:
    """The whole of the regular file `path`, refused unread when larger than `max_bytes` (`what`: its kind,
    for the message)."""
    with open_regular(path) as f:
        size = size_of(f)
        if size > max_bytes:
            raise Refused(path, f"{size} bytes, over the {max_bytes}-byte limit of {what}; refused unread")
        data = read_exactly(f, size, path)
        if f.read(1):
            raise Refused(path, f"grew past its {size} bytes while being read")
    return data


def read_json(path: str | os.PathLike, max_bytes: int, what: str = "this JSON file") -> Any:
    """The JSON value in `path` (UTF-8, at most `max_bytes`); Refused if it is not JSON or nests too
    deeply for Python's parser. The caller checks the value's shape."""
    data = read_capped(path, max_bytes, what)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise Refused(path, "nested too deeply to be read as JSON") from None
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Refused(path, f"not valid JSON (truncated?): {err}") from None


def map_npy(path: str | os.PathLike) -> np.ndarray:
    """The array in the .npy file `path`, memory-mapped read-only; an object array (a pickle) is refused
    from its header, and so is a file shorter than its header declares. Nothing is unpickled."""
    with open_regular(path) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except (ValueError, EOFError, OSError) as err:
            raise Refused(path, f"not a readable .npy array ({type(err).__name__}: {err})") from None
        if dtype.hasobject:
            raise Refused(path, "an array of Python objects (a pickle), refused unread")
        needed = f.tell() + dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if size_of(f) != needed:
            raise Refused(path, f"{size_of(f)} bytes, but its header declares {dtype} {shape}: {needed} bytes")
        if needed == f.tell():  # mmap cannot map nothing
            return np.empty(shape, dtype)
        return np.memmap(f, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order="F" if fortran else "C")


def read_torch(path: str | os.PathLike, max_bytes: int, what: str = "this file") -> Any:
    """What torch.save wrote to `path`, through torch's weights-only unpickler (tensors and plain
    containers: nothing in it runs), in at most `max_bytes` of memory for the file and its contents.

    torch.load allocates each entry of the zip file at the size the zip's directory declares, and
    inflates compressed entries: a 2 MB file of deflated zeros becomes gigabytes. torch.save writes
    every entry stored (uncompressed), so anything else is refused from the directory, before torch
    sees a byte; with stored entries, nothing read can outgrow the file. torch's older non-zip format
    declares its tensors' sizes inside the pickle, and is refused too.
    """
    data = read_capped(path, max_bytes, what)
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as err:
        raise Refused(path, f"not a torch.save zip file ({err})") from None
    if any(e.compress_type != zipfile.ZIP_STORED or e.file_size != e.compress_size for e in entries) or \
            sum(e.file_size for e in entries) > len(data):
        raise Refused(path, "holds compressed entries, or entries larger than the file; torch.save writes neither")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for a refused global, RuntimeError for a broken zip, ...
        lines = str(err).strip().splitlines() or [""]
        reason = next((line.strip() for line in lines if "WeightsUnpickler error" in line), lines[0])
        raise Refused(path, f"refused by torch.load(weights_only=True), nothing in it run ({type(err).__name__}: "
                            f"{reason:.200})") from None
