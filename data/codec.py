"""The image codecs every reader and writer of images uses: TorchCodec where it is installed, torchvision.io
where it is not. The one place that choice is made.

torchvision 0.29 deprecates its image decoding and encoding in favour of TorchCodec, whose image codecs
(libjpeg-turbo, libpng, libwebp, giflib, bundled in its wheel; nvJPEG on CUDA) need no FFmpeg.
requirements.txt pins it, so every venv this project makes decodes with it; torchvision.io stays for an
interpreter without it (the GPU image, torch 2.11 and no package registry). Both are called alike: RGB out,
a 16-bit PNG kept at 16 bits (data/decode.py's to_8_bits makes it 8 without a float copy), a JPEG turned by
its EXIF orientation (TorchCodec always does; torchvision is asked to), so a file gives the same shape
whichever decodes it. docs/BENCHMARKS.md ("Image codecs") measures the two on the same images
(`python -m bench.codecs`).
"""

from typing import Callable, NamedTuple

import torch


class Codec(NamedTuple):
    """One library's image functions, each taking and giving CPU uint8 tensors unless a device is named."""

    name: str
    decode_image: Callable[[torch.Tensor], torch.Tensor]
    """Encoded bytes (uint8 [n]) of a JPEG, PNG, WebP or GIF -> RGB [C, H, W], or [N, C, H, W] for an animation;
    uint8, or uint16 for a 16-bit PNG."""
    decode_jpegs: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]
    """JPEG records -> uint8 RGB [3, H, W] each on the device: nvJPEG's batched decoder on a GPU."""
    encode_jpeg: Callable[[torch.Tensor, int], torch.Tensor]
    """uint8 RGB [3, H, W] and a quality 1 to 100 -> a baseline JPEG (uint8 [n])."""


def _torchcodec() -> Codec:
    from torchcodec.decoders import decode_image, decode_jpeg
    from torchcodec.encoders import JpegEncoder

    return Codec(
        "torchcodec",
        lambda data: decode_image(data, mode="RGB", output_dtype="auto"),
        lambda records, device: decode_jpeg(records, mode="RGB", device=device),
        lambda image, quality: JpegEncoder(image).to_tensor(quality=quality),
    )


def _torchvision() -> Codec:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, encode_jpeg

    rgb = ImageReadMode.RGB
    return Codec(
        "torchvision",
        lambda data: decode_image(data, mode=rgb, apply_exif_orientation=True),
        lambda records, device: decode_jpeg(records, mode=rgb, device=device, apply_exif_orientation=True),
        lambda image, quality: encode_jpeg(image, quality=quality),
    )


def _installed() -> Codec:
    try:
        return _torchcodec()
    except (ImportError, OSError):  # not installed, or its libraries do not load against this torch
        return _torchvision()


CODECS = {"torchcodec": _torchcodec, "torchvision": _torchvision}
"""Each library by name, for the benchmark that compares them (bench/codecs.py)."""
CODEC = _installed()
"""The codec the program uses."""
