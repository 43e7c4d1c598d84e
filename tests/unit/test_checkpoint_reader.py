"""What a hostile or damaged checkpoint folder can do now that checkpoints are safetensors files.

Nothing in the format can run: a safetensors file is a length, a JSON header and raw bytes, and
DCP's HuggingFace reader builds its metadata from those headers and copies bytes out (no pickle, no
torch.load; test_checkpoint_data_files shows the whole load path runs with unpickling disabled). What
is left is lying, and each lie is refused before DCP reads a tensor, as one line naming the file: a
crafted header (another dtype or shape, spans that overlap or do not cover the file, not JSON, a
piece of a tensor), a truncated file, an oversized header, a key in two files, a file that leaves
the folder. Where the stock reader behaves otherwise, the test shows it, so a refusal is not an accident.
"""

import os
import pathlib
import tracemalloc

import pytest
import torch
from torch.distributed.checkpoint import HuggingFaceStorageReader

from bench.workers import run_workers
from checkpoints import shards, store
from checkpoints.tensor_file import MAX_HEADER_BYTES, OtherTensors, UnreadableFile
from config.errors import UserError
from config.model import ModelConfig
from tests.dcp_checkpoints import (
    ROOM,
    assert_same_state,
    genuine_state,
    read_header,
    relaid,
    save_checkpoint,
    shard,
    sparse,
    write_file,
    zeros_like,
)


@pytest.fixture
def ckpt(tmp_path) -> pathlib.Path:
    return save_checkpoint(genuine_state(), tmp_path / "ck")


def _refused(folder: pathlib.Path, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        shards.read(zeros_like(genuine_state()), folder, ROOM)


# (1) a genuine checkpoint ------------------------------------------------------------------------


def test_genuine_checkpoint_loads_exactly(ckpt):
    loaded = zeros_like(genuine_state())
    store.load(loaded, ckpt)
    assert_same_state(loaded, genuine_state())
    found = shards.check(ckpt, {}, ROOM)
    assert found["model.fc.weight"] == ("BF16", (5, 6)) and found["progress.step"] == ("I64", ())
    assert sorted(p.name for p in ckpt.iterdir()) == [store.MARKER, "shard-00001-model-00001-of-00001.safetensors"]


def test_a_net_loads_without_the_rest():
    """Tensors the state does not ask for are left in the files (a net loads without its velocity)."""
    assert shards.flat_specs({"model": {"w": torch.zeros(2)}}) == {"model.w": ("F32", (2,))}


# (2) a crafted header --------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"model.conv.bias": {"dtype": "F64"}}, "model.conv.bias has dtype 'F64', this model's is 'F32'"),
    ({"model.conv.bias": {"shape": [5]}}, r"model.conv.bias has shape \[5\], this model's is \[4\]"),
    ({"progress.step": {"dtype": "F32"}}, "progress.step has dtype 'F32', this model's is 'I64'"),
])
def test_a_well_formed_file_with_other_tensors_is_refused(ckpt, changes, message):
    """DCP's reader would copy_ another dtype into the state, converting it silently."""
    header, length = relaid(read_header(shard(ckpt))[0], changes)
    write_file(shard(ckpt), header, bytes(length))
    _refused(ckpt, OtherTensors, rf"{ckpt}: {message}")
    with pytest.raises(UserError, match=f"checkpoint {ckpt} does not match this model.*{message}"):
        store.load(zeros_like(genuine_state()), ckpt)


def test_a_missing_key_is_named(ckpt):
    header, _ = read_header(shard(ckpt))
    del header["model.conv.bias"]
    header, length = relaid(header, {})
    write_file(shard(ckpt), header, bytes(length))
    _refused(ckpt, OtherTensors, "missing 'model.conv.bias'")


@pytest.mark.parametrize("edit", ["overlapping spans", "a span not its dtype x shape", "not JSON", "a list"])
def test_a_header_that_contradicts_itself_is_refused_by_safetensors(ckpt, edit):
    header, data = read_header(shard(ckpt))
    if edit == "overlapping spans":
        header["model.conv.bias"]["data_offsets"] = header["model.fc.index"]["data_offsets"]
    elif edit == "a span not its dtype x shape":
        header["model.conv.bias"]["shape"] = [5]
    path = write_file(shard(ckpt), header, data)
    if edit in ("not JSON", "a list"):
        raw = b"{not json" if edit == "not JSON" else b"[1, 2]"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    _refused(ckpt, UnreadableFile, rf"{path}: not a complete safetensors file .*deserializing header")


def test_a_piece_of_a_tensor_is_refused(ckpt):
    """DCP's writer records where each tensor's piece starts; the project writes whole tensors only, and a
    piece would make the stock reader assemble a tensor of another size."""
    header, data = read_header(shard(ckpt))
    header["__metadata__"][shards.SHARDING_KEY] = header["__metadata__"][shards.SHARDING_KEY].replace(
        '"model.conv.bias": {"saved_offsets": [0]}', '"model.conv.bias": {"saved_offsets": [2]}')
    write_file(shard(ckpt), header, data)
    _refused(ckpt, UnreadableFile, r"model.conv.bias is not a whole tensor .*offsets \[2\]")
    assert HuggingFaceStorageReader(str(ckpt)).read_metadata().state_dict_metadata["model.conv.bias"].size == (6,)


