"""Hostile or unusual image files, and packing processes that die on them: packed right, or skipped with a reason,
never the end of the pack. Hostile source trees (links, unreadable folders) are in test_hostile_trees."""

import io
import json
import os
import signal
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.decode import MAX_PIXELS, decode_file
from data.imageset import SIDE
from data.packed import PackedImages, read_json
from packs.packing import DIED, Split, pack
from packs.prepare import main, prepare
from tests.conftest import ROOT
from tests.image_files import write_image
from tests.pack_files import skipped_lines
from tests.png_by_hand import png, zero_bomb


def encode(image: Image.Image, kind: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


def packed_train(dst: Path) -> torch.Tensor:
    """Every image of the pack's train split, read as training reads them."""
    images = PackedImages(dst / "train", [], [])
    return images.load(torch.arange(len(images)))[0]


def test_any_bit_depth_palette_or_alpha_packs_as_8_bit_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (SIDE, SIDE, 3), dtype=np.uint16)
    grey_alpha16 = rng.integers(0, 65536, (SIDE, SIDE, 2), dtype=np.uint16)
    rgba = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
    gif = Image.fromarray(indices, "P")
    gif.putpalette(palette.tobytes())
    src = tmp_path / "src"
    write_image(src / "apple/grey_alpha16.png", png(grey_alpha16))
    write_image(src / "apple/rgb16.png", png(rgb16))
    write_image(src / "pear/palette.gif", encode(gif, "GIF"))
    write_image(src / "pear/rgba.png", png(rgba))
    prepare(src, tmp_path / "pack", None, None, workers=1)
    # 256x256 sources: the resize keeps every pixel, so each value can be checked exactly.
    # A 16-bit value v is v >> 8 in 8 bits (torchvision's to_dtype(scale=True)); alpha is dropped.
    grey = grey_alpha16[..., 0] >> 8
    expected = [np.stack([grey] * 3, -1), rgb16 >> 8, palette[indices], rgba[..., :3]]
    images = packed_train(tmp_path / "pack")
    assert read_json(tmp_path / "pack/meta.json")["splits"]["train"] == {"images": 4, "skipped": 0}
    for image, pixels in zip(images, expected):
        assert torch.equal(image, torch.from_numpy(pixels.astype(np.uint8)).permute(2, 0, 1))


def test_decode_file_scales_a_16_bit_png_to_8_bits(tmp_path):
    ramp = np.linspace(0, 65535, 300 * 200 * 3).reshape(200, 300, 3).astype(np.uint16)
    image = decode_file(write_image(tmp_path / "deep.png", png(ramp)))
    assert image.dtype == torch.uint8 and image.shape == (3, SIDE, SIDE)
    assert int(image.max()) > 250
    # The same as the 8-bit file of the same picture: the depth is gone before resizing.
    assert torch.equal(image, decode_file(write_image(tmp_path / "flat.png", png((ramp >> 8).astype(np.uint8)))))


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "GIF", "WEBP"])
def test_the_pixel_limit_is_read_from_each_format_s_header(kind, tmp_path):
    path = write_image(tmp_path / "photo", encode(Image.new("RGB", (300, 200), (200, 30, 60)), kind))
    with pytest.raises(ValueError, match=r"^300x200 is 60000 pixels, over the limit of 59999$"):
        decode_file(path, max_pixels=59_999)
    assert decode_file(path, max_pixels=60_000).shape == (3, SIDE, SIDE)


