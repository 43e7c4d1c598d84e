"""Image files for tests, encoded by PIL: an encoder independent of the codec the program decodes with."""

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def encoded(image: torch.Tensor, fmt: str, **options) -> bytes:
    """uint8 [1 or 3, H, W] as the bytes of a `fmt` ("PNG", "JPEG") file."""
    pixels = image.permute(1, 2, 0).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels[..., 0] if image.shape[0] == 1 else pixels).save(out, fmt, **options)
    return out.getvalue()


def png(image: torch.Tensor) -> bytes:
    return encoded(image, "PNG")


def jpeg(image: torch.Tensor, quality: int = 75) -> bytes:
    return encoded(image, "JPEG", quality=quality)


def write_image(path: Path, data: bytes) -> Path:
    """`data` as the file `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of uint8 images `a` against `b`, in dB."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * np.log10(255**2 / mse)
