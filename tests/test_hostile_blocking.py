"""Issue 23, class 2: a file that is not a regular file is refused at once, naming it, and never waited on.

A named pipe with no writer blocks whoever opens it for reading; /dev/zero never ends. Either, handed over as
a pack's file, an image, weights or a checkpoint's data file, used to hang the run before any process group
existed (so no timeout applied) or read until memory ran out. Each case runs in a process of its own with a
deadline and capped memory (tests/bounded.py), so a regression fails its test instead of hanging the suite.
"""

import os

import pytest
import torch

from checkpoints import store
from config.loading import load_config
from config.model import ModelConfig
from config.schema import ConfigError
from tests import bounded
from tests.conftest import ROOT
from tests.png_by_hand import tiny_png

DEADLINE = 60
"""Seconds a refusal may take, imports included; what used to block never returned."""


def fifo(path):
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["train/index.json", "val/labels.npy", "stats.pt"])
def test_a_pipe_in_a_pack_is_refused_naming_it(pack, name):
    fifo(pack / name)
    outcome = bounded.call("from data.packed import read_pack_meta", f"read_pack_meta({str(pack)!r})", DEADLINE)
    assert "ValueError" in outcome["kinds"] and f"{pack / name}: a named pipe (FIFO)" in outcome["message"], outcome


def test_a_pipe_among_the_images_to_pack_is_skipped_with_its_reason(tmp_path):
    for name in ("a/one.png", "b/two.png"):
        (tmp_path / "src" / name).parent.mkdir(parents=True)
        (tmp_path / "src" / name).write_bytes(tiny_png())
    fifo(tmp_path / "src" / "a" / "pipe.jpg")
    done = bounded.program("packs.prepare", [str(tmp_path / "src"), str(tmp_path / "dst"), "--workers", "1"], DEADLINE)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = (tmp_path / "dst" / "skipped.txt").read_text().splitlines()
    assert line.startswith("train\ta/pipe.jpg\tRefused: ") and line.endswith("a named pipe (FIFO), not a regular file; refused unread")


@pytest.mark.parametrize("image, kind", [("pipe", "a named pipe (FIFO)"), ("/dev/zero", "a character device")])
def test_an_image_to_predict_that_is_a_pipe_or_a_device_is_refused_in_bounded_memory(tmp_path, image, kind):
    path = fifo(tmp_path / "photo.jpg") if image == "pipe" else image
    done = bounded.program("results.__main__", ["predict", "--image", str(path), "train.device=cpu",
                                       f"checkpoint.dir={tmp_path}/none"], DEADLINE)
    assert bounded.one_error_line(done) == f"error: cannot read image {path}: {path}: {kind}, not a regular file; refused unread"


def test_a_config_file_that_is_a_pipe_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'c.yaml'}: a named pipe"):
        load_config([ROOT / "config.yaml", fifo(tmp_path / "c.yaml")])



def _checkpoint(tmp_path):
    return store.save({"model": {"w": torch.arange(4.0)}}, tmp_path / "ck", 1, keep=1, model=ModelConfig())


def test_weights_that_are_a_pipe_are_refused_naming_them(tmp_path):
    path = fifo(tmp_path / "x.safetensors")
    outcome = bounded.call("from checkpoints.weights import check_weights\nfrom config.model import ModelConfig",
                           f"check_weights({str(path)!r}, ModelConfig())", 20)
    assert "UserError" in outcome["kinds"] and "a named pipe" in outcome["message"], outcome


@pytest.mark.parametrize("name", ["model.json", "checkpoint.json"])
def test_a_checkpoint_s_json_file_that_is_a_pipe_is_refused_naming_it(tmp_path, name):
    folder = _checkpoint(tmp_path)
    fifo(folder / name)
    outcome = bounded.call("import torch\nfrom checkpoints import store\nfrom config.model import ModelConfig",
                           f"store.load({{'model': {{'w': torch.zeros(4)}}}}, {str(folder)!r}, ModelConfig())", 20)
    assert "UserError" in outcome["kinds"] and "a named pipe" in outcome["message"], outcome


def test_a_checkpoint_data_file_that_is_a_pipe_is_refused_naming_it(tmp_path):
    folder = _checkpoint(tmp_path)
    data = next(folder.glob("*.safetensors"))
    fifo(data)
    outcome = bounded.call("import torch\nfrom checkpoints import store",
                           f"store.load({{'model': {{'w': torch.zeros(4)}}}}, {str(folder)!r})", DEADLINE)
    assert "UserError" in outcome["kinds"] and f"{data} is not a regular file" in outcome["message"], outcome
