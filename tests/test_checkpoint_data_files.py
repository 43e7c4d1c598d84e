"""checkpoints.reader: the data files of a DCP checkpoint load without running code stored in them.

A bytes entry (a non-tensor value, torch.save'd into a data file) that would run code is refused; a tensor entry
is read weights-only by DCP itself. As in test_checkpoint_reader, each payload only creates a marker file, and
each test shows what the stock reader does with the same file.
"""

import io
import pathlib

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

from checkpoints.reader import SafeFileSystemReader, UnsafeCheckpoint, load_checkpoint, read_metadata
from tests.dcp_checkpoints import Touch, genuine_state, plain_metadata, save_checkpoint, write_metadata, zeros_like


def _bytes_entry_checkpoint(tmp_path: pathlib.Path, payload: object) -> tuple[pathlib.Path, pathlib.Path]:
    """A genuine checkpoint whose metadata then says `model.conv.bias` is a bytes entry,
    stored as torch.save(payload) appended to the data file. The metadata names only allowed
    globals: the safe metadata reader accepts it."""
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ckpt")
    md = plain_metadata(ckpt)
    data_file = ckpt / md.storage_data[next(iter(md.storage_data))].relative_path
    buf = io.BytesIO()
    torch.save(payload, buf)
    offset = data_file.stat().st_size
    with open(data_file, "ab") as f:
        f.write(buf.getvalue())
    md.state_dict_metadata["model.conv.bias"] = BytesStorageMetadata()
    for index in [i for i in md.storage_data if i.fqn == "model.conv.bias"]:
        del md.storage_data[index]
    md.storage_data[MetadataIndex("model.conv.bias")] = _StorageInfo(data_file.name, offset, len(buf.getvalue()))
    write_metadata(md, ckpt)
    read_metadata(ckpt)  # accepted: the danger is in the data file
    return ckpt, data_file


def test_bytes_entry_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt, data_file = _bytes_entry_checkpoint(tmp_path, Touch(marker))

    with pytest.raises(dcp.CheckpointException) as wrapped:
        dcp.load(zeros_like(genuine_state()), storage_reader=SafeFileSystemReader(ckpt))
    (cause, _), = wrapped.value.failures.values()
    assert isinstance(cause, UnsafeCheckpoint)
    assert str(data_file) in str(cause) and "'model.conv.bias'" in str(cause) and "weights_only=True" in str(cause)
    with pytest.raises(UnsafeCheckpoint, match="model.conv.bias"):
        load_checkpoint(zeros_like(genuine_state()), ckpt)
    assert not marker.exists()

    # The test means something: stock DCP unpickles the entry with weights_only=False.
    try:
        dcp.load(zeros_like(genuine_state()), storage_reader=FileSystemReader(ckpt))
    except dcp.CheckpointException:
        pass
    assert marker.exists()


def test_tensor_entries_are_read_weights_only_by_dcp_itself(tmp_path):
    """A tensor entry's bytes go through torch.load(weights_only=True) in DCP already:
    a payload there is refused even by the stock reader."""
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ckpt")
    md = plain_metadata(ckpt)
    index = next(i for i in md.storage_data if i.fqn == "model.conv.bias")
    data_file = ckpt / md.storage_data[index].relative_path
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(Touch(marker), buf)
    offset = data_file.stat().st_size
    with open(data_file, "ab") as f:
        f.write(buf.getvalue())
    md.storage_data[index] = _StorageInfo(data_file.name, offset, len(buf.getvalue()))
    write_metadata(md, ckpt)
    for reader in (FileSystemReader(ckpt), SafeFileSystemReader(ckpt)):
        with pytest.raises(dcp.CheckpointException, match="Weights only load failed"):
            dcp.load(zeros_like(genuine_state()), storage_reader=reader)
    assert not marker.exists()
