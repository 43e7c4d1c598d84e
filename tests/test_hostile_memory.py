"""Issue 23, class 3: every reader bounds what it reads by what the format declares and the project's stated
limits, before reading it, so a refusal takes under 1 GB.

Each hostile file here is small on disk (sparse, or compressed ~1000:1) and would grow to gigabytes if read
as it says. Each case runs in a process of its own whose memory is capped at its imports plus 1 GiB
(tests/bounded.py): a reader that grows past that fails there, and the test asserts the refusal's message.
"""

import gzip
import json
import struct
import zipfile
import zlib

import pytest
import torch

from checkpoints import store
from data.decode import MAX_PIXELS
from tests import bounded
from tests.conftest import ROOT
from tests.pack_files import stats
from tests.png_by_hand import zero_bomb

CHUNK = 2**24


def sparse(path, head: bytes, size: int):
    """`head`, then zeros up to `size` bytes that take no disk."""
    path.write_bytes(head)
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


def test_an_image_whose_header_is_a_bomb_is_refused_before_the_rest_is_read(tmp_path):
    path = sparse(tmp_path / "bomb.png", zero_bomb(30_000), 200 * 2**20)
    outcome = bounded.call("from data.decode import decode_file", f"decode_file({str(path)!r})")
    assert outcome["message"] == f"30000x30000 is 900000000 pixels, over the limit of {MAX_PIXELS}", outcome
    assert outcome["grew_mib"] < 64, outcome  # the first 64 KiB read, not the 200 MiB behind them


def test_an_image_file_over_its_byte_limit_is_refused_unread(tmp_path):
    path = sparse(tmp_path / "huge.png", zero_bomb(100), 2 * 2**30)
    outcome = bounded.call("from data.decode import decode_file", f"decode_file({str(path)!r})")
    assert outcome["message"].startswith(f"{2 * 2**30} bytes, over the {3 * MAX_PIXELS}-byte limit of an image file"), outcome
    assert outcome["grew_mib"] < 64, outcome


def _zip(path, entries: list[tuple[str, int, int, bytes, int]]) -> None:
    """A zip file of (name, method, crc32, stored bytes, size once extracted) entries, written by hand:
    Python's writer would deflate gigabytes itself."""
    out, central = bytearray(), bytearray()
    for name, method, crc, data, size in entries:
        raw = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size,
                               len(raw), 0, 0, 0, 0, 0, len(out)) + raw
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(raw), 0) + raw + data
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))


def _deflated_zeros(chunks: int) -> tuple[bytes, int]:
    """Raw deflate of chunks x 16 MiB of zeros, made in a moment: one chunk compressed and flushed to a byte
    boundary with a reset window, repeated. Returns (the stream, the zeros' crc32)."""
    zero = bytes(CHUNK)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece, crc = compressor.compress(zero) + compressor.flush(zlib.Z_FULL_FLUSH), 0
    for _ in range(chunks):
        crc = zlib.crc32(zero, crc)
    return piece * chunks + compressor.flush(), crc


def test_a_stats_file_that_would_inflate_to_gigabytes_is_refused_from_its_directory(pack):
    """stats.pt of 1.6 MB: the mean image's entry deflated, declaring 1.6 GB."""
    torch.save(stats(), pack / "stats.pt")
    with zipfile.ZipFile(pack / "stats.pt") as original:
        entries = [(i.filename, original.read(i)) for i in original.infolist()]
    biggest = max(entries, key=lambda e: len(e[1]))[0]
    inflating, crc = _deflated_zeros(96)
    _zip(pack / "stats.pt", [(name, zipfile.ZIP_DEFLATED, crc, inflating, 96 * CHUNK) if name == biggest
                             else (name, zipfile.ZIP_STORED, zlib.crc32(data), data, len(data)) for name, data in entries])
    assert (pack / "stats.pt").stat().st_size < 2 * 2**20
    outcome = bounded.call("from data.packed import read_pack_meta", f"read_pack_meta({str(pack)!r})")
    assert f"{pack / 'stats.pt'}: holds compressed entries" in outcome["message"], outcome
    assert outcome["grew_mib"] < 64, outcome


def _idx_gzip(path, dims: tuple[int, ...], chunks: int) -> None:
    """An IDX images file declaring `dims`, gzipped, holding chunks x 16 MiB of zeros (one gzip member per
    chunk: the format allows several)."""
    member = gzip.compress(bytes(CHUNK))
    header = gzip.compress(b"\0\0\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims))
    path.write_bytes(header + member * chunks)


@pytest.mark.parametrize("dims, why", [((60000, 28, 28), "the header says (60000, 28, 28), the file holds more than"),
                                       ((2**31, 28, 28), "over the 268435456-byte limit of an IDX file; not read")])
def test_a_fashion_mnist_gzip_is_read_no_further_than_its_header_declares(tmp_path, dims, why):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _idx_gzip(path, dims, 90)  # 1.5 GB once inflated, 1.5 MB on disk
    assert path.stat().st_size < 2 * 2**20
    outcome = bounded.call("from pathlib import Path\nfrom packs.fashion_mnist import read_idx", f"read_idx(Path({str(path)!r}))")
    assert "ValueError" in outcome["kinds"] and why in outcome["message"], outcome
    assert outcome["grew_mib"] < 256, outcome  # what 60000 images of 28x28 take, not the 1.5 GB


def test_a_config_with_aliases_layered_twice_is_refused_not_merged_exponentially(tmp_path):
    """Nine mappings, each holding the one before nine times: 9^8 mappings once the layering copies them out."""
    lines = ["x:", "  a0: &a0 {" + ", ".join(f"k{i}: 1" for i in range(9)) + "}"]
    lines += [f"  a{n}: &a{n} {{" + ", ".join(f"k{i}: *a{n - 1}" for i in range(9)) + "}" for n in range(1, 9)]
    path = tmp_path / "aliases.yaml"
    path.write_text("\n".join(lines) + "\n")
    outcome = bounded.call("from config.loading import load_config",
                           f"load_config([{str(ROOT / 'config.yaml')!r}, {str(path)!r}, {str(path)!r}])")
    assert outcome["error"] == "ConfigError", outcome
    assert outcome["message"] == f"config file {path}: YAML alias *a0 at 3:16: aliases are not allowed in a config " \
                                 "(write the values out)", outcome


def test_a_model_json_of_a_gigabyte_is_refused_unread(tmp_path):
    folder = tmp_path / "step_00000001"
    folder.mkdir()
    (folder / store.MARKER).write_text(json.dumps(store.FORMAT))
    sparse(folder / store.MODEL_FILE, b'{"lrn": "', 10**9)
    outcome = bounded.call("from checkpoints.trained import checkpoint_paths\nfrom config.loading import load_config",
                           f"checkpoint_paths(load_config([{str(ROOT / 'config.yaml')!r}]), [{str(folder)!r}])")
    assert "UserError" in outcome["kinds"] and "model.json" in outcome["message"], outcome
    assert outcome["grew_mib"] < 64, outcome
