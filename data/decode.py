"""Encoded image files to the paper's 256x256: the shorter side rescaled to 256, then the central 256x256."""

import warnings
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from data.packed import SIDE

# torchvision 0.29 announces that its decoders will move to TorchCodec. We pin
# torchvision, and without this every packing process would print it once.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated")

DECODE_ERRORS = (RuntimeError, ValueError, OSError)
"""What a corrupt, truncated, empty or unreadable file raises; anything else is a bug and is not caught."""


def rescale(image: torch.Tensor) -> torch.Tensor:
    """uint8 [C, H, W] -> uint8 [C, 256, 256]: shorter side to 256 (antialiased), then the centre crop."""
    image = F.resize(image, [SIDE], antialias=True)
    return F.center_crop(image, [SIDE, SIDE])


def decode_file(path: str | Path) -> torch.Tensor:
    """uint8 [3, 256, 256] from a JPEG, PNG, WebP or GIF file.

    ImageReadMode.RGB makes greyscale, palette, RGBA and CMYK files RGB; JPEG goes
    through libjpeg-turbo. Raises one of DECODE_ERRORS for a file it cannot decode.
    """
    data = Path(path).read_bytes()
    if not data:
        raise ValueError("empty file")
    image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if image.ndim != 3:
        raise ValueError(f"animated image with {image.shape[0]} frames")
    return rescale(image)
