"""PaperSGD's one-pass CPU update (training/csrc/paper_sgd.cpp) against the paper's rule written out, and against the
foreach update it replaces where the kernel is not there."""

import pytest
import torch

from training import optimizer as optimizer_module
from training.optimizer import PaperSGD

LRS = [0.01, 0.01, 0.001, 0.001]


def _params(dtype):
    torch.manual_seed(0)
    conv = torch.randn(6, 3, 5, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)  # as train.channels_last
    return [torch.nn.Parameter(t) for t in (conv, torch.randn(70_000, dtype=dtype), torch.randn(3, dtype=dtype))]


def _grads(params, step):
    gen = torch.Generator().manual_seed(step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype).contiguous(memory_format=_format(p)) for p in params]


def _format(p):
    return torch.channels_last if p.dim() == 4 and not p.is_contiguous() else torch.contiguous_format


def _train(dtype):
    params = _params(dtype)
    opt = PaperSGD(params, lr=LRS[0], momentum=0.9, weight_decay=5e-4)
    for step, lr in enumerate(LRS):  # across a learning-rate drop
        opt.param_groups[0]["lr"] = lr
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        opt.step()
    return [p.detach() for p in params], [opt.state[p]["momentum_buffer"] for p in params]


def _rule(dtype):
    ws = [p.detach().clone() for p in _params(dtype)]
    vs = [torch.zeros_like(w) for w in ws]
    for step, lr in enumerate(LRS):
        for w, v, g in zip(ws, vs, _grads(ws, step)):
            v.copy_(0.9 * v - 0.0005 * lr * w - lr * g)
            w.add_(v)
    return ws, vs


@pytest.fixture
def calls(monkeypatch):
    """How many times the one-pass kernel ran."""
    kernel = optimizer_module.one_pass_kernel()
    count = []

    class Counting:
        def paper_sgd_(self, *args):
            count.append(1)
            kernel.paper_sgd_(*args)

    monkeypatch.setattr(optimizer_module, "one_pass_kernel", lambda: Counting())
    return count


def test_one_pass_is_the_rule_written_out(calls):
    ws, vs = _train(torch.float64)
    assert len(calls) == len(LRS)
    want_ws, want_vs = _rule(torch.float64)
    for got, want in zip(ws + vs, want_ws + want_vs):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert ws[0].is_contiguous(memory_format=torch.channels_last)


def test_one_pass_equals_foreach_in_float32(calls, monkeypatch):
    ws, vs = _train(torch.float32)
    assert len(calls) == len(LRS)
    monkeypatch.setattr(optimizer_module, "one_pass_kernel", lambda: None)  # as where the kernel could not be built
    foreach_ws, foreach_vs = _train(torch.float32)
    assert len(calls) == len(LRS)
    for got, want in zip(ws + vs, foreach_ws + foreach_vs):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_layouts_the_kernel_cannot_walk_take_foreach(calls):
    w = torch.nn.Parameter(torch.randn(4, 6)[:, ::2])  # strided: not dense
    w.grad = torch.randn(4, 3)
    before = w.detach().clone()
    PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.0).step()
    assert calls == []
    torch.testing.assert_close(w.detach(), before - 0.1 * w.grad)
    assert not optimizer_module._one_pass_applies([w], [w.grad], [torch.zeros_like(w)])
