"""The compact pack's images: each 256x256 image one baseline JPEG record, decoded in batch where it is used.

A raw image is 196,608 bytes, so ImageNet's 1.28M training images take 250 GB raw, twice the
GPU machine's memory: every epoch would come from disk. As JPEG records at quality 90 they take
about a tenth (docs/DATA.md has the measured sizes, speeds and pixel error). On a GPU the training
process decodes a whole batch in one call (data/codec.py's decode_jpegs on a list: nvJPEG, whose
hardware decoder takes baseline JPEGs, what encode_jpeg writes); on a CPU the loading processes
decode with libjpeg-turbo.

Records come from a pack someone else may have made, so nothing in one is trusted: its length
comes from the pack's index and is capped at a raw image's size before anything is read, and the
size its header declares must be 3 x 256 x 256 before it is decoded (data/decode.py's header
reader, the one packing uses on photographs). Once decoded, the image must be the record's whole
(`cut_short`): a decoder given too few coded blocks fills the rest with grey rather than failing.
A record that fails any check, or fails to decode, is refused with DamagedImage naming the pack,
the shard and the image.
"""

import struct
from dataclasses import dataclass

import torch

from data.codec import CODEC
from data.decode import declared_size
from data.imageset import IMAGE_BYTES, IMAGE_SHAPE, SIDE
from data.jpeg_scan import BLOCK, coded_blocks

JPEG = "jpeg"
RAW = "raw"
ENCODINGS = (RAW, JPEG)
"""A pack's `encoding` in meta.json: raw uint8 rows (the exact reference) or JPEG records."""
QUALITY = 90
"""The default JPEG quality of a compact pack (docs/DATA.md: size and PSNR at 75 to 95)."""
MAX_RECORD_BYTES = IMAGE_BYTES
"""Longest record read: a record longer than the raw image is never worth storing (a 256x256 image of
uniform noise encodes to 130 kB even at quality 100)."""
HEADER_BYTES = 4096
"""Where a record's frame header must be: encode_jpeg writes it within the first 700 bytes."""
FILL = 128
"""What libjpeg (torchvision's decoder, Pillow's) decodes a block the scan lacks to: zero coefficients, mid-grey
in every channel."""


class DamagedImage(ValueError):
    """An image of a pack cannot be read back; the message names the pack, the shard and the image."""


def encode(image: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 [3, 256, 256] -> a baseline JPEG record (uint8 [n], n <= MAX_RECORD_BYTES), 4:2:0 chroma."""
    record = CODEC.encode_jpeg(image.contiguous(), quality)
    if len(record) > MAX_RECORD_BYTES:  # unreachable for 256x256 images (module doc); a bound, not a hope
        raise ValueError(f"its JPEG record takes {len(record)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    return record


def check_record(record: torch.Tensor) -> str | None:
    """Why `record` (uint8 [n]) is not a JPEG of one 256x256 image, or None; reads only its header."""
    if not 0 < len(record) <= MAX_RECORD_BYTES:
        return f"a record of {len(record)} bytes (1 to {MAX_RECORD_BYTES} allowed)"
    head = record[:HEADER_BYTES].numpy().tobytes()
    if not head.startswith(b"\xff\xd8"):
        return "not a JPEG record (no start-of-image marker)"
    try:
        declared = declared_size(head)
    except ValueError as err:
        return str(err)
    if (declared.width, declared.height) != (SIDE, SIDE):
        return f"its header declares {declared.width}x{declared.height}, not {SIDE}x{SIDE}"
    return None


def cut_short(record: torch.Tensor, image: torch.Tensor, fill: int = FILL) -> str | None:
    """Why `image`, `record` decoded by any decoder, is not the whole of it, or None: the decoder ran out of
    coded blocks and filled the rest (with `fill`, libjpeg's grey). Read off the record's scan
    (data/jpeg_scan.py), which takes milliseconds, so only when the image's last block is that fill: where
    a scan stops short, the last block is always one it lacks."""
    if not bool((image[..., -BLOCK:, -BLOCK:] == fill).all()):
        return None
    try:
        declared, whole = coded_blocks(record.cpu().numpy().tobytes())
    except (ValueError, IndexError, struct.error) as err:
        return f"its last block is the grey a decoder fills missing data with, and its scan cannot be walked ({err})"
    if whole < declared:
        return f"its scan codes {whole} of the {declared} blocks its header declares (the rest decode as grey)"
    return None


def decode(record: torch.Tensor) -> torch.Tensor:
    """A checked record -> uint8 [3, 256, 256] on the CPU; ValueError saying why it cannot be."""
    why = check_record(record)
    if why is None:
        try:
            (image,) = CODEC.decode_jpegs([record], torch.device("cpu"))
        except RuntimeError as err:  # libjpeg's message, after the function, file and line the codec prefixes
            why = str(err).strip().splitlines()[-1].split(", ")[-1]
        else:
            if image.shape != IMAGE_SHAPE:
                why = f"decoded to {tuple(image.shape)}, not {IMAGE_SHAPE}"
            else:
                why = cut_short(record, image)
            if why is None:
                return image
    raise ValueError(why)


def decode_batch(records: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Checked records (CPU uint8 [n] each) -> uint8 [N, 3, 256, 256] on `device`, all in one call:
    nvJPEG's batched decoder on a GPU, libjpeg-turbo image by image on a CPU."""
    if device.type == "cpu":
        return torch.stack([decode(r) for r in records])
    return torch.stack(CODEC.decode_jpegs(records, device))


@dataclass(frozen=True)
class Encoding:
    """How a pack stores its images, chosen when it is made (data.prepare's --encoding and --quality)."""

    name: str = RAW
    quality: int = QUALITY
    """JPEG quality, 1 to 100 (jpeg only)."""

    def __post_init__(self) -> None:
        if self.name not in ENCODINGS:
            raise ValueError(f"encoding {self.name!r}: must be one of {ENCODINGS}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality {self.quality}: must be 1 to 100")

    def meta(self) -> dict:
        """Its fields in meta.json."""
        return {"encoding": self.name, **({"quality": self.quality} if self.name == JPEG else {})}

    def store(self, image: torch.Tensor) -> tuple[memoryview, torch.Tensor]:
        """The bytes that store uint8 [3, 256, 256] `image` in a shard, and the image a loader will read
        back from them (the statistics are computed on that). A JPEG record is decoded here once, so a
        record that would not decode is found now, when its image can be skipped, not mid-epoch."""
        if self.name == RAW:
            image = image.contiguous()
            return image.numpy().data, image
        record = encode(image, self.quality)
        return record.numpy().data, decode(record)
