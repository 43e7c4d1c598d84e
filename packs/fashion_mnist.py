"""`python -m packs.fashion_mnist DST`: Fashion-MNIST, from Debian's dataset-fashion-mnist package, to a pack.

Its 60,000 training and 10,000 test images (28x28 grey, 10 classes) become the
pack's train and val splits: each image upscaled to 256x256 the same way
packs/prepare.py rescales photographs, then copied to three equal channels, so the
AlexNet trainer runs on it unchanged. The pack takes about 13 GB raw, 0.4 GB with --encoding jpeg.
"""

import argparse
import gzip
import math
import os
import struct
import zlib
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch

from config.cli import Parser, path_option, refuse
from config.errors import one_line
from data.decode import Declared, check_declared, rescale
from files import open_regular
from packs.encoding import Encoding
from packs.packing import Split, pack
from packs.prepare import SHARD_SIZE, add_encoding_options, encoding_option, report

DEBIAN_SRC = Path("/usr/share/datasets/fashion-mnist")
"""Where `apt-get install dataset-fashion-mnist` puts the IDX files."""
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MAX_IDX_BYTES = 2**28
"""Largest IDX content read (256 MiB): Fashion-MNIST's largest file, the training images, holds 47 MB."""
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
"""Label k is CLASSES[k] (the dataset's README)."""


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip-compressed when it ends in .gz) as an array of its shape.

    Read no further than its header declares and MAX_IDX_BYTES allow: a gzip of zeros inflates about
    1000:1, so the decompressed size is bounded before it is decompressed, never after, and read into one
    buffer of that size. Its images (the last two dimensions) are held to what any decoded image is
    (data/decode.py `check_declared`), since each is rescaled alone."""
    with open_regular(path) as raw, (gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw) as f:
        try:
            # Header: two zero bytes, the type code (0x08: unsigned byte), the number of
            # dimensions, then each dimension as a big-endian uint32.
            magic = f.read(4)
            if len(magic) < 4 or magic[:3] != b"\0\0\x08":
                raise ValueError(f"{path}: not an IDX file of unsigned bytes")
            dims = f.read(4 * magic[3])
            if len(dims) < 4 * magic[3]:
                raise ValueError(f"{path}: ends inside its header")
            shape = struct.unpack(f">{magic[3]}I", dims)
            size = math.prod(shape)
            if size > MAX_IDX_BYTES:
                raise ValueError(f"{path}: its header declares {shape}, {size} bytes, over the {MAX_IDX_BYTES}-byte "
                                 "limit of an IDX file; not read")
            if len(shape) >= 2 and size:
                try:
                    check_declared(Declared(shape[-1], shape[-2], channels=1))
                except ValueError as err:
                    raise ValueError(f"{path}: its images, as its header declares them: {err}; not read") from None
            data, got = bytearray(size), 0
            while got < size and (n := f.readinto(memoryview(data)[got:])):
                got += n
            more = f.read(1)
        except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path}: cannot be read as gzip: {err}") from None
    if got != size or more:
        raise ValueError(f"{path}: the header says {shape}, the file holds {'more than ' * bool(more)}{got} bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def grey_to_rgb(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W] grey -> uint8 [3, 256, 256] with equal channels."""
    return rescale(torch.from_numpy(pixels.copy())[None]).expand(3, -1, -1).contiguous()


def fashion_splits(src: Path) -> list[Split]:
    splits = []
    for split, (images_file, labels_file) in FILES.items():
        images, labels = read_idx(src / images_file), read_idx(src / labels_file)
        if images.ndim != 3 or labels.shape != images.shape[:1] or labels.max() >= len(CLASSES):
            raise ValueError(f"{src}: {images_file} {images.shape} and {labels_file} {labels.shape} do not match")
        names = [f"{images_file}[{i}]" for i in range(len(images))]
        splits.append(Split(split, names, list(images), labels.tolist(), grey_to_rgb))
    return splits


def convert(src: Path, dst: Path, workers: int, shard_size: int = SHARD_SIZE, encoding: Encoding = Encoding()) -> int:
    """Pack the IDX files in `src` into `dst`, storing images as `encoding`; returns how many images this run
    converted."""
    for name in (name for pair in FILES.values() for name in pair):
        if not (src / name).is_file():
            raise ValueError(f"{src / name}: not found; apt-get install dataset-fashion-mnist, or pass --src")
    return pack(dst, fashion_splits(src), CLASSES, CLASSES, shard_size, workers, encoding)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="python -m packs.fashion_mnist", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dst", type=path_option, help="the pack to write, or to finish")
    parser.add_argument("--src", type=path_option, default=DEBIAN_SRC, help=f"folder of the four IDX files (default {DEBIAN_SRC})")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="packing processes (default: every core)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE, help=f"images per shard (default {SHARD_SIZE})")
    add_encoding_options(parser)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.shard_size < 1:
        parser.error("--workers and --shard-size must be at least 1")
    encoding = encoding_option(parser, args)
    try:
        converted = convert(args.src, args.dst, args.workers, args.shard_size, encoding)
    except ValueError as error:  # what the user handed in: a refused file, a damaged set of images
        raise SystemExit(refuse(error)) from None
    except BrokenProcessPool as error:
        raise SystemExit(f"error: {one_line(error)}") from None
    report(args.dst, converted)


if __name__ == "__main__":
    main()
