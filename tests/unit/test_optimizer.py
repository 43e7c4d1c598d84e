"""The paper's SGD rule by hand, across a learning-rate drop, and the plateau schedule."""

import pytest
import torch

from training.optimizer import PaperSGD
from training.plateau import PlateauSchedule


def _run(optimizer_cls, lrs, grads, **kw):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = optimizer_cls([w], lr=lrs[0], momentum=0.9, weight_decay=5e-4, **kw)
    for lr, g in zip(lrs, grads):
        for group in opt.param_groups:
            group["lr"] = lr
        w.grad = g.clone()
        opt.step()
    return w.detach()


LRS = [0.01, 0.01, 0.001, 0.001]
GRADS = [torch.tensor([0.5, -1.0], dtype=torch.float64) * (k + 1) for k in range(4)]


def test_paper_rule_by_hand_across_a_drop():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    v = torch.zeros(2, dtype=torch.float64)
    for lr, g in zip(LRS, GRADS):
        v = 0.9 * v - 0.0005 * lr * w - lr * g
        w = w + v
    torch.testing.assert_close(_run(PaperSGD, LRS, GRADS), w, rtol=0, atol=1e-15)


def test_paper_rule_equals_torch_sgd_at_constant_lr_and_differs_after_a_drop():
    constant = [0.01] * 4
    torch.testing.assert_close(_run(PaperSGD, constant, GRADS), _run(torch.optim.SGD, constant, GRADS))
    paper, torch_sgd = _run(PaperSGD, LRS, GRADS), _run(torch.optim.SGD, LRS, GRADS)
    # torch's velocity is in gradient units, so the drop also shrinks the momentum already built up.
    assert (paper - torch_sgd).abs().max() > 1e-3


def _schedule(patience=1, drops=3):
    w = torch.nn.Parameter(torch.zeros(1))
    opt = PaperSGD([w], lr=0.01, momentum=0.9, weight_decay=5e-4)
    return opt, PlateauSchedule(opt, 0.01, 0.1, drops, patience)


def test_plateau_drops_by_ten_at_most_three_times():
    opt, sched = _schedule()
    assert not sched.step(0.5)
    assert not sched.step(0.4)
    assert sched.step(0.4)  # no gain: drop
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    for _ in range(10):
        sched.step(0.9)
    assert sched.drops == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_plateau_patience_and_state_round_trip():
    opt, sched = _schedule(patience=2)
    sched.step(0.5)
    assert not sched.step(0.6)
    assert sched.step(0.6)
    opt2, sched2 = _schedule(patience=2)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.state_dict() == sched.state_dict()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.001)


def test_converged_once_every_drop_is_spent_and_patience_runs_out():
    _, schedule = _schedule(patience=2, drops=1)
    for error, converged in [(0.5, False), (0.6, False), (0.6, False), (0.4, False), (0.5, False), (0.5, True)]:
        schedule.step(error)  # the drop comes at the third error; the last two fail to beat 0.4
        assert schedule.converged == converged, (error, schedule.state_dict())
