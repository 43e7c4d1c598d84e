"""TensorBoard, the run's monitoring, as a user starts it: the `tensorboard` binary installed beside this
interpreter serves a finished run's curves over HTTP. (Before tensorboard 2.21 it died at start-up: 2.20
imports pkg_resources, which the setuptools torch pulls in no longer has.)"""

import sys
from pathlib import Path

import pytest

from bench.tensorboard_http import serving
from tests.trainer_runs import train_scalars

SHOWN = {"loss/train", "error/train_top1", "error/train_top5", "lr", "throughput/images_per_s", "time/step_s",
         "time/data_wait_pct", "time/exchange_pct", "error/final_val_top1", "error/final_val10_top1"}
"""Tags the README lists (or training/trainer.py's final validation writes) that a two-step run logs."""


def test_the_tensorboard_binary_serves_a_finished_runs_scalars(trained, tmp_path):
    trainer, run_dir, _ = trained
    binary = Path(sys.executable).parent / "tensorboard"
    assert binary.is_file(), f"no tensorboard beside {sys.executable}: requirements.txt installs it"
    command = [str(binary), "--logdir", str(run_dir), "--host", "127.0.0.1", "--port", "0"]
    with serving(command, tmp_path, tmp_path / "tensorboard.log", runs={"."}) as served:
        tags = served.tags()["."]
        loss = served.series(".", "loss/train")
        lr = served.series(".", "lr")
    assert SHOWN <= tags, f"missing: {SHOWN - tags}"
    assert [step for step, _ in loss] == [1, 2]  # logged at every step (log.every_steps=1) of the two
    assert [value for _, value in loss] == pytest.approx(train_scalars(run_dir, "loss/train"), rel=1e-7)
    assert [value for _, value in lr] == pytest.approx([trainer.cfg.train.lr] * 2)
