"""Encoded image files to the paper's 256x256: the shorter side rescaled to 256, then the central 256x256.

Files come from anywhere, so nothing in one is trusted: only a regular file is read (a
named pipe or a device such as /dev/zero is refused unread, files/), and no larger than
3 bytes a pixel of the pixel limit; what its header declares (in the first HEAD_BYTES,
for every file whose header fits there) is checked before the rest is read or anything is
decompressed (`check_declared`): its pixels against the pixel limit, and the bytes they
take once decoded (pixels x channels x bytes a sample: a 16-bit RGBA PNG takes 8 bytes a
pixel) against the same 3 bytes a pixel. The bound is the header's, so it holds whichever
decoder then runs; any bit depth becomes 8 bits, and no step makes an intermediate larger
than the decoded image.
"""

import struct
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from torchvision.transforms.v2 import functional as F

from data.codec import CODEC
from data.imageset import SIDE
from files import open_regular
from files.reading import read_exactly, size_of

DECODE_ERRORS = (RuntimeError, ValueError, OSError)
"""What a corrupt, truncated, empty, oversized or unreadable file raises; anything else is a bug and is not caught."""
MAX_PIXELS = 89_478_485
"""Largest image decoded (width x height x frames): PIL's default MAX_IMAGE_PIXELS, 256 MiB as 8-bit RGB.

A PNG of zeros compresses about 1000:1, so a 3 MB file can declare 30000x30000
(2.7 GB decoded as RGB); as a 1-bit image, in 110 kB."""

BYTES_PER_PIXEL = 3
"""Largest image file read, and largest image decoded, per pixel of the limit: 8-bit RGB stored raw (an encoded
photograph is smaller; a decoded one with alpha or 16-bit samples, larger)."""
HEAD_BYTES = 64 * 1024
"""Read first, for the header's declared size: a PNG's or WebP's is in its first 30 bytes, a JPEG's after
its metadata segments (EXIF, ICC), which in photographs fit here."""

PNG = b"\x89PNG\r\n\x1a\n"
JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""The SOF markers, whose segment holds the image size (C4, C8 and CC are other segments)."""
JPEG_NO_LENGTH = {0x00, 0x01, *range(0xD0, 0xD8)}
"""Markers without a segment after them (00 is a stuffed zero byte, not a marker: scanning goes on after it)."""


class Truncated(ValueError):
    """The bytes end before the image's declared size is known."""


class Declared(NamedTuple):
    """What an image's header declares, read without decoding it."""

    width: int
    height: int
    frames: int = 1
    channels: int = 3
    """Samples a pixel holds as stored: grey 1, grey and alpha 2, RGB (or a palette) 3, RGBA or CMYK 4."""
    sample_bytes: int = 1
    """Bytes a sample takes decoded: 2 for a 16-bit PNG or a 12-bit JPEG."""

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames

    @property
    def decoded_bytes(self) -> int:
        """What the decoded image takes: pixels x channels x bytes a sample, channels at least the 3 of RGB,
        which every image becomes."""
        return self.pixels * max(self.channels, 3) * self.sample_bytes


def rescale(image: torch.Tensor) -> torch.Tensor:
    """uint8 [C, H, W] -> uint8 [C, 256, 256]: shorter side to 256 (antialiased), then the centre crop.

    Done the other way round: the central square of the source (its side the shorter
    side), then that square resized to 256x256. Resizing first would make a
    1x20000 image 256x5,120,000 (3.9 GB) to keep 256x256 of it; cropping first never
    holds more than the source and the result. The two agree up to where the filter
    meets the crop's edges and to a shift of at most half a source pixel (centring
    rounds in source pixels rather than in resized ones).
    """
    height, width = image.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return F.resize(image[..., top : top + side, left : left + side], [SIDE, SIDE], antialias=True)


