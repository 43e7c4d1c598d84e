"""Training end to end: the loss falls, resume is exact, layouts agree, checkpoints move between them."""

import dataclasses
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bench.workers import run_workers
from checkpoints import store
from distributed import layout
from model.alexnet import AlexNet
from model.seeds import derive_seed
from tests.conftest import ROOT
from tests.trainer_runs import small_config, small_words, start, train, train_scalars, weights_and_velocity
from training import evaluation
from training.optimizer import PaperSGD
from training.saved_state import NonFiniteLoss
from training.trainer import Trainer


def test_resumed_run_is_bitwise_equal_to_uninterrupted(tmp_path, capsys):
    whole = train(tmp_path / "whole", "checkpoint.every_steps=3")
    train(tmp_path / "split", "train.max_steps=3", "checkpoint.every_steps=2")
    # Two checkpoints to choose from: the run goes on from the newest (from step 2 it would retrain step 3 to
    # the same numbers, so only where it says it resumed can tell).
    assert [p.name for p in store.complete(tmp_path / "split" / "ck")] == ["step_00000002", "step_00000003"]
    capsys.readouterr()
    resumed = train(tmp_path / "split", "train.resume=true")
    assert f"resumed from {tmp_path / 'split' / 'ck' / 'step_00000003'} at step 3\n" in capsys.readouterr().out
    assert resumed.step == whole.step == 8
    a, b = weights_and_velocity(whole), weights_and_velocity(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.schedule.state_dict() == whole.schedule.state_dict()


def _two_process_run(rank: int, world: int, run_dir: str, one_process_ck: str, out: str) -> None:
    trainer = train(run_dir)
    # Also load the one-process checkpoint into this layout.
    cfg = small_config(run_dir)
    state = trainer.saved.tensors()
    loaded = {k: {n: t.clone() for n, t in v.items()} for k, v in state.items() if k in ("model", "velocity")}
    store.load(loaded, one_process_ck)
    torch.save({"trained": weights_and_velocity(trainer), "loaded": loaded}, f"{out}/rank{rank}.pt")
    assert cfg.log.dir == run_dir


def test_two_processes_follow_the_one_process_run(tmp_path):
    # Each worker computes with one thread; a reference with two would sum convolutions in
    # another order, and training grows that rounding to ~1% of the weights' movement.
    torch.set_num_threads(1)
    one = train(tmp_path / "one")
    one_state = weights_and_velocity(one)
    one_ck = store.latest(tmp_path / "one" / "ck")
    run_workers(2, _two_process_run, str(tmp_path / "two"), str(one_ck), str(tmp_path), init=False)
    # Same loss at every step.
    two_losses = torch.tensor(train_scalars(tmp_path / "two", "loss/train"))
    one_losses = torch.tensor(train_scalars(tmp_path / "one", "loss/train"))
    assert len(two_losses) == len(one_losses) == 8
    torch.testing.assert_close(two_losses, one_losses, rtol=1e-6, atol=1e-7)
    # Two-process checkpoint -> one-process layout: exactly the two processes' numbers.
    back = small_config(tmp_path / "back")
    trainer = Trainer(back, layout.start(layout.plan_from_env(back, {}), 60))
    state = trainer.saved.tensors()
    start = weights_and_velocity(trainer)  # the paper's init, zero velocity: where both runs began
    store.load(state, store.latest(tmp_path / "two" / "ck"))
    back_state = weights_and_velocity(trainer)
    two_state = {}
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert all(f"towers.{rank}." in key for key in got["trained"])
        two_state.update(got["trained"])
        # One-process checkpoint -> two-process layout: exactly the one-process numbers.
        for part in ("model", "velocity"):
            for name, value in got["loaded"][part].items():
                assert torch.equal(value, one_state[f"{part}/{name}"]), name
    assert two_state.keys() == one_state.keys() == back_state.keys()
    for key in one_state:
        assert torch.equal(back_state[key], two_state[key]), key
        # The layouts agree to 1e-4 of how far training moved each tensor (a wrong
        # gradient would differ by about the whole move).
        moved = (one_state[key] - start[key]).abs().max()
        torch.testing.assert_close(two_state[key], one_state[key], rtol=0, atol=1e-4 * moved.item(),
                                   msg=lambda m, key=key: f"{key}: {m}")
    assert int(state["progress"]["step"]) == 8


def test_torchrun_two_processes_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "distributed.main", "--config", "experiments/quickstart.yaml",
           # 16 images seen 6 times, no dropout, a small lr: the loss must fall at every log step.
           "data.synthetic_train_images=16", "data.synthetic_val_images=16", "train.batch_size=8",
           "train.epochs=6", "model.dropout=0", "train.lr=0.001",
           "train.device=cpu", "log.every_steps=2", "log.progress=false",
           f"log.dir={tmp_path}", f"checkpoint.dir={tmp_path}/ck"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final validation (centre crop): top-1 error" in proc.stdout
    for tag in ("loss/train", "error/train_top1", "error/train_top5", "error/val_top1", "error/val_top5", "lr",
                "throughput/images_per_s", "time/step_s", "time/data_wait_s", "time/exchange_forward_s",
                "time/exchange_backward_s"):
        assert train_scalars(tmp_path, tag), tag
    losses = train_scalars(tmp_path, "loss/train")
    assert len(losses) == 6
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert store.latest(tmp_path / "ck").name == "step_00000012"
    shutil.rmtree(tmp_path)


def test_export_writes_a_grouped_state_dict_of_the_newest_checkpoint(tmp_path):
    import json

    from safetensors import safe_open

    from model.export import grouped_state_dict
    from results.__main__ import main

    trainer = train(tmp_path, "train.max_steps=1")
    target = tmp_path / "alexnet_grouped.safetensors"
    # The training's own words: a checkpoint folder's class names and mean come from the data its config names.
    assert main(["export", "--out", str(target), *small_words(tmp_path, "train.max_steps=1")]) == 0
    with safe_open(target, framework="pt") as f:  # a plain safetensors file, readable by any tool
        exported = {key: f.get_tensor(key) for key in f.keys()}
        recorded = json.loads(f.metadata()["model"])
        classes = json.loads(f.metadata()["classes"])
    expected = {**grouped_state_dict(trainer.model.state_dict()), "mean": trainer.data.stats.mean_image}
    assert exported.keys() == expected.keys()
    for key in expected:
        assert torch.equal(exported[key], expected[key]), key
    assert exported["conv2.weight"].shape == (256, 48, 5, 5)
    assert recorded["num_classes"] == 10 and trainer.cfg.model.differences(recorded) == []  # the net's architecture
    assert classes == list(trainer.data.classes)  # the file alone names the outputs and preprocesses an image


def test_epoch_training_error_is_logged_and_can_end_the_run(tmp_path):
    # Figure 1's measure: the training error over each epoch, and a run that ends at the first
    # epoch at or below a target. 32 images in steps of 8 (2 micro-batches): 4 steps an epoch.
    # Each step's error is counted again from a plain forward of the step's inputs against its
    # labels (dropout off, so the step's logits depend on the weights and inputs alone).
    cfg = small_config(tmp_path, "train.stop_at_train_error=0.99", "train.epochs=6", "model.dropout=0")
    trainer = Trainer(cfg, start(cfg))
    step, wrong = trainer.pipeline, []

    def counted(inputs, labels, autocast):
        with torch.no_grad(), autocast():
            wrong.append((trainer.model(inputs).argmax(1) != labels).sum().item() / len(labels))
        return step(inputs, labels, autocast)

    counted.exposed = step.exposed
    trainer.pipeline = counted
    trainer.run()
    assert train_scalars(tmp_path, "error/train_top1") == pytest.approx(wrong)
    epochs = [sum(wrong[i : i + 4]) / 4 for i in range(0, len(wrong), 4)]
    assert train_scalars(tmp_path, "error/train_epoch_top1") == pytest.approx(epochs)
    first = next(i for i, error in enumerate(epochs) if error <= 0.99)
    assert trainer.step == 4 * (first + 1) == len(wrong) < 24, "the run should end after that epoch"


def test_a_converged_run_stops_at_the_first_epoch_without_gain_once_drops_are_spent(tmp_path):
    # No drops to spend, patience 1: the run ends at the first epoch whose validation error is not
    # below the best before it, and not earlier.
    trainer = train(tmp_path, "train.stop_when_converged=true", "train.lr_drops=0", "train.epochs=5")
    errors = train_scalars(tmp_path, "error/val_top1")
    assert trainer.step == 4 * len(errors)
    stalled = [i for i in range(1, len(errors)) if errors[i] >= min(errors[:i])]
    assert (stalled[:1] == [len(errors) - 1]) if stalled else len(errors) == 5, errors


def test_a_training_step_is_the_papers_step_with_dropout_on(tmp_path):
    """One step of the trainer against the same step written out by hand: the paper's init, the
    step's crops and dropout masks from their seeds, plain autograd, the paper's SGD rule. Catches
    what every layout would share, such as dropout left off in training."""
    cfg = small_config(tmp_path, "train.micro_batches=1")
    trainer = Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))
    images, labels = trainer.data.train.load(torch.arange(8))
    t = cfg.train

    def by_hand(dropout: bool) -> dict[str, torch.Tensor]:
        net = AlexNet(cfg.model)
        net.init_paper(t.seed)
        net.train(dropout)
        net.seed_dropout(derive_seed(t.seed, "dropout", 0, 0))
        crops = torch.Generator().manual_seed(derive_seed(t.seed, "augment", 0))
        loss = F.cross_entropy(net(trainer.augment.train(images, crops)), labels)
        loss.backward()
        PaperSGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay).step()
        return {k: v.detach() for k, v in net.state_dict().items()}

    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step(images, labels)
    got = trainer.model.state_dict()
    expected, without_dropout = by_hand(True), by_hand(False)
    for key in expected:
        update = expected[key] - start[key]
        scale = update.abs().max().item()
        torch.testing.assert_close(got[key] - start[key], update, rtol=0, atol=1e-4 * scale + 1e-9, msg=key)
    # The comparison can tell: without dropout the same step moves FC7 differently by far more.
    moved = (without_dropout["towers.0.fc7.weight"] - expected["towers.0.fc7.weight"]).abs().max().item()
    assert moved > 1e-2 * (expected["towers.0.fc7.weight"] - start["towers.0.fc7.weight"]).abs().max().item()