def test_the_frames_of_an_animated_gif_count_towards_the_limit(tmp_path):
    frames = [Image.new("RGB", (40, 30), (80 * k, 0, 0)) for k in range(3)]
    path = write_image(tmp_path / "moving.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    with pytest.raises(ValueError, match=r"^40x30 x 3 frames is 3600 pixels, over the limit of 3599$"):
        decode_file(path, max_pixels=3599)
    with pytest.raises(ValueError, match="animated image with 3 frames"):
        decode_file(path)


# Packs a tree with a decompression bomb and a 1x20000 sliver and decodes both again,
# in a process of its own so that its peak memory is its own.
PEAK_RSS = """
import json, resource, sys
from pathlib import Path
from data.decode import DECODE_ERRORS, decode_file
from packs.prepare import prepare

def peak_mib(who):
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
before = peak_mib(resource.RUSAGE_SELF)
prepare(src, dst, None, None, workers=1)
for name in ["apple/bomb.png", "pear/sliver.png"]:
    try:
        decode_file(src / name)
    except DECODE_ERRORS:
        pass
packer, worker = peak_mib(resource.RUSAGE_SELF), peak_mib(resource.RUSAGE_CHILDREN)
print(json.dumps({"imports": before, "packer": packer, "worker": worker}))
"""


def test_decompression_bombs_and_slivers_are_decoded_in_bounded_memory(tmp_path):
    src = tmp_path / "src"
    bomb = write_image(src / "apple/bomb.png", zero_bomb(30_000))
    # 1 pixel wide, 20000 tall, grey rising down the image; resized before cropping it would be 256x5,120,000.
    sliver = np.linspace(0, 255, 20_000).round().astype(np.uint8).reshape(20_000, 1, 1)
    write_image(src / "pear/sliver.png", png(sliver))
    assert bomb.stat().st_size < 200_000
    command = [sys.executable, "-c", PEAK_RSS, str(src), str(tmp_path / "pack")]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    peak = json.loads(run.stdout.splitlines()[-1])
    print(f"peak RSS, MiB: {peak}")
    # The forked packing process starts with the packer's pages; both may grow by little beyond the imports.
    assert peak["packer"] - peak["imports"] < 256 and peak["worker"] - peak["imports"] < 256, peak
    [(split, name, reason)] = skipped_lines(tmp_path / "pack")
    assert (split, name) == ("train", "apple/bomb.png")
    assert reason == f"ValueError: 30000x30000 is 900000000 pixels, over the limit of {MAX_PIXELS}"
    # The sliver's central square is its middle pixel, grey 127.5 or so; resizing first would blend its neighbours.
    [image] = packed_train(tmp_path / "pack")
    assert 127 <= int(image.min()) <= int(image.max()) <= 128


def test_the_max_pixels_option_reaches_the_decoder(tmp_path, capsys):
    src = tmp_path / "src"
    write_image(src / "apple/small.png", encode(Image.new("RGB", (20, 20)), "PNG"))
    write_image(src / "pear/large.png", encode(Image.new("RGB", (300, 200)), "PNG"))
    main([str(src), str(tmp_path / "pack"), "--workers", "1", "--max-pixels", "1000"])
    assert "train: 1 images, 1 skipped" in capsys.readouterr().out
    assert skipped_lines(tmp_path / "pack") == [
        ["train", "pear/large.png", "ValueError: 300x200 is 60000 pixels, over the limit of 1000"]
    ]


def uniform_or_die(source: str) -> torch.Tensor:
    """Decodes "k" to an image of value k; "die" kills the process, as the out-of-memory killer would."""
    if source == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return torch.full((3, SIDE, SIDE), int(source), dtype=torch.uint8)


class _DiesWhenLookedAt:
    @property
    def shape(self):
        os.kill(os.getpid(), signal.SIGKILL)


def uniform_or_die_later(source: str):
    """Decodes "die" to something that kills the process once it is written: a death outside decoding."""
    return _DiesWhenLookedAt() if source == "die" else uniform_or_die(source)


def split_of(sources: list[str], decode) -> Split:
    return Split("train", [f"file{k}_{s}" for k, s in enumerate(sources)], sources, [0] * len(sources), decode)


@pytest.mark.timeout(120)
def test_a_file_that_kills_its_packing_process_is_skipped_and_the_pack_goes_on(tmp_path):
    sources = ["10", "11", "die", "13", "14", "15"]
    assert pack(tmp_path, [split_of(sources, uniform_or_die)], ["a"], ["a"], shard_size=2, workers=2) == 6
    assert skipped_lines(tmp_path) == [["train", "file2_die", DIED]]
    assert packed_train(tmp_path)[:, 0, 0, 0].tolist() == [10, 11, 13, 14, 15]


@pytest.mark.timeout(120)
def test_a_packing_process_dying_outside_decoding_names_the_shard_and_a_rerun_resumes(tmp_path):
    sources = ["10", "11", "die", "13"]
    with pytest.raises(BrokenProcessPool, match=r"died writing images_00001\.u8, not while decoding.*command again"):
        pack(tmp_path, [split_of(sources, uniform_or_die_later)], ["a"], ["a"], shard_size=2, workers=1)
    assert (tmp_path / "train/images_00000.pt").is_file()
    # Once whatever killed it is gone, the same pack finishes, redoing only the shard that died.
    split = replace(split_of(sources, uniform_or_die), sources=["10", "11", "12", "13"])
    assert pack(tmp_path, [split], ["a"], ["a"], shard_size=2, workers=1) == 2
    assert packed_train(tmp_path)[:, 0, 0, 0].tolist() == [10, 11, 12, 13]