def to_8_bits(image: torch.Tensor) -> torch.Tensor:
    """uint8 or uint16 [..., W] -> uint8: a 16-bit value v becomes v >> 8.

    That is torchvision's to_dtype(uint8, scale=True), which gets there through a
    float32 copy of the whole image (4 bytes a value); the high byte of each value is
    a view instead.
    """
    if image.dtype == torch.uint8:
        return image
    if image.dtype != torch.uint16:
        raise ValueError(f"decoded to {image.dtype}, neither 8 nor 16 bits")
    high = 1 if sys.byteorder == "little" else 0
    return image.contiguous().view(torch.uint8)[..., high::2]


def decode_file(path: str | Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """uint8 [3, 256, 256] from a JPEG, PNG, WebP or GIF file.

    Decoded by data/codec.py's CODEC (TorchCodec, or torchvision.io without it), as RGB: greyscale,
    palette, RGBA and CMYK files become RGB (alpha is dropped); JPEG goes through libjpeg-turbo and
    is turned upright by its EXIF orientation; 16-bit PNGs become 8 bits. A file whose header
    declares more than `max_pixels` is refused before it is decompressed.
    Raises one of DECODE_ERRORS for a file it cannot or will not decode.
    """
    data = read_image_file(path, max_pixels)
    image = CODEC.decode_image(torch.frombuffer(data, dtype=torch.uint8))
    if image.ndim != 3:
        raise ValueError(f"animated image with {image.shape[0]} frames")
    return rescale(to_8_bits(image))


def read_image_file(path: str | Path, max_pixels: int = MAX_PIXELS) -> bytearray:
    """The bytes of the image file `path`, read only once its size and its header's pass the limits.

    Refused (files.Refused, a ValueError naming the file): anything but a regular file, and a file over
    BYTES_PER_PIXEL x `max_pixels` bytes, unread; a header declaring more than `max_pixels`, once its first
    HEAD_BYTES are read (or, if the header lies beyond them, the file). GIF frames after the first
    HEAD_BYTES count once the whole file is read.
    """
    with open_regular(path) as f:
        size, limit = size_of(f), BYTES_PER_PIXEL * max_pixels
        if not size:
            raise ValueError("empty file")
        if size > limit:
            raise ValueError(f"{size} bytes, over the {limit}-byte limit of an image file "
                             f"({BYTES_PER_PIXEL} bytes a pixel of the {max_pixels}-pixel limit); not read")
        head = read_exactly(f, min(size, HEAD_BYTES), path)
        try:
            check_size(head, max_pixels)
        except Truncated:
            if len(head) == size:
                raise
            # The header lies beyond the first HEAD_BYTES: checked below, on the whole file.
        if size == len(head):
            return head
        f.seek(0)
        data = read_exactly(f, size, path)
    check_size(data, max_pixels)
    return data


def check_size(data: bytes, max_pixels: int) -> None:
    """Refuse, from the header in `data`, an image `check_declared` refuses."""
    check_declared(declared_size(data), max_pixels)


def check_declared(image: Declared, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse (ValueError) an image of no pixels, a decompression bomb (more than `max_pixels`), or one whose
    decoded bytes exceed BYTES_PER_PIXEL x `max_pixels`: the one bound every reader of images calls with
    what it read from a header, before decoding."""
    size = f"{image.width}x{image.height}" + (f" x {image.frames} frames" if image.frames > 1 else "")
    if not image.pixels:
        raise ValueError(f"{size}: an image of no pixels")
    if image.pixels > max_pixels:
        raise ValueError(f"{size} is {image.pixels} pixels, over the limit of {max_pixels}")
    limit = BYTES_PER_PIXEL * max_pixels
    if image.decoded_bytes > limit:
        raise ValueError(f"{size} of {image.channels} channel(s) of {8 * image.sample_bytes} bits decodes to "
                         f"{image.decoded_bytes} bytes, over the {limit}-byte limit of a decoded image "
                         f"({BYTES_PER_PIXEL} bytes a pixel of the {max_pixels}-pixel limit)")


def declared_size(data: bytes) -> Declared:
    """What the header of a PNG, JPEG, GIF or WebP file declares (size, frames, channels, sample depth), without
    decoding.

    Read here rather than with PIL, although PIL reads headers lazily too: `Image.open` refuses
    anything over twice its process-wide `Image.MAX_IMAGE_PIXELS` before it tells the size, so a
    `--max-pixels` above that would need a global changed, and PIL learns where a GIF's later frames
    lie only by decoding the frames before them (`GifImageFile.seek`), which is what a bomb check
    must not do (giflib allocates every frame at its own extent).
    """
    try:
        if data.startswith(PNG):
            return _png_size(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _gif_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except (struct.error, IndexError):
        raise Truncated("truncated file: it ends before its image size is known") from None
    raise ValueError("not a JPEG, PNG, GIF or WebP file")


PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
"""Channels by PNG colour type: grey, RGB, palette (decoded to RGB), grey and alpha, RGBA."""


def _png_size(data: bytes) -> Declared:
    if data[12:16] != b"IHDR":
        raise ValueError("PNG without a header chunk (IHDR)")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    if colour not in PNG_CHANNELS:
        raise ValueError(f"PNG of an unknown colour type {colour}")
    return Declared(width, height, 1, PNG_CHANNELS[colour], 2 if depth > 8 else 1)


def _jpeg_size(data: bytes) -> Declared:
    """From the first SOF segment; bytes between segments are skipped, as libjpeg does."""
    at = 2
    while True:
        at = data.find(b"\xff", at)
        if at < 0:
            raise Truncated("truncated JPEG: no frame header (SOF)")
        while data[at] == 0xFF:
            at += 1
        marker = data[at]
        at += 1
        if marker in JPEG_FRAMES:
            precision, height, width, components = struct.unpack_from(">xxBHHB", data, at)
            return Declared(width, height, 1, components, 2 if precision > 8 else 1)
        if marker in (0xDA, 0xD9):
            raise ValueError("JPEG without a frame header (SOF) before its image data")
        if marker not in JPEG_NO_LENGTH:
            at += struct.unpack_from(">H", data, at)[0]


def _gif_size(data: bytes) -> Declared:
    """The screen grown to every frame's extent, and the number of frames (giflib keeps all of them), each
    decoded to RGB."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    at, frames = 13 + _gif_colour_table(flags), 0
    while at < len(data) and data[at] != 0x3B:  # 0x3B: the trailer
        block = data[at]
        if block == 0x21:  # an extension: its label, then sub-blocks
            at = _gif_skip_sub_blocks(data, at + 2)
        elif block == 0x2C:  # an image: its descriptor, colours, LZW code size, then sub-blocks
            left, top, w, h, flags = struct.unpack_from("<HHHHB", data, at + 1)
            width, height, frames = max(width, left + w), max(height, top + h), frames + 1
            at = _gif_skip_sub_blocks(data, at + 11 + _gif_colour_table(flags))
        else:
            raise ValueError(f"GIF with an unknown block 0x{block:02x}")
    return Declared(width, height, frames)


def _gif_colour_table(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _gif_skip_sub_blocks(data: bytes, at: int) -> int:
    while data[at]:
        at += data[at] + 1
    return at + 1


def _webp_size(data: bytes) -> Declared:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: flags (0x10: alpha), then the canvas, 24-bit sizes minus one
        width, height = (int.from_bytes(size, "little") + 1 for size in struct.unpack_from("3s3s", data, 24))
        alpha = bool(data[20] & 0x10)
    elif chunk == b"VP8L":  # lossless: 14-bit sizes minus one after a signature byte, then an alpha bit
        bits = struct.unpack_from("<I", data, 21)[0]
        width, height, alpha = (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1, bool(bits >> 28 & 1)
    elif chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        width, height = (size & 0x3FFF for size in struct.unpack_from("<HH", data, 26))
        alpha = False
    else:
        raise ValueError(f"WebP with an unknown first chunk {chunk!r}")
    return Declared(width, height, 1, 4 if alpha else 3)
