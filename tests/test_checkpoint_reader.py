"""checkpoints.reader: DCP checkpoints load without running code stored in them.

Every crafted payload here only creates a marker file in the test's tmp_path; each test that
shows a payload refused also shows that the stock path (plain pickle.load, or dcp.load with
the stock FileSystemReader) really would have run it, so a refusal is not an accident.
Here: the .metadata file; the data files are in test_checkpoint_data_files.
"""

import builtins
import os
import pathlib
import pickle
import tracemalloc

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata

from checkpoints.reader import (
    ALLOWED_GLOBALS,
    MAX_METADATA_BYTES,
    CorruptCheckpoint,
    SafeFileSystemReader,
    UnsafeCheckpoint,
    load_checkpoint,
    read_metadata,
)
from tests.dcp_checkpoints import Touch, genuine_state, plain_metadata, save_checkpoint, write_metadata, zeros_like


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, dict):
            _assert_same(got[key], value)
        else:
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key


class Exec:
    """Pickles as builtins.exec(code that creates the marker)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


# (1) a genuine checkpoint ------------------------------------------------------------------------


def test_genuine_checkpoint_loads_exactly(tmp_path):
    saved = genuine_state()
    ckpt = save_checkpoint(saved, tmp_path / "ckpt")

    loaded = zeros_like(saved)
    dcp.load(loaded, storage_reader=SafeFileSystemReader(ckpt))
    _assert_same(loaded, saved)

    again = zeros_like(saved)
    load_checkpoint(again, ckpt)
    _assert_same(again, saved)

    md = read_metadata(ckpt)
    assert md.state_dict_metadata["model.conv.weight"].size == torch.Size([4, 3, 3, 3])
    assert md.state_dict_metadata["progress.step"].properties.dtype == torch.int64
    assert read_metadata(ckpt / ".metadata").state_dict_metadata.keys() == md.state_dict_metadata.keys()


def test_genuine_bytes_entries_load(tmp_path):
    """Non-tensor values (DCP's bytes entries) still load when they are plain data."""
    saved = {"model": {"w": torch.ones(2, 2)}, "extra": {"n": 3, "s": "x", "l": [1, 2.5, None], "d": {"a": (1, 2)}}}
    ckpt = save_checkpoint(saved, tmp_path / "ckpt")
    loaded = {"model": {"w": torch.zeros(2, 2)}, "extra": {"n": 0, "s": "", "l": [], "d": {"a": ()}}}
    dcp.load(loaded, storage_reader=SafeFileSystemReader(ckpt))
    assert loaded["extra"] == saved["extra"]
    assert torch.equal(loaded["model"]["w"], saved["model"]["w"])


def test_allow_list_covers_what_dcp_writes(tmp_path):
    """Every global a real DCP .metadata names is allowed (how the allow-list was derived)."""
    state = {
        **genuine_state(),
        "layouts": {
            "channels_last": torch.randn(1, 3, 4, 4).to(memory_format=torch.channels_last),
            "transposed": torch.randn(3, 5).t(),
            "empty": torch.empty(0),
            "dtypes": {str(dt): torch.zeros(2, dtype=dt) for dt in (torch.float16, torch.float64, torch.uint8,
                                                                     torch.int8, torch.int32, torch.complex64)},
        },
        "extra": {"n": 3},
    }
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    for one_file in (True, False):
        ckpt = tmp_path / f"ckpt{one_file}"
        dcp.save(state, storage_writer=dcp.FileSystemWriter(ckpt, single_file_per_rank=one_file))
        with open(ckpt / ".metadata", "rb") as f:
            Recorder(f).load()
        read_metadata(ckpt)
    assert ("torch.distributed.checkpoint.metadata", "Metadata") in seen
    assert seen <= ALLOWED_GLOBALS.keys(), seen - ALLOWED_GLOBALS.keys()


# (2) a crafted .metadata ----------------------------------------------------------------------------


@pytest.mark.parametrize("payload, refused", [(Touch, "pathlib.Path.touch"), (Exec, "builtins.exec")])
def test_crafted_metadata_is_refused(tmp_path, payload, refused):
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ckpt")
    md = plain_metadata(ckpt)
    marker = tmp_path / "pwned"
    md.planner_data = {"note": payload(marker)}  # the rest of the file stays a real checkpoint's
    write_metadata(md, ckpt)
    file = str(ckpt / ".metadata")

    with pytest.raises(UnsafeCheckpoint) as err:
        read_metadata(ckpt)
    assert file in str(err.value) and f"'{refused}'" in str(err.value)
    assert err.value.global_name == refused and isinstance(err.value, ValueError)
    assert not marker.exists()

    with pytest.raises(UnsafeCheckpoint, match=refused):
        SafeFileSystemReader(ckpt).read_metadata()
    with pytest.raises(UnsafeCheckpoint, match=refused):
        load_checkpoint(zeros_like(genuine_state()), ckpt)
    # Through dcp.load itself DCP swallows the refusal (then fails with "metadata is None", wrapped).
    with pytest.raises(dcp.CheckpointException):
        dcp.load(zeros_like(genuine_state()), storage_reader=SafeFileSystemReader(ckpt))
    assert not marker.exists()

    # The test means something: the stock reader runs the payload.
    FileSystemReader(ckpt).read_metadata()
    assert marker.exists()


def test_refused_rank_local_metadata(tmp_path):
    """DCP's fallback file __0.metadata is read the same way."""
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ckpt")
    md = plain_metadata(ckpt)
    md.planner_data = Touch(tmp_path / "pwned")
    with open(ckpt / "__0.metadata", "wb") as f:
        pickle.dump(md, f)
    os.remove(ckpt / ".metadata")
    with pytest.raises(UnsafeCheckpoint, match=r"__0\.metadata.*pathlib\.Path\.touch"):
        SafeFileSystemReader(ckpt).read_metadata(rank=0)
    with pytest.raises(UnsafeCheckpoint, match=r"__0\.metadata"):
        load_checkpoint(zeros_like(genuine_state()), ckpt)
    assert not (tmp_path / "pwned").exists()


def test_build_on_a_class_is_refused(tmp_path):
    """BUILD may set state on metadata objects only, never rewrite an allowed class."""
    file = tmp_path / ".metadata"
    # Metadata (the class itself), then BUILD with (None, {"poisoned": 1}): setattr(Metadata, ...).
    file.write_bytes(
        b"\x80\x04\x8c%torch.distributed.checkpoint.metadata\x8c\x08Metadata\x93"
        b"N}\x8c\x08poisoned\x4b\x01s\x86b."
    )
    with pytest.raises(UnsafeCheckpoint, match="refusing to set the state"):
        read_metadata(file)
    assert not hasattr(Metadata, "poisoned")


def test_huge_memo_index_allocates_nothing(tmp_path):
    """A 9-byte pickle naming memo slot 2**30: the C unpickler would allocate 16 GiB for it."""
    file = tmp_path / ".metadata"
    file.write_bytes(b"\x80\x04N" + b"r" + (2**30).to_bytes(4, "little") + b".")
    tracemalloc.start()
    try:
        with pytest.raises(CorruptCheckpoint, match="not DCP Metadata"):
            read_metadata(file)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def test_data_file_outside_the_folder_is_refused(tmp_path):
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ckpt")
    md = plain_metadata(ckpt)
    index = next(iter(md.storage_data))
    for bad in ("../elsewhere.distcp", "/etc/passwd", "C:\\x.distcp", "a/../../b"):
        md.storage_data[index] = _StorageInfo(bad, 0, 10)
        write_metadata(md, ckpt)
        with pytest.raises(UnsafeCheckpoint, match="outside the checkpoint folder"):
            read_metadata(ckpt)


# (3) an oversized .metadata ------------------------------------------------------------------------


def test_oversized_metadata_is_refused_unread(tmp_path):
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    md = plain_metadata(ckpt)
    md.planner_data = Touch(marker)
    write_metadata(md, ckpt)
    size = MAX_METADATA_BYTES + 1
    os.truncate(ckpt / ".metadata", size)  # sparse: a payload up front, then zeros pickle never reads
    with pytest.raises(UnsafeCheckpoint) as err:
        read_metadata(ckpt)
    message = str(err.value)
    assert str(ckpt / ".metadata") in message and f"{size} bytes" in message and f"{MAX_METADATA_BYTES}-byte" in message
    with pytest.raises(UnsafeCheckpoint, match=f"{size} bytes"):
        SafeFileSystemReader(ckpt).read_metadata()
    assert not marker.exists()


def test_metadata_without_a_size_is_read_only_up_to_the_limit(tmp_path):
    """A file the file system gives no size for (/dev/zero here) is cut off at the limit."""
    (tmp_path / "ckpt").mkdir()
    os.symlink("/dev/zero", tmp_path / "ckpt" / ".metadata")
    with pytest.raises(UnsafeCheckpoint, match="more than 4096 bytes"):
        read_metadata(tmp_path / "ckpt", max_bytes=4096)
    with pytest.raises(UnsafeCheckpoint, match="more than 4096 bytes"):
        SafeFileSystemReader(tmp_path / "ckpt", max_metadata_bytes=4096).read_metadata()


# (4) a truncated .metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 1, 0.5])
def test_truncated_metadata_is_a_clear_error(tmp_path, keep):
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ckpt")
    file = ckpt / ".metadata"
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptCheckpoint) as err:
        read_metadata(ckpt)
    assert isinstance(err.value, ValueError) and not isinstance(err.value, (pickle.UnpicklingError, EOFError))
    assert str(file) in str(err.value) and "truncated or corrupt" in str(err.value)
    with pytest.raises(CorruptCheckpoint, match="truncated or corrupt"):
        load_checkpoint(zeros_like(genuine_state()), ckpt)
