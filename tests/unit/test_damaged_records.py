"""Issue 31, class 8: a compact pack's record that does not decode whole is a damaged image, named as the others.

A decoder that runs out of coded blocks fills the rest with grey and returns the image: libjpeg prints
"premature end of data segment" and nothing else notices. data/jpeg_scan.py counts the blocks a baseline
scan codes, from the record alone, and data/compact.py `cut_short` asks it whenever an image's last block is
the grey a decoder fills with. Its counts are checked here against the frame arithmetic of JPEG (blocks of
8x8 per component, MCUs of the largest sampling factors) on records that libjpeg (torchvision) and Pillow
wrote: 4:2:0, 4:4:4, grey, restart markers.
"""

import io
import re
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg

from config.errors import UserError
from data.compact import DamagedImage, decode
from data.jpeg_scan import coded_blocks
from data.order import EpochOrder
from data.packed import open_packed
from data.synthetic import synthetic_image
from distributed import layout
from distributed.feed import training_batches
from packs.encoding import Encoding
from packs.packing import Split, pack
from tests.trainer_runs import small_config

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def image(index: int = 3) -> torch.Tensor:
    return synthetic_image(10, 0, "train", index)


def record(pixels: torch.Tensor, quality: int = 90) -> bytes:
    return encode_jpeg(pixels.contiguous(), quality=quality).numpy().tobytes()


def pillow(pixels: torch.Tensor, **options) -> bytes:
    out = io.BytesIO()
    mode = "L" if pixels.shape[0] == 1 else "RGB"
    Image.fromarray(pixels.permute(1, 2, 0).squeeze(-1).numpy(), mode).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def forged(pixels: torch.Tensor, side: int = 256) -> bytes:
    """The record of `pixels` with its frame header made to declare side x side: the scan stays theirs."""
    data = bytearray(record(pixels))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2
    return bytes(data)


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@pytest.mark.parametrize("made, blocks", [
    (lambda: record(image()), 16 * 16 * 6),  # 4:2:0: MCUs of 16x16, 4 luma blocks and 2 chroma each
    (lambda: pillow(image(), subsampling=0), 32 * 32 * 3),  # 4:4:4: one block of each component an MCU
    (lambda: pillow(image()[:1]), 32 * 32),  # grey: one component, not interleaved
    (lambda: pillow(image(), restart_marker_blocks=3), 16 * 16 * 6),  # an interval every 3 MCUs
    (lambda: record(image()[:, :100, :200]), 7 * 13 * 6),  # MCUs cover the edges: ceil(100/16) x ceil(200/16)
    (lambda: record(torch.full((3, 256, 256), 128, dtype=torch.uint8)), 16 * 16 * 6),  # all of it the fill grey
])
def test_a_whole_scan_codes_every_block_its_frame_declares(made, blocks):
    assert coded_blocks(made()) == (blocks, blocks)


def test_a_scan_cut_short_codes_fewer_blocks_the_shorter_it_is():
    whole = record(image())
    start = whole.index(b"\xff\xda")
    counts = [coded_blocks(whole[:cut] + b"\xff\xd9")[1] for cut in range(start + 200, len(whole) - 200, 2000)]
    assert counts == sorted(counts) and counts[-1] < 16 * 16 * 6 and counts[0] > 0
    assert coded_blocks(forged(image()[:, :128, :128])) == (1536, 384)  # a 128x128 scan: 8 x 8 MCUs of 6 blocks


def test_a_restart_interval_cut_short_is_counted_to_its_last_whole_mcu():
    whole = pillow(image(), restart_marker_blocks=3)
    fifth = [m.start() for m in re.finditer(rb"\xff[\xd0-\xd7]", whole)][4]  # after 5 intervals of 3 MCUs
    assert coded_blocks(whole[:fifth] + b"\xff\xd9") == (1536, 15 * 6)


def test_a_progressive_record_is_not_walked():
    with pytest.raises(ValueError, match="not a baseline JPEG"):
        coded_blocks(pillow(image(), progressive=True))


def test_decoding_a_forged_record_is_refused_and_a_genuine_grey_one_is_not():
    with pytest.raises(ValueError, match=r"^its scan codes 384 of the 1536 blocks its header declares \(the rest decode "
                                         r"as grey\)$"):
        decode(as_tensor(forged(image()[:, :128, :128])))
    grey = torch.full((3, 256, 256), 128, dtype=torch.uint8)
    assert torch.equal(decode(as_tensor(record(grey))), grey)  # its last block is the fill, and it is whole


@pytest.fixture
def forged_pack(tmp_path):
    """A compact pack of 8 training images, 4 a shard, whose image 5's record holds the scan of a 128x128 image
    under a header declaring 256x256 (padded to the record's length after its end marker)."""
    draw = partial(synthetic_image, 10, 0, "train")
    splits = [Split(s, [f"{s}[{i}]" for i in range(8)], list(range(8)), [i % 2 for i in range(8)], draw)
              for s in ("train", "val")]
    pack(tmp_path / "pack", splits, ["a", "b"], ["a", "b"], 4, 1, Encoding("jpeg"))
    lengths = np.load(tmp_path / "pack/train/lengths.npy")
    shard = tmp_path / "pack/train/images_00001.jpgs"
    data = bytearray(shard.read_bytes())
    start, length = int(lengths[4]), int(lengths[5])
    bad = forged(draw(5)[:, :128, :128])
    data[start : start + length] = bad + bytes(length - len(bad))
    shard.write_bytes(bytes(data))
    return tmp_path / "pack"


def test_a_forged_record_in_a_pack_is_refused_naming_pack_shard_and_image(forged_pack, tmp_path):
    expected = re.escape(f"{forged_pack}: train image 5 (images_00001.jpgs, image 1 of the shard) cannot be read: its "
                         "scan codes 384 of the 1536 blocks")
    data = open_packed(str(forged_pack))
    with pytest.raises(DamagedImage, match=expected):
        data.train.load(torch.tensor([4, 5]))
    cfg = small_config(tmp_path, f"data.root={forged_pack}", "data.workers=1", "model.num_classes=2",
                       "train.batch_size=8")
    with pytest.raises(UserError, match=expected):
        next(training_batches(data.train, EpochOrder(8, 8, 0), cfg, layout.start(layout.plan_from_env(cfg), 30), 0, 1))
