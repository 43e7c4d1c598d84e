"""Every cap on what a reader takes, at its boundary: a file of exactly the cap passes it (whatever its content
then makes of it), one byte more is refused with a message naming the cap. A limit one byte too strict, or a
thousand times too lax, fails here; the refusals tested elsewhere use files far past their caps."""

import json
import os
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

import files
from checkpoints import store
from checkpoints.tensor_file import MAX_HEADER_BYTES, UnreadableFile, header_metadata, open_checked
from config.loading import CONFIG_FILE_BYTES, load_config
from config.model import ModelConfig
from data import pack_format
from data.decode import BYTES_PER_PIXEL, read_image_file
from packs import assembly, prepare
from packs.fashion_mnist import MAX_IDX_BYTES, read_idx
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def sized(path: Path, size: int, head: bytes = b"") -> Path:
    """`head`, then zeros up to `size` bytes (sparse: no disk taken)."""
    path.write_bytes(head)
    os.truncate(path, size)
    return path


def over(size: int, cap: int) -> str:
    return f"{size} bytes, over the {cap}-byte limit"


def failure(read, path: Path) -> str | None:
    """The message `read(path)` raises, or None when it reads the file."""
    try:
        read(path)
    except (ValueError, OSError) as err:  # Refused and the project's UserErrors are ValueErrors
        return str(err)
    return None


def _json(path: Path) -> None:
    path.write_text(json.dumps("a" * 998))


def _torch(path: Path) -> None:
    torch.save({"x": torch.arange(3.0)}, path)


@pytest.mark.parametrize("write, read", [
    pytest.param(lambda p: p.write_bytes(b"x" * 1000), files.read_capped, id="read_capped"),
    pytest.param(_json, files.read_json, id="read_json"),
    pytest.param(_torch, files.read_torch, id="read_torch"),
])
def test_a_file_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(tmp_path, write, read):
    path = tmp_path / "file"
    write(path)
    size = path.stat().st_size
    assert read(path, size) is not None
    with pytest.raises(files.Refused, match=f"{path}: {over(size, size - 1)}"):
        read(path, size - 1)


def _model_json(path: Path) -> None:
    """A checkpoint folder's model.json is `path`: its recorded model config checked against the default's."""
    store.check_model(path.parent, ModelConfig())


def _val_labels(path: Path) -> None:
    (path.parent / "val").mkdir(exist_ok=True)
    prepare.val_split(path.parent / "val", path, [], None)


def _sidecar(path: Path) -> None:
    assembly.assemble(path.parent / "pack", path.parent, 1, (), "raw")


CAPS = {
    # name: (the file's name, its cap, how a run reads it)
    "config file": ("layer.yaml", CONFIG_FILE_BYTES, lambda p: load_config([ROOT / "config.yaml", p])),
    "a checkpoint's model.json": ("model.json", store.MAX_JSON_BYTES, _model_json),
    "a pack's JSON file": ("meta.json", pack_format.MAX_JSON_BYTES, pack_format.read_json),
    "a --val-labels file": ("labels.txt", prepare.MAX_LABEL_FILE_BYTES, _val_labels),
    "a shard's sidecar": (assembly.sidecar_path(Path(), 0).name, assembly.MAX_SIDECAR_BYTES, _sidecar),
}


@pytest.mark.parametrize("what", CAPS)
def test_each_reader_s_cap_is_its_declared_one(tmp_path, what):
    """The file of exactly the cap passes it (a comment-only config loads; the others are zeros, refused for what
    they hold); one byte more is refused unread, naming the cap."""
    name, cap, read = CAPS[what]
    path = tmp_path / name
    if what == "config file":
        path.write_bytes(b"#" * cap)
    else:
        sized(path, cap)
    message = failure(read, path)
    assert message is None or "-byte limit" not in message, message
    sized(path, cap + 1)
    assert over(cap + 1, cap) in failure(read, path)


def test_an_image_file_of_exactly_its_byte_limit_is_read(tmp_path):
    """decode's own cap: BYTES_PER_PIXEL bytes a pixel of the pixel limit (a PNG, zero-padded after its end)."""
    from PIL import Image

    Image.new("RGB", (30, 20)).save(tmp_path / "small.png")
    png = (tmp_path / "small.png").read_bytes()
    limit_pixels = 600  # 30 x 20: the header passes too
    path = sized(tmp_path / "padded.png", BYTES_PER_PIXEL * limit_pixels, png)
    assert len(read_image_file(path, limit_pixels)) == BYTES_PER_PIXEL * limit_pixels
    sized(path, BYTES_PER_PIXEL * limit_pixels + 1, png)
    with pytest.raises(ValueError, match=over(BYTES_PER_PIXEL * limit_pixels + 1, BYTES_PER_PIXEL * limit_pixels)):
        read_image_file(path, limit_pixels)


