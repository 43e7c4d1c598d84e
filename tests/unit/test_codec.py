"""The one image codec (data/codec.py): TorchCodec where it is installed, giving the pixels and the bytes of the
torchvision.io path it replaces, with no deprecation warning on the way; and the exchange's collectives under
their torch 2.14 names."""

import importlib.util
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bench.workers import run_workers
from data.codec import CODEC, CODECS
from model.layers import GATHER
from tests.conftest import ROOT
from tests.image_files import encoded, jpeg, png
from tests.png_by_hand import png as deep_png

HAS_TORCHCODEC = importlib.util.find_spec("torchcodec") is not None
needs_torchcodec = pytest.mark.skipif(not HAS_TORCHCODEC, reason="torchcodec is not installed (requirements.txt)")


def smooth(height: int, width: int, seed: int) -> torch.Tensor:
    coarse = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(seed)) * 255
    return torch.nn.functional.interpolate(coarse, (height, width), mode="bicubic")[0].clamp(0, 255).to(torch.uint8)


def turned_jpeg() -> bytes:
    """A 40x64 JPEG whose EXIF says to turn it 90 degrees clockwise (orientation 6) to show it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(smooth(40, 64, 3), "JPEG", exif=exif.tobytes())


def palette_gif() -> bytes:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50), dtype=np.uint8), "P")
    image.putpalette(np.random.default_rng(1).integers(0, 256, 768, dtype=np.uint8).tobytes())
    return _save(image, "GIF")


def _save(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


FILES = {
    "photo jpeg": lambda: jpeg(smooth(330, 420, 0), quality=90),
    "cmyk jpeg": lambda: _save(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"),
    "turned jpeg": turned_jpeg,
    "grey png": lambda: png(smooth(50, 60, 1)[:1]),
    "16-bit png": lambda: deep_png(np.random.default_rng(2).integers(0, 65536, (20, 30, 3), dtype=np.uint16)),
    "palette gif": palette_gif,
    "webp": lambda: encoded(smooth(40, 50, 4), "WEBP", lossless=True),
}


def test_torchcodec_decodes_where_it_is_installed():
    assert CODEC.name == ("torchcodec" if HAS_TORCHCODEC else "torchvision")


def _torchvision():
    """torchvision.io, the path replaced: its own deprecation notice is what this module checks the program no
    longer meets, so it is kept quiet here, where torchvision is the reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield CODECS["torchvision"]()


@needs_torchcodec
@pytest.mark.parametrize("name", FILES)
def test_torchcodec_decodes_as_torchvision_did(name):
    data = torch.frombuffer(bytearray(FILES[name]()), dtype=torch.uint8)
    decoded = CODECS["torchcodec"]().decode_image(data)
    for reference in _torchvision():
        expected = reference.decode_image(data)
    assert decoded.dtype == expected.dtype and torch.equal(decoded, expected)
    if name == "turned jpeg":
        assert decoded.shape == (3, 64, 40)  # upright, as a viewer shows it
    if name == "16-bit png":
        assert decoded.dtype == torch.uint16  # data/decode.py's to_8_bits makes it 8 bits, the same on either


@needs_torchcodec
def test_torchcodec_encodes_the_compact_records_torchvision_did():
    image = smooth(256, 256, 5)
    record = CODECS["torchcodec"]().encode_jpeg(image, 90)
    for reference in _torchvision():
        assert torch.equal(record, reference.encode_jpeg(image, 90))
        (expected,) = reference.decode_jpegs([record], torch.device("cpu"))
    assert b"\xff\xc0" in record[:700].numpy().tobytes()  # baseline (SOF0): what nvJPEG's hardware decoder takes
    (decoded,) = CODECS["torchcodec"]().decode_jpegs([record], torch.device("cpu"))
    assert torch.equal(decoded, expected)


@needs_torchcodec
def test_decoding_and_packing_raise_no_deprecation_warning(tmp_path):
    """Files decoded and a compact pack written and read, in a process where any deprecation warning is an
    error (none is silenced in the program or pytest.ini)."""
    (tmp_path / "src/a").mkdir(parents=True)
    (tmp_path / "src/b").mkdir()
    (tmp_path / "src/a/x.jpg").write_bytes(FILES["photo jpeg"]())
    (tmp_path / "src/b/y.png").write_bytes(FILES["grey png"]())
    src = str(tmp_path / "src")
    script = (f"from packs.prepare import main; main([{src!r}, {str(tmp_path / 'pack')!r}, '--val-src', {src!r}, "
              "'--workers', '1', '--encoding', 'jpeg']);"
              "import torch; from data.packed import open_packed;"
              f"print(open_packed({str(tmp_path / 'pack')!r}).train.load(torch.arange(2))[0].shape)")
    done = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-W", "error::FutureWarning", "-c",
                           script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch.Size([2, 3, 256, 256])" in done.stdout


def _exchange_with_warnings_as_errors(rank: int, world: int) -> None:
    from distributed.exchange import ProcessGroupExchange

    warnings.simplefilter("error", FutureWarning)
    warnings.simplefilter("error", DeprecationWarning)
    import torch.distributed as dist

    exchange = ProcessGroupExchange(dist.group.WORLD)
    local = torch.full((2, 3), float(rank))
    joined = exchange.start(GATHER, [local]).wait()
    assert torch.equal(joined, torch.cat([torch.zeros(2, 3), torch.ones(2, 3)], dim=1))
    (back,) = exchange.start_dual(GATHER, torch.ones(2, 6), 1).wait()
    assert torch.equal(back, torch.full((2, 3), 2.0))  # each tower's slice, summed over both


def test_the_exchange_uses_no_deprecated_collective():
    """torch 2.14 deprecates all_gather_into_tensor and reduce_scatter_tensor for their *_single names."""
    run_workers(2, _exchange_with_warnings_as_errors)
