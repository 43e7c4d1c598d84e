"""The whole-step CUDA graph's parts that a CPU can check: the static-buffer step run without capture equals
the trainer's eager step bitwise (across a rate drop), the rate held on the device follows the paper's rule
and the plateau, and the switch is refused where it cannot work (tests/test_cuda_graphs.py captures it)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config.schema import ConfigError, TrainConfig
from distributed import layout
from distributed.pipeline import StepKind
from tests.conftest import ROOT
from tests.trainer_runs import small_config, weights_and_velocity
from training.build import choose_step
from training.device_rate import hold_rate_on_device
from training.graphed_step import StaticStep
from training.optimizer import PaperSGD
from training.plateau import PlateauSchedule
from training.speed import SpeedSwitches
from training.trainer import Trainer

ONE_PASS = ["train.micro_batches=1", "train.batch_size=4"]
"""The layout the graph needs (one process, both towers, one micro-batch); dropout on (SMALL's 0.5)."""


def _trainer(run_dir: Path, *overrides: str) -> Trainer:
    cfg = small_config(run_dir, *ONE_PASS, *overrides)
    return Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))


def _static(trainer: Trainer) -> Trainer:
    """The trainer stepping through the static buffers, uncaptured (what a GPU would capture)."""
    trainer.graphed = StaticStep(trainer.model, trainer.pipeline, trainer.optimizer, trainer.augment, trainer.speed,
                                 trainer.device, capture=False)
    return trainer


