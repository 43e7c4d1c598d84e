"""Issue 31, class 2: memory is bounded for what a file becomes, not only for what is read of it.

Each hostile file is small on disk and within the limits of what is read (the pixel limit, the IDX byte
limit, the safetensors header limit), but would become gigabytes: decoded at 8 bytes a pixel, rescaled as
one image of 16384x16384, or mapped whole with a terabyte its header declares. Each case runs capped at its
imports plus 1 GiB, with a deadline (tests/bounded.py), and must be refused in one line from what the header
declares, before anything is decoded or mapped.
"""

import gzip
import json
import os
import struct
import zlib

import torch

from checkpoints import store
from checkpoints.weights import save_weights
from config.loading import load_config
from data.decode import MAX_PIXELS
from data.preprocessing import MEANS, Preprocessing
from model.alexnet import AlexNet
from tests import bounded
from tests.conftest import ROOT
from tests.dcp_checkpoints import genuine_state, read_header, save_checkpoint, shard
from tests.png_by_hand import png_file

MIB = 2**20


def test_a_16_bit_rgba_png_under_the_pixel_limit_is_refused_for_what_it_decodes_to(tmp_path):
    """9000x9000 is under the pixel limit; as 16-bit RGBA it decodes to 648 MB, and the decoder's copies to 2 GB."""
    deflate, row = zlib.compressobj(9), bytes(1 + 9000 * 8)
    path = tmp_path / "deep.png"
    path.write_bytes(png_file(9000, 9000, 16, 6, b"".join(deflate.compress(row) for _ in range(9000)) + deflate.flush()))
    assert path.stat().st_size < MIB
    outcome = bounded.call("from data.decode import decode_file", f"decode_file({str(path)!r})")
    assert outcome["message"] == (f"9000x9000 of 4 channel(s) of 16 bits decodes to 648000000 bytes, over the "
                                  f"{3 * MAX_PIXELS}-byte limit of a decoded image (3 bytes a pixel of the "
                                  f"{MAX_PIXELS}-pixel limit)"), outcome
    assert outcome["grew_mib"] < 64, outcome


def _idx(path, dims: tuple[int, ...], data_bytes: int) -> None:
    """An IDX file of unsigned bytes declaring `dims`, gzipped, holding `data_bytes` zeros (in members of 16 MiB
    or less: the format allows several)."""
    header = gzip.compress(b"\0\0\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims))
    members = [gzip.compress(bytes(min(16 * MIB, data_bytes - at))) for at in range(0, data_bytes, 16 * MIB)]
    path.write_bytes(header + b"".join(members))


def test_an_idx_image_under_the_byte_limit_is_refused_for_what_rescaling_it_takes(tmp_path):
    """1x16384x16384 is 256 MiB, the IDX byte limit; rescaled as one image it took 2.3 GB."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _idx(path, (1, 16384, 16384), 16384 * 16384)
    assert path.stat().st_size < MIB
    outcome = bounded.call("from pathlib import Path\nfrom packs.fashion_mnist import read_idx", f"read_idx(Path({str(path)!r}))")
    assert outcome["message"] == (f"{path}: its images, as its header declares them: 16384x16384 is 268435456 pixels, "
                                  f"over the limit of {MAX_PIXELS}; not read"), outcome
    assert outcome["grew_mib"] < 64, outcome


def test_fashion_mnist_refuses_it_in_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _idx(src / "train-images-idx3-ubyte.gz", (1, 16384, 16384), 16384 * 16384)
    _idx(src / "train-labels-idx1-ubyte.gz", (1,), 1)
    _idx(src / "t10k-images-idx3-ubyte.gz", (1, 28, 28), 28 * 28)
    _idx(src / "t10k-labels-idx1-ubyte.gz", (1,), 1)
    done = bounded.program("packs.fashion_mnist", [str(tmp_path / "dst"), "--src", str(src), "--workers", "1"], 240)
    assert bounded.one_error_line(done).endswith("16384x16384 is 268435456 pixels, over the limit of 89478485; not read")


def _with_a_terabyte_more(path, key: str) -> None:
    """Add `key` to the safetensors file `path`, declaring a tensor of 1 TiB laid after the others, the file made
    that long (sparse: no disk used). A well-formed file: safetensors itself finds nothing wrong with it."""
    header, _ = read_header(path)
    end = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
    header[key] = {"dtype": "U8", "shape": [2**40], "data_offsets": [end, end + 2**40]}
    raw = json.dumps(header).encode()
    with open(path, "r+b") as f:
        f.seek(8 + struct.unpack("<Q", f.read(8))[0])
        data = f.read(end)
        f.seek(0)
        f.write(struct.pack("<Q", len(raw)) + raw + data)
        f.truncate()
    os.truncate(path, 8 + len(raw) + end + 2**40)


def test_a_weights_file_with_a_terabyte_key_is_refused_before_it_is_mapped(tmp_path):
    cfg = load_config([ROOT / "config.yaml"], ["model.num_classes=10", "train.device=cpu"])
    mean = torch.zeros(MEANS["image"])
    preprocessing = Preprocessing([f"class {i}" for i in range(10)], mean)
    path = save_weights(AlexNet(cfg.model).state_dict(), cfg.model, preprocessing, tmp_path / "alexnet.safetensors")
    _with_a_terabyte_more(path, "extra")
    outcome = bounded.call("import torch\nfrom checkpoints.trained import load_network\nfrom config.loading import load_config",
                           f"load_network(load_config([{str(ROOT / 'config.yaml')!r}], ['model.num_classes=10', "
                           f"'train.device=cpu']), {str(path)!r}, torch.device('cpu'))")
    assert "UserError" in outcome["kinds"], outcome
    weights = sum(t.nbytes for t in AlexNet(cfg.model).state_dict().values()) + mean.nbytes  # the largest mean
    assert outcome["message"] == (f"{path}: holds {weights + 2**40} bytes of tensors, more than twice this model's "
                                  f"weights ({2 * weights} bytes); refused unread"), outcome


def test_a_checkpoint_file_with_a_terabyte_key_is_refused_before_it_is_mapped(tmp_path):
    checkpoint = save_checkpoint(genuine_state(), tmp_path / "ck")
    _with_a_terabyte_more(shard(checkpoint), "model.extra")
    outcome = bounded.call("import torch\nfrom checkpoints import store\nfrom tests.dcp_checkpoints import genuine_state, "
                           "zeros_like", f"store.load(zeros_like(genuine_state()), {str(checkpoint)!r})")
    assert "BrokenCheckpoint" in outcome["kinds"], outcome
    assert f"{shard(checkpoint)}: holds " in outcome["message"] and "refused unread" in outcome["message"], outcome
    assert store.max_data_bytes(genuine_state(), None) < 2 * MIB  # the genuine state, and room for counters
