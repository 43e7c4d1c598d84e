"""Checkpoints hold tensors only, and loading one unpickles nothing, by construction.

Why payloads that would run code are impossible: DCP runs code from a folder only through pickle, in two
places, its FileSystemReader's `.metadata` (pickle.load) and bytes entries (torch.load weights_only=False,
chosen by that metadata). The HuggingFace reader the project uses has neither: its metadata is built from
safetensors headers (JSON) and every entry it knows is a tensor, read with safe_open. So (1) the whole
load path runs here with every unpickler replaced by a trap; (2) a non-tensor value is refused when saved
(DCP's HF writer would put pickled bytes into the safetensors file); (3) pickles left in a folder are
never opened; (4) a folder in the earlier, pickled format is refused with one line, untouched.
"""

import pickle
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from torch.distributed.checkpoint import HuggingFaceStorageWriter

from checkpoints import shards, store
from checkpoints.folder import CheckpointFolder
from checkpoints.tensor_file import UnreadableFile
from checkpoints.trained import checkpoint_paths
from config.errors import UserError
from distributed import layout
from tests.dcp_checkpoints import ROOM, Touch, assert_same_state, genuine_state, save_checkpoint, shard, zeros_like
from tests.trainer_runs import small_config


@pytest.fixture
def unpickled(monkeypatch) -> list[str]:
    """Every way torch or DCP could unpickle, replaced by a trap that records its name and raises."""
    calls: list[str] = []

    def trap(name):
        def trapped(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return trapped

    for name in ("load", "loads", "Unpickler", "_Unpickler"):
        monkeypatch.setattr(pickle, name, trap(f"pickle.{name}"))
    monkeypatch.setattr(torch, "load", trap("torch.load"))
    return calls


def test_a_checkpoint_loads_with_every_unpickler_trapped(tmp_path, unpickled):
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ck")
    loaded = zeros_like(genuine_state())
    store.load(loaded, ckpt)
    assert_same_state(loaded, genuine_state())
    assert unpickled == []
    # The traps work: DCP's default format unpickles its metadata.
    dcp.save(genuine_state(), checkpoint_id=tmp_path / "pickled")
    with pytest.raises((AssertionError, dcp.CheckpointException)):
        dcp.load(zeros_like(genuine_state()), checkpoint_id=tmp_path / "pickled")
    assert "pickle.load" in unpickled


def test_a_value_that_is_not_a_tensor_is_refused_before_anything_is_written(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "progress": {"epoch": 3}}
    with pytest.raises(TypeError, match="checkpoint entry progress.epoch is a int: safetensors holds tensors only"):
        store.save(state, tmp_path / "ck", 1, keep=1)
    assert list((tmp_path / "ck").iterdir()) == []
    # What DCP's writer does with it: the file begins with torch.save's zip, and no reader opens it.
    dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(tmp_path / "stock"), save_distributed=True))
    with pytest.raises(SafetensorError):
        safe_open(shard(tmp_path / "stock"), framework="pt")


def test_pickles_left_in_a_folder_are_never_opened(tmp_path):
    """DCP's own metadata and data file names, holding payloads, beside a genuine checkpoint: the load reads
    the safetensors files alone. The stock reader, given the same folder, runs the payload."""
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ck")
    marker = tmp_path / "pwned"
    with open(ckpt / ".metadata", "wb") as f:
        pickle.dump(Touch(marker), f)
    torch.save(Touch(marker), ckpt / "__0_0.distcp")
    loaded = zeros_like(genuine_state())
    store.load(loaded, ckpt)
    assert_same_state(loaded, genuine_state())
    assert not marker.exists()
    try:
        dcp.load(zeros_like(genuine_state()), checkpoint_id=ckpt)
    except (dcp.CheckpointException, AssertionError, AttributeError):
        pass
    assert marker.exists()


def test_a_pickle_named_as_a_data_file_is_refused_unread(tmp_path):
    """torch.save's zip begins "PK\\x03\\x04...": read as a header length, it is far over the limit."""
    ckpt = save_checkpoint(genuine_state(), tmp_path / "ck")
    marker = tmp_path / "pwned"
    torch.save({"w": Touch(marker)}, shard(ckpt))
    with pytest.raises(UnreadableFile, match="refused unread"):
        shards.read(zeros_like(genuine_state()), ckpt, ROOM)
    assert not marker.exists()


def test_a_folder_in_the_earlier_format_is_refused_with_one_line_and_left_as_it_is(tmp_path):
    """Before, a checkpoint.dir of the pickled format (.metadata and .distcp files) was read through an
    allow-listed unpickler. Now resuming from it, a new run beside it and evaluating it each stop with the
    same one line, naming the folder and the way out; the folder is never read, removed or set aside."""
    cfg = small_config(tmp_path, "train.resume=true")
    old = tmp_path / "ck" / "step_00000004"
    dcp.save(genuine_state(), checkpoint_id=old)
    before = sorted(p.name for p in old.iterdir())
    message = (f"{old} is a checkpoint in the earlier format (DCP's pickled .metadata and .distcp files), which "
               "this version does not read, since reading it means unpickling it: export its weights with the "
               "version that wrote it (python -m results export: a .safetensors file this version reads), or "
               "move it out of the way")
    plan = layout.plan_from_env(cfg, {})
    contents = SimpleNamespace(tensors=dict)  # refused before any entry is asked for
    for attempt in (lambda: store.latest(cfg.checkpoint.dir),
                    lambda: CheckpointFolder(cfg, plan).resume(contents),
                    lambda: CheckpointFolder(small_config(tmp_path), plan).resumes(),
                    lambda: checkpoint_paths(cfg, [old])):
        with pytest.raises(UserError) as refused:
            attempt()
        assert str(refused.value) == message
    assert sorted(p.name for p in old.iterdir()) == before
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step_00000004"]
