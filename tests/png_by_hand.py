"""PNG files written byte by byte, for what PIL cannot write: 16-bit colour, any bit depth, a decompression bomb."""

import struct
import zlib

import numpy as np

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
"""PNG colour type by channel count: grey, grey + alpha, RGB, RGBA."""


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(width: int, height: int, depth: int, colour_type: int, compressed: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", compressed) + png_chunk(b"IEND", b"")


def png(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 or uint16 [H, W, C] pixels, written by hand: PIL cannot write 16-bit colour."""
    height, width, channels = pixels.shape
    rows = pixels.astype(pixels.dtype.newbyteorder(">")).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 on every row
    return png_file(width, height, 8 * pixels.itemsize, COLOUR_TYPES[channels], zlib.compress(raw.tobytes()))


def zero_bomb(side: int) -> bytes:
    """A 1-bit grey PNG of side x side zeros: 110 kB for 30000 x 30000, 2.7 GB once decoded to RGB."""
    deflate, row = zlib.compressobj(9), bytes(1 + (side + 7) // 8)
    compressed = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    return png_file(side, side, 1, 0, compressed)


def tiny_png() -> bytes:
    return png(np.full((8, 8, 3), 99, np.uint8))
