"""Reading the compact pack's images back: each one baseline JPEG record, checked, then decoded alone or in batch.

Nothing in a record is trusted (docs/DATA.md, "Compact packs"): its length is capped at a raw image's
before it is read, its header must declare 256x256 before it is decoded, and the decoded image must be the
record's whole (`cut_short`). A record that fails is refused with DamagedImage naming the pack, shard and image.
packs/encoding.py writes the records.
"""

import struct

import torch

from data.codec import CODEC
from data.decode import declared_size
from data.imageset import IMAGE_BYTES, IMAGE_SHAPE, SIDE
from data.jpeg_scan import BLOCK, coded_blocks

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
