"""Issue 23, class 1: a run writes, renames and deletes only real files and folders it owns inside its own
folders, never through a link. A folder someone hands over (a checkpoint.dir or log.dir to resume into, a
half-made pack, a cache) may hold links to files and folders elsewhere under the names the run uses; each
test plants one and checks that what it leads to is unchanged.
"""

import json
import os
import socket

import pytest
import torch

from checkpoints import run_folder, store
from config.data import DataConfig
from config.errors import UserError
from config.model import ModelConfig
from data.imageset import SIDE
from packs import synthetic_cache
from packs.packing import Split, pack
from tests.unit.handed_folders import claimed, snapshot
from training.datasets import open_datasets


@pytest.mark.parametrize("key", ["checkpoint.dir", "log.dir"])
def test_a_lock_file_that_is_a_link_is_refused_never_truncated_through(tmp_path, outside, key):
    before = snapshot(outside)
    run = tmp_path / "handed"
    run.mkdir()
    (run / run_folder.LOCK_FILE).symlink_to(outside / "precious.txt")
    others = {"checkpoint_dir": tmp_path / "ck", "log_dir": tmp_path / "logs"}
    others[key.replace(".", "_")] = run
    with pytest.raises(UserError, match=rf"{key}={run}: {run / '.lock'}: a symbolic link"):
        claimed(tmp_path, **others)
    assert snapshot(outside) == before


@pytest.mark.parametrize("key", ["checkpoint.dir", "log.dir"])
def test_a_probe_name_taken_by_a_link_is_never_written_through(tmp_path, outside, key):
    """The probe's name was predictable (host and pid): a link planted under it was opened and overwritten."""
    before = snapshot(outside)
    run = tmp_path / "handed"
    run.mkdir()
    planted = run / f".probe-{socket.gethostname()}-{os.getpid()}"
    planted.symlink_to(outside / "precious.txt")
    others = {"checkpoint_dir": tmp_path / "ck", "log_dir": tmp_path / "logs"}
    others[key.replace(".", "_")] = run
    claimed(tmp_path, **others)
    assert snapshot(outside) == before
    assert planted.is_symlink()  # left as it was: not the run's to remove


def uniform(source: str) -> torch.Tensor:
    return torch.full((3, SIDE, SIDE), int(source), dtype=torch.uint8)


def split_of(values: list[str]) -> Split:
    return Split("train", [f"file{v}" for v in values], values, [0] * len(values), uniform)


def test_a_pack_whose_split_folder_is_a_link_elsewhere_is_refused(tmp_path, outside):
    before = snapshot(outside)
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "train").symlink_to(outside)
    with pytest.raises(ValueError, match="train: a symbolic link where this run keeps a folder of its own"):
        pack(tmp_path / "pack", [split_of(["1", "2"])], ["a"], ["a"], shard_size=2, workers=1)
    assert snapshot(outside) == before


@pytest.mark.timeout(120)
def test_a_pack_resumed_with_links_under_its_temporary_names_writes_only_into_itself(tmp_path, outside):
    """A half-made pack handed over with links where the packer writes its shard and labels before renaming."""
    before = snapshot(outside)
    split = tmp_path / "pack" / "train"
    split.mkdir(parents=True)
    for name in ("images_00000.u8.tmp", "images_00000.u8.partial", "labels.npy.tmp", "labels.npy.partial",
                 "index.json.tmp", "index.json.partial"):
        (split / name).symlink_to(outside / "precious.txt")
    pack(tmp_path / "pack", [split_of(["1", "2"])], ["a"], ["a"], shard_size=2, workers=1)
    assert snapshot(outside) == before
    assert (split / "images_00000.u8").stat().st_size == 2 * 3 * SIDE * SIDE
    assert json.loads((split / "index.json").read_text())["counts"] == [2]


def test_a_cache_leftover_that_is_a_link_is_unlinked_and_its_target_kept(tmp_path, outside):
    before = snapshot(outside)
    cfg = DataConfig(synthetic_classes=2, synthetic_train_images=2, synthetic_val_images=1, synthetic_cache=str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    leftover = tmp_path / "cache" / (synthetic_cache.cache_name(cfg, 1) + synthetic_cache.BUILDING)
    leftover.symlink_to(outside)
    assert len(open_datasets(cfg, 0).train) == 2
    assert not leftover.exists() and not leftover.is_symlink()
    assert snapshot(outside) == before


STATE = {"model": {"w": torch.arange(4.0)}}

def test_a_partial_checkpoint_name_that_is_a_link_is_never_written_through(tmp_path, outside):
    before = snapshot(outside)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "step_00000002.partial").symlink_to(outside)
    store.save(dict(STATE), tmp_path / "ck", 2, keep=1, model=ModelConfig())
    assert snapshot(outside) == before
    assert (tmp_path / "ck" / "step_00000002").is_dir() and not (tmp_path / "ck" / "step_00000002").is_symlink()


def test_pruning_a_checkpoint_linked_from_another_run_leaves_that_run_whole(tmp_path, outside):
    before = snapshot(outside)
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "step_00000001").symlink_to(outside / "step_00000001")
    store.save(dict(STATE), tmp_path / "ck", 2, keep=1, model=ModelConfig())
    assert snapshot(outside) == before