# (3) a truncated file, an oversized header --------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_a_truncated_file_is_refused(ckpt, keep):
    path = shard(ckpt)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    _refused(ckpt, UnreadableFile, rf"{path}: .*(too short|not a complete safetensors file|over the)")
    with pytest.raises(store.BrokenCheckpoint, match=f"checkpoint {ckpt} cannot be read: {path}: "):
        store.load(zeros_like(genuine_state()), ckpt)


def test_a_header_length_of_gigabytes_is_never_read(ckpt):
    """A sparse file as long as its header claims: reading that header would take 8 GiB."""
    path = sparse(shard(ckpt), (2**33).to_bytes(8, "little") + b"{", 8 + 2**33)
    tracemalloc.start()
    try:
        _refused(ckpt, UnreadableFile, f"{path}: its header says it is 8589934592 bytes long, over the "
                                       f"{MAX_HEADER_BYTES}-byte limit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


# (4) files that are not the checkpoint's ----------------------------------------------------------------


def test_a_key_in_two_files_is_refused(ckpt):
    """A stray copy of a shard (or of another run's): which one DCP's reader took would be an accident."""
    copy = ckpt / "shard-00009-model-00001-of-00001.safetensors"
    copy.write_bytes(shard(ckpt).read_bytes())
    with pytest.raises(UnreadableFile, match=f"{ckpt}: model.conv.bias is in both shard-00001"):
        shards.read(zeros_like(genuine_state()), ckpt, ROOM)


@pytest.mark.parametrize("kind", ["a link out of the folder", "a fifo", "a folder"])
def test_a_file_that_is_not_a_regular_file_of_the_folder_is_refused(ckpt, tmp_path, kind):
    """DCP's reader opens every *.safetensors name the folder lists, following links: a link could bring in
    a file from anywhere (shown), a fifo would block the load."""
    other = save_checkpoint({"elsewhere": {"w": torch.ones(2)}}, tmp_path / "other")
    name = ckpt / "shard-00002-model-00001-of-00001.safetensors"
    if kind == "a link out of the folder":
        os.symlink(shard(other), name)
        assert "elsewhere.w" in HuggingFaceStorageReader(str(ckpt)).read_metadata().state_dict_metadata
    elif kind == "a fifo":
        os.mkfifo(name)
    else:
        name.mkdir()
    _refused(ckpt, UnreadableFile, f"{name} is not a regular file")


def test_a_folder_without_data_files_is_broken(ckpt):
    shard(ckpt).unlink()
    with pytest.raises(store.BrokenCheckpoint, match=f"{ckpt} holds no .safetensors file"):
        store.load(zeros_like(genuine_state()), ckpt)


def test_tensors_that_contradict_the_recorded_model_make_the_checkpoint_broken(tmp_path):
    """With model.json matching this model, a tensor it does not describe means damaged files, not a user's
    mistake: the checkpoint is broken (set aside on resume), where without a record it is a mismatch."""
    folder = store.save(genuine_state(), tmp_path / "ck", 1, keep=1, model=ModelConfig())
    header, length = relaid(read_header(shard(folder))[0], {"model.conv.bias": {"shape": [5]}})
    write_file(shard(folder), header, bytes(length))
    with pytest.raises(store.BrokenCheckpoint, match="does not hold what its model.json describes"):
        store.load(zeros_like(genuine_state()), folder, ModelConfig())


# (5) the marker and the earlier format -----------------------------------------------------------------


def test_a_marker_of_another_format_is_refused(ckpt):
    (ckpt / store.MARKER).write_text('{"format": "something newer", "version": 2}')
    with pytest.raises(UserError, match=f"checkpoint {ckpt} is in another format"):
        store.load(zeros_like(genuine_state()), ckpt)


# (6) a failure one process alone meets ----------------------------------------------------------------


def _load_own_tower(rank: int, world: int, root: str, out: str) -> None:
    state = {"model": {f"towers.{rank}.w": torch.full((3,), float(rank))}}
    folder = store.save(state, root, 1, keep=1, model=ModelConfig())
    if rank == 0:
        (folder / "shard-00002-model-00001-of-00001.safetensors").unlink()  # rank 1's
    torch.distributed.barrier()
    try:
        store.load(zeros_like(state), folder, ModelConfig())
    except store.BrokenCheckpoint as err:
        pathlib.Path(out, f"rank{rank}").write_text(str(err))


def test_a_file_missing_for_one_process_stops_every_process(tmp_path):
    """Rank 0's tensors are all there, rank 1's file is gone: both ranks raise rank 1's reason (unshared, rank 0
    would wait in DCP's load for a peer that had given up, until the run's timeout)."""
    run_workers(2, _load_own_tower, str(tmp_path / "ck"), str(tmp_path))
    for rank in range(2):
        message = (tmp_path / f"rank{rank}").read_text()
        assert "does not hold what its model.json describes" in message and "missing 'model.towers.1.w'" in message
