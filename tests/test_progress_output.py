"""What a run shows while it works: bars labelled with what runs, ending where the work ends. Before, the
training bar was unlabelled and, for a run that reached train.stop_at_train_error early, stopped part-way
(80/120 for the main job); evaluate showed nothing until its result."""

import dataclasses
import re

from checkpoints import store
from distributed import layout
from tests.trainer_runs import train
from training.evaluation import evaluate_checkpoints


def _last_render(stderr: str, label: str) -> str:
    """tqdm's last drawing of the bar labelled `label` (it redraws with carriage returns)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith(f"{label}:")][-1]


def test_a_run_that_stops_early_ends_its_bar_full_where_it_stopped(tmp_path, capsys):
    """Three epochs of one step: the bar counts to 3. A rate too small to change the validation error ends the run
    as converged (no lr drop left, no better validation error) after the second, and its bar there."""
    trainer = train(tmp_path, "log.progress=true", "train.lr=1e-12", "train.lr_drops=0", "train.stop_when_converged=true",
                    "train.epochs=3", "data.synthetic_train_images=8", "data.synthetic_val_images=4")
    assert trainer.step == 2
    assert re.match(r"training: 100%\|.*\| 2/2 ", _last_render(capsys.readouterr().err, "training"))


def test_evaluate_shows_a_bar_over_the_validation_images(trained, capsys):
    trainer, run_dir, _ = trained
    cfg = dataclasses.replace(trainer.cfg, log=dataclasses.replace(trainer.cfg.log, progress=True))
    evaluate_checkpoints(cfg, [store.latest(run_dir / "ck")], layout.start(layout.plan_from_env(cfg), 60))
    assert re.match(r"evaluating: 100%\|.*\| 4/4 ", _last_render(capsys.readouterr().err, "evaluating"))
