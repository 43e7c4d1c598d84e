"""The grouped arithmetic (model/grouped.py, `train.grouped`): both towers of one process as one network per
layer computes the towers' numbers (outputs, gradients, three training steps, dropout on), in half the
convolutions and matrix products, and reads and writes the towers' checkpoints."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from config.model import ModelConfig
from distributed import layout
from model.alexnet import AlexNet
from tests.trainer_runs import initial_state, small_config, train, train_scalars, weights_and_velocity
from training.trainer import Trainer

CFG = ModelConfig(num_classes=10)


def _net(grouped: bool, dtype: torch.dtype, memory_format: torch.memory_format) -> AlexNet:
    net = AlexNet(CFG)
    net.init_paper(seed=11)
    net.seed_dropout(seed=12)  # training mode: each tower's masks from its own generator, in both nets
    net.to(dtype=dtype, memory_format=memory_format)
    if grouped:
        net.group_towers()
    return net


def _step(net: AlexNet, dtype: torch.dtype, memory_format: torch.memory_format):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(4, 3, 227, 227, generator=g) * 40).to(dtype).contiguous(memory_format=memory_format)
    y = torch.randint(10, (4,), generator=g)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        logits = net(x)
    F.cross_entropy(logits, y).backward()
    calls = {e.key: e.count for e in prof.key_averages()}
    kernels = calls.get("aten::convolution", 0), calls.get("aten::addmm", 0) + calls.get("aten::mm", 0)
    return logits.detach(), {n: p.grad for n, p in net.named_parameters()}, kernels


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype, memory_format", [
    (torch.float64, torch.contiguous_format),
    (torch.float64, torch.channels_last),  # LRN per tower by chunks, where the view of NCHW does not exist
    (torch.float32, torch.contiguous_format),
], ids=["fp64", "fp64-channels_last", "fp32"])
def test_the_grouped_net_computes_the_towers_outputs_and_gradients_in_half_the_kernels(dtype, memory_format):
    ref_logits, ref_grads, ref_kernels = _step(_net(False, dtype, memory_format), dtype, memory_format)
    logits, grads, kernels = _step(_net(True, dtype, memory_format), dtype, memory_format)
    assert ref_kernels == (10, 6) and kernels == (5, 3)  # 5 convolutions and 3 FC layers, per tower or grouped
    # fp32: another summation order (one GEMM over both towers' FC7 for FC8's sum, grouped convolutions)
    # moves the last bits; float64 is the tight check of every tensor.
    logit_tol, grad_tol = (1e-12, 1e-12) if dtype == torch.float64 else (1e-5, 1e-4)
    assert _relative(logits, ref_logits) < logit_tol
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert _relative(grad, ref_grads[name]) < grad_tol, name


STEPS = ["train.micro_batches=1", "train.batch_size=4", "train.max_steps=3", "data.synthetic_val_images=4",
         "log.every_steps=1"]
"""Three steps of 4 in the one-pass layout, dropout on, a checkpoint at the end."""


def _resumed(run_dir, *overrides: str) -> Trainer:
    cfg = small_config(run_dir, *STEPS, *overrides)
    trainer = Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))
    assert trainer.resume()
    return trainer


def test_grouped_training_follows_the_towers_and_shares_their_checkpoints(tmp_path):
    towers = train(tmp_path / "towers", *STEPS)
    grouped = train(tmp_path / "grouped", *STEPS, "train.grouped=on")
    assert grouped.model.grouped is not None and towers.model.grouped is None
    losses = torch.tensor(train_scalars(tmp_path / "towers", "loss/train"))
    grouped_losses = torch.tensor(train_scalars(tmp_path / "grouped", "loss/train"))
    assert len(losses) == len(grouped_losses) == 3
    torch.testing.assert_close(grouped_losses, losses, rtol=1e-5, atol=0)
    start = initial_state(towers.cfg)
    a, b = weights_and_velocity(towers), weights_and_velocity(grouped)
    assert a.keys() == b.keys()
    # Within a tenth of how far the three steps moved each tensor: a wrong mask, a missing tower's gradient or
    # stale weights is all of it. Not closer: from the second step on, the fp32 conv gradients are themselves
    # about 3e-3 off their float64 values on either path (measured: the first step at 1e-6, the bias-1 layers'
    # ReLUs all open), so the two summation orders part by up to 2e-2 of the movement after three steps, by
    # how a CPU's kernels sum. The float64 test above is the tight check of the arithmetic.
    for key in a:
        moved = (a[key] - start[key]).norm()
        assert (b[key] - a[key]).norm() < 0.1 * moved, (key, ((b[key] - a[key]).norm() / moved).item())
    # The same checkpoints: each run's loads into the other arithmetic, exactly.
    for run_dir, run, other in (("grouped", b, []), ("towers", a, ["train.grouped=on"])):
        loaded = _resumed(tmp_path / run_dir, *other)
        assert (loaded.model.grouped is not None) == bool(other) and loaded.step == 3
        for key, value in weights_and_velocity(loaded).items():
            assert torch.equal(value, run[key]), (run_dir, key)