def test_an_idx_file_declaring_exactly_its_cap_is_read_as_far_as_it_goes(tmp_path):
    """fashion_mnist's own cap, on the size the header declares: exactly MAX_IDX_BYTES passes the cap (this file
    then holds none of them), one more is refused before a byte of data is read."""
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(b"\0\0\x08\x01" + struct.pack(">I", MAX_IDX_BYTES))
    with pytest.raises(ValueError, match=rf"the header says \({MAX_IDX_BYTES},\), the file holds 0 bytes"):
        read_idx(path)
    path.write_bytes(b"\0\0\x08\x01" + struct.pack(">I", MAX_IDX_BYTES + 1))
    with pytest.raises(ValueError, match=f"{MAX_IDX_BYTES + 1} bytes, over the {MAX_IDX_BYTES}-byte limit"):
        read_idx(path)


def _safetensors(path: Path, header_bytes: int | None = None) -> tuple[bytes, bytes]:
    """One small tensor saved by safetensors, its header padded with spaces (which the format allows) to
    `header_bytes`; returns (the header, the data after it)."""
    safetensors.torch.save_file({"w": torch.arange(4.0)}, path)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header, data = raw[8 : 8 + length], raw[8 + length :]
    if header_bytes is not None:
        header = header.rstrip() + b" " * (header_bytes - len(header.rstrip()))
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return header, data


DATA_BYTES = 16
"""The tensor data _safetensors writes: four float32s."""


def test_safetensors_data_of_exactly_the_bound_is_read_and_one_byte_less_of_bound_refuses_it(tmp_path):
    path = tmp_path / "w.safetensors"
    _safetensors(path)
    with open_checked(path, DATA_BYTES) as opened:
        assert torch.equal(opened.get_tensor("w"), torch.arange(4.0))
    with pytest.raises(UnreadableFile, match=f"holds {DATA_BYTES} bytes of tensors, more than the bound "
                                             f"\\({DATA_BYTES - 1} bytes\\)"):
        open_checked(path, DATA_BYTES - 1, "the bound").__enter__()


def test_a_safetensors_header_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    _safetensors(path, MAX_HEADER_BYTES)
    with open_checked(path, DATA_BYTES) as opened:
        assert torch.equal(opened.get_tensor("w"), torch.arange(4.0))
    _safetensors(path, MAX_HEADER_BYTES + 1)
    with pytest.raises(UnreadableFile, match=f"its header says it is {MAX_HEADER_BYTES + 1} bytes long, over the "
                                             f"{MAX_HEADER_BYTES}-byte limit"):
        open_checked(path, DATA_BYTES).__enter__()


def test_a_header_longer_than_the_file_after_its_length_gets_this_project_s_message(tmp_path):
    """The header may take every byte after the 8 of its length, not one more: a length of size - 7 is refused
    by the bound, before safetensors' parser is asked (its own message would say something else); a file that
    is all header is read."""
    path = tmp_path / "w.safetensors"
    header, data = _safetensors(path)
    size = 8 + len(header) + len(data)
    for claimed in (size - 7, size):
        path.write_bytes(struct.pack("<Q", claimed) + header + data)
        with pytest.raises(UnreadableFile, match=f"its header says it is {claimed} bytes long, over the "
                                                 f"{MAX_HEADER_BYTES}-byte limit or the file's {size} bytes"):
            open_checked(path, DATA_BYTES).__enter__()
    # size - 8: the bound lets it through, and the parser refuses a header that is not JSON.
    path.write_bytes(struct.pack("<Q", size - 8) + header + data)
    with pytest.raises(UnreadableFile, match="not a complete safetensors file"):
        open_checked(path, DATA_BYTES).__enter__()
    # size - 8 in a file that is all header (no tensors, only metadata): read, by both readers.
    safetensors.torch.save_file({}, path, metadata={"step": "7"})
    assert struct.unpack("<Q", path.read_bytes()[:8]) == (path.stat().st_size - 8,)
    assert header_metadata(path) == {"step": "7"}
    with open_checked(path, 0) as opened:
        assert list(opened.keys()) == [] and opened.metadata() == {"step": "7"}


def test_a_compact_record_of_exactly_the_cap_passes_it():
    from data.compact import MAX_RECORD_BYTES, check_record

    assert check_record(torch.zeros(MAX_RECORD_BYTES, dtype=torch.uint8)) == "not a JPEG record (no start-of-image marker)"
    assert check_record(torch.zeros(MAX_RECORD_BYTES + 1, dtype=torch.uint8)) == (
        f"a record of {MAX_RECORD_BYTES + 1} bytes (1 to {MAX_RECORD_BYTES} allowed)")
