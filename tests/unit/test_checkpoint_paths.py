"""What `--checkpoint` takes, in every command (checkpoints/trained.py `checkpoint_paths`): a checkpoint folder, a
checkpoint.dir standing for its newest complete checkpoint, or a weights file. Before, a checkpoint.dir (the folder
a user named in the run's config) was refused: only a step_N folder inside it was taken."""

import pytest
import torch

from checkpoints import store
from checkpoints.trained import checkpoint_paths
from config.errors import UserError
from config.loading import load_config
from tests.conftest import ROOT


@pytest.fixture
def cfg(tmp_path):
    return load_config([ROOT / "config.yaml"], [f"checkpoint.dir={tmp_path}/default"])


def _checkpoints(folder, *steps):
    """Complete checkpoints (their model.json the config's), of a small state: the paths read only those files."""
    model = load_config([ROOT / "config.yaml"]).model
    return [store.save({"model": {"w": torch.zeros(3)}}, folder, step, keep=len(steps), model=model) for step in steps]


def test_a_checkpoint_dir_stands_for_its_newest_complete_checkpoint(cfg, tmp_path):
    older, newest = _checkpoints(tmp_path / "ck", 4, 8)
    (tmp_path / "ck" / "step_00000012").mkdir()  # no checkpoint.json: not complete, never read
    assert checkpoint_paths(cfg, [tmp_path / "ck"]) == [newest]
    assert checkpoint_paths(cfg, [older, str(tmp_path / "ck")]) == [older, newest]  # an ensemble, mixed


def test_a_folder_without_a_complete_checkpoint_is_refused_naming_all_three(cfg, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty is neither a complete checkpoint folder \(one with checkpoint.json\), "
                                        r"nor a checkpoint.dir holding one, nor a .safetensors weights file"):
        checkpoint_paths(cfg, [tmp_path / "empty"])
