"""How a pack stores its images, chosen when it is made: raw uint8 rows, or one baseline JPEG record each.

The JPEG records are written here and read back by data/compact.py; docs/DATA.md ("Compact packs") has the
measured sizes, speeds and pixel error.
"""

from dataclasses import dataclass

import torch

from data.codec import CODEC
from data.compact import MAX_RECORD_BYTES, decode
from data.pack_format import ENCODINGS, JPEG, RAW

QUALITY = 90
"""The default JPEG quality of a compact pack (docs/DATA.md: size and PSNR at 75 to 95)."""


def encode(image: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 [3, 256, 256] -> a baseline JPEG record (uint8 [n], n <= MAX_RECORD_BYTES), 4:2:0 chroma."""
    record = CODEC.encode_jpeg(image.contiguous(), quality)
    if len(record) > MAX_RECORD_BYTES:  # unreachable for 256x256 images (MAX_RECORD_BYTES); a bound, not a hope
        raise ValueError(f"its JPEG record takes {len(record)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    return record


@dataclass(frozen=True)
class Encoding:
    """How a pack stores its images (packs.prepare's --encoding and --quality)."""

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