def _drop_rate(trainer: Trainer) -> None:
    """A plateau, as the schedule sees one: an error, then no better one (patience 1): the rate drops once."""
    assert not trainer.schedule.step(1.0) and trainer.schedule.step(1.0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_static_buffer_step_equals_the_eager_step_bitwise_across_a_rate_drop(tmp_path, precision):
    eager = _trainer(tmp_path / "eager", f"train.precision={precision}")
    static = _static(_trainer(tmp_path / "static", f"train.precision={precision}"))
    # The rate held as a tensor in both: the update's arithmetic is then the same, so any difference is the buffers'.
    hold_rate_on_device(eager.optimizer, eager.device)
    for step in range(3):
        if step == 1:
            _drop_rate(eager)
            _drop_rate(static)
            assert static.optimizer.param_groups[0]["lr"].item() == pytest.approx(static.cfg.train.lr / 10)
        images, labels = eager.data.train.load(eager.order.batch(0, step))
        loss, wrong = eager.train_step(images, labels)
        static_loss, static_wrong = static.train_step(images, labels)
        assert torch.equal(static_loss, loss) and torch.equal(static_wrong, wrong), step
        eager.progress.step += 1
        static.progress.step += 1
    a, b = weights_and_velocity(eager), weights_and_velocity(static)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_static_step_refuses_a_batch_of_another_shape(tmp_path):
    trainer = _static(_trainer(tmp_path))
    images, labels = trainer.data.train.load(trainer.order.batch(0, 0))
    trainer.train_step(images, labels)
    with pytest.raises(ValueError, match="batches of"):
        trainer.train_step(images[:2], labels[:2])


LRS = [0.01, 0.01, 0.001, 0.001]
GRADS = [torch.tensor([0.5, -1.0], dtype=torch.float64) * (k + 1) for k in range(4)]


def test_a_held_rate_follows_the_papers_rule_and_the_plateau():
    """The update with its rate in a tensor, lowered by the plateau schedule in place, against the rule written
    out: v <- m v - wd lr w - lr g, w <- w + v."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = PaperSGD([w], lr=LRS[0], momentum=0.9, weight_decay=5e-4)
    hold_rate_on_device(opt, w.device)
    rate = opt.param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor) and rate.dtype == torch.float64
    schedule = PlateauSchedule(opt, LRS[0], 0.1, 3, 1)
    for k, g in enumerate(GRADS):
        if k == 2:
            schedule.step(0.5)
            assert schedule.step(0.5)
        w.grad = g.clone()
        opt.step()
    assert opt.param_groups[0]["lr"] is rate  # written into, not replaced: a captured graph keeps reading it
    by_hand_w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    for lr, g in zip(LRS, GRADS):
        v = 0.9 * v - 0.0005 * lr * by_hand_w - lr * g
        by_hand_w = by_hand_w + v
    torch.testing.assert_close(w.detach(), by_hand_w, rtol=0, atol=1e-15)


def test_a_held_rate_updates_as_a_number_does_to_rounding():
    g = torch.Generator().manual_seed(3)
    start = [torch.randn(64, 32, generator=g) for _ in range(3)]
    grads = [torch.randn(64, 32, generator=g) for _ in range(3)]

    def after_two_steps(held: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = PaperSGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        if held:
            hold_rate_on_device(opt, torch.device("cpu"))
        for _ in range(2):
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            opt.step()
        return [(p.detach(), opt.state[p]["momentum_buffer"]) for p in params]

    # The held rate takes a product and a sum where a number takes one fused pass: an ulp apart, no more.
    for (w_held, v_held), (w_number, v_number) in zip(after_two_steps(True), after_two_steps(False)):
        torch.testing.assert_close(v_held, v_number, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(w_held, w_number, rtol=3e-7, atol=1e-8)


def test_step_graph_and_grouped_are_refused_where_they_cannot_work():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for device in (cpu, gpu):
        auto = SpeedSwitches.resolve(TrainConfig(), device, one_pass=True)
        assert not auto.step_graph and not auto.grouped  # off until measured on a GPU
    with pytest.raises(ConfigError, match="train.step_graph=on needs a GPU"):
        SpeedSwitches.resolve(TrainConfig(step_graph="on"), cpu, one_pass=True)
    assert SpeedSwitches.resolve(TrainConfig(step_graph="on"), gpu, one_pass=True).step_graph
    assert SpeedSwitches.resolve(TrainConfig(grouped="on"), cpu, one_pass=True).grouped  # grouped runs on a CPU too
    for key in ("step_graph", "grouped"):
        with pytest.raises(ConfigError, match=f"train.{key}=on needs the one-pass step"):
            SpeedSwitches.resolve(TrainConfig(**{key: "on"}), gpu, one_pass=False)
        assert not getattr(SpeedSwitches.resolve(TrainConfig(**{key: "auto"}), gpu, one_pass=False), key)
    with pytest.raises(ConfigError, match="not cudagraphs"):
        SpeedSwitches.resolve(TrainConfig(step_graph="on", compile="cudagraphs"), gpu, one_pass=True)
    with pytest.raises(ConfigError, match="needs train.optimizer=paper"):
        SpeedSwitches.resolve(TrainConfig(step_graph="on", optimizer="torch_sgd"), gpu, one_pass=True)
    with pytest.raises(ValueError, match="step_graph='sometimes'"):
        TrainConfig(step_graph="sometimes")


@pytest.mark.parametrize("world, overrides, one_pass", [
    ("1", ["train.micro_batches=1"], True),
    ("1", ["train.micro_batches=2"], False),  # pipelined
    ("2", ["train.micro_batches=1"], False),  # a tower per process
    ("2", ["train.micro_batches=1", "parallel.tower_parallel=false"], False),  # two replicas
])
def test_the_one_pass_step_is_one_process_both_towers_one_micro_batch(world, overrides, one_pass):
    cfg = small_config(Path("/unused"), *overrides)
    kind, _ = choose_step(layout.plan_from_env(cfg, {"WORLD_SIZE": world}), cfg.train)
    assert (kind is StepKind.WHOLE) == one_pass


def test_the_entry_point_refuses_step_graph_on_a_cpu_before_starting(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distributed.main", "train.device=cpu", "train.step_graph=on",
                           "train.micro_batches=1", f"log.dir={tmp_path}", f"checkpoint.dir={tmp_path}/ck"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.step_graph=on needs a GPU" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ck").exists()