def test_the_plateau_lowers_the_rate_the_optimiser_uses(tmp_path):
    # A rate too small to change any prediction: validation error cannot improve after epoch 1,
    # so with patience 1 the rate drops at epochs 2 and 3, in the schedule and in the optimiser.
    trainer = train(tmp_path, "train.lr=1e-9", "train.epochs=3", "train.plateau_patience=1", "data.synthetic_train_images=8")
    errors = train_scalars(tmp_path, "error/val_top1")
    assert len(errors) == 3 and errors[0] == errors[1] == errors[2]
    assert trainer.schedule.drops == 2
    assert all(group["lr"] == pytest.approx(1e-11) for group in trainer.optimizer.param_groups)
    logged = train_scalars(tmp_path, "lr")  # per log step: epoch 3 trained at the rate of the first drop
    assert logged[0] == pytest.approx(1e-9) and logged[-1] == pytest.approx(1e-10)


def test_a_non_finite_validation_loss_stops_before_the_epoch_s_checkpoint(tmp_path, monkeypatch):
    """Weights and training loss finite, the validation loss not (an evaluation that overflows): the run stops
    at the epoch's end, and the checkpoint before it stays the newest."""
    measured = evaluation.evaluate

    def overflowing(*args, **kwargs):
        return {way: dataclasses.replace(rates, loss=math.inf) for way, rates in measured(*args, **kwargs).items()}

    monkeypatch.setattr(evaluation, "evaluate", overflowing)
    with pytest.raises(NonFiniteLoss, match=r"validation loss is inf after step 2; stopped, the last good"):
        train(tmp_path, "train.micro_batches=1", "checkpoint.every_steps=1", "train.batch_size=2", "data.synthetic_train_images=4",
              "data.synthetic_val_images=2")
    assert store.latest(tmp_path / "ck").name == "step_00000001"
