"""On a GPU: the whole one-pass step replayed as one CUDA graph (`train.step_graph`) against the eager step over
20 steps and across a rate drop, fp32 and bf16; with no host synchronisation once captured; the grouped
arithmetic (`train.grouped`) against the towers; and the two with compiled stages against the plain eager step.

Skipped without a GPU; `pytest -m cuda tests` runs them (bench/gpu.sh does, on the device). Each takes
seconds, the compiled one about a minute (compilation).
"""

import pytest
import torch
from torch._dynamo.utils import counters

from config.model import ModelConfig
from distributed import layout
from model.alexnet import AlexNet
from tests.trainer_runs import initial_state, small_config, weights_and_velocity
from training.graphed_step import WARMUP_STEPS
from training.trainer import Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
    pytest.mark.usefixtures("fresh_compiler"),
]

ONE_PASS = ["train.device=cuda", "train.micro_batches=1", "train.channels_last=off", "train.compile=off",
            "train.cudnn_benchmark=off", "train.lr=0.001"]
"""The one-pass layout on the GPU, eager, dropout on (SMALL's 0.5), batches of 8 from 32 images."""


def _trainer(run_dir, *overrides: str) -> Trainer:
    cfg = small_config(run_dir, *ONE_PASS, *overrides)
    return Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))


def _train(trainer: Trainer, steps: int, drop_at: int) -> torch.Tensor:
    """`steps` steps through Trainer.train_step, the rate dropped by a plateau before step `drop_at`; the losses."""
    losses = []
    per_epoch = trainer.order.steps_per_epoch
    for step in range(steps):
        if step == drop_at:  # an error, then no better one (patience 1): one drop
            assert not trainer.schedule.step(1.0) and trainer.schedule.step(1.0)
        images, labels = trainer.data.train.load(trainer.order.batch(step // per_epoch, step % per_epoch))
        loss, _ = trainer.train_step(images.cuda(), labels.cuda())
        trainer.progress.step += 1
        losses.append(loss / len(labels))
    return torch.stack(losses).cpu()


def _assert_follows(got: Trainer, got_losses, ref: Trainer, ref_losses, loss_rtol: float, move_tol: float) -> None:
    """Losses within `loss_rtol`; every weight and velocity within `move_tol` of how far training moved it
    (a stale buffer or a wrong rate moves them by about all of it)."""
    torch.testing.assert_close(got_losses, ref_losses, rtol=loss_rtol, atol=0)
    start = initial_state(ref.cfg)
    a, b = weights_and_velocity(ref), weights_and_velocity(got)
    assert a.keys() == b.keys()
    for key in a:
        moved = (a[key].cpu() - start[key]).abs().max().item()
        torch.testing.assert_close(b[key].cpu(), a[key].cpu(), rtol=0, atol=move_tol * moved,
                                   msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("precision, loss_rtol, move_tol", [("fp32", 1e-4, 1e-3), ("bf16", 5e-3, 2e-2)])
def test_the_graphed_step_trains_as_the_eager_step_across_a_rate_drop(tmp_path, precision, loss_rtol, move_tol):
    # Eager and graphed differ by the update's rounding (the rate as a tensor: a product and a sum, not one
    # fused pass) and by the GPU's unordered sums (LRN's pooling backward), nothing else.
    eager = _trainer(tmp_path / "eager", f"train.precision={precision}")
    graphed = _trainer(tmp_path / "graphed", f"train.precision={precision}", "train.step_graph=on")
    eager_losses = _train(eager, 20, drop_at=10)
    graphed_losses = _train(graphed, 20, drop_at=10)
    assert graphed.graphed.graph is not None and graphed.graphed.warmed == WARMUP_STEPS  # 16 steps replayed
    assert graphed.optimizer.param_groups[0]["lr"].item() == pytest.approx(eager.cfg.train.lr / 10)
    _assert_follows(graphed, graphed_losses, eager, eager_losses, loss_rtol, move_tol)


def test_the_graphed_step_never_waits_for_the_gpu(tmp_path):
    trainer = _trainer(tmp_path, "train.precision=bf16", "train.step_graph=on")
    images = torch.randint(256, (8, 3, 256, 256), dtype=torch.uint8, device="cuda")
    labels = torch.randint(10, (8,), device="cuda")
    for _ in range(WARMUP_STEPS + 1):  # warm-up, then the capture and its first replay
        trainer.train_step(images, labels)
        trainer.progress.step += 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            trainer.train_step(images, labels)
            trainer.progress.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_the_grouped_arithmetic_on_cuda_computes_the_towers_numbers(tmp_path):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    nets = []
    for grouped in (False, True):
        net = AlexNet(ModelConfig(num_classes=10))
        net.init_paper(seed=11)
        net.to(device="cuda", dtype=torch.float64)
        net.seed_dropout(seed=12)
        if grouped:
            net.group_towers()
        x = torch.randn(4, 3, 227, 227, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 40
        net(x.cuda()).sum().backward()
        nets.append(net)
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        assert ((q.grad - p.grad).norm() / p.grad.norm()).item() < 1e-10, name
    towers = _trainer(tmp_path / "towers", "train.precision=fp32")
    grouped = _trainer(tmp_path / "grouped", "train.precision=fp32", "train.grouped=on")
    assert grouped.model.grouped is not None
    _assert_follows(grouped, _train(grouped, 3, drop_at=-1), towers, _train(towers, 3, drop_at=-1), 1e-4, 1e-3)


def test_compiled_grouped_graphed_step_trains_as_the_eager_step(tmp_path):
    # The whole candidate fast path (bf16, NHWC, compiled stages, grouped, one graph) against the plain eager
    # step: compiled arithmetic differs by bf16 rounding, as in test_cuda.py's cudagraphs test.
    fast = ["train.precision=bf16", "train.channels_last=on", "train.compile=on", "train.grouped=on",
            "train.step_graph=on"]
    eager = _trainer(tmp_path / "eager", "train.precision=bf16")
    graphed = _trainer(tmp_path / "fast", *fast)
    eager_losses = _train(eager, 10, drop_at=5)
    graphed_losses = _train(graphed, 10, drop_at=5)
    assert counters["stats"]["unique_graphs"] >= 4 and graphed.graphed.graph is not None
    _assert_follows(graphed, graphed_losses, eager, eager_losses, 3e-2, 0.1)
