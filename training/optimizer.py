"""The optimizer: the paper's SGD rule (PaperSGD), with its one-pass C++ kernel on CPU (csrc/paper_sgd.cpp),
or torch's SGD (build_optimizer)."""

from pathlib import Path

import torch
from torch.optim import Optimizer

from kernels import CppKernel, built

ONE_PASS = CppKernel("alexnet_paper_sgd", sources=(Path(__file__).with_name("csrc") / "paper_sgd.cpp",),
                     instead="torch's foreach ops (four passes)")


def one_pass_kernel():
    """The compiled one-pass update (`paper_sgd_`), or None where it cannot be built."""
    return built(ONE_PASS)


class PaperSGD(Optimizer):
    """Krizhevsky et al.'s update, with the learning rate inside the velocity:

        v <- momentum * v - weight_decay * lr * w - lr * grad
        w <- w + v

    torch.optim.SGD keeps lr outside (v <- m v + g + wd w; w <- w - lr v). The two
    agree while lr is constant; after a drop, torch's old velocity is suddenly
    scaled by the new lr, the paper's keeps the step it had already taken.
    The velocity lives in state["momentum_buffer"], as torch.optim.SGD's does.

    On CPU the update is one pass over each parameter (training/csrc/paper_sgd.cpp: w, g and v read once, w and
    v written once, fused multiply-adds in the rule's order); elsewhere, or where the kernel could not be
    built, four foreach passes. Both are the rule above (tested against it written out).
    """

    def __init__(self, params, lr: float, momentum: float, weight_decay: float) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the class docstring is the rule
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocities = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                velocities.append(state["momentum_buffer"])
            lr = group["lr"]
            if not isinstance(lr, torch.Tensor) and _one_pass_applies(params, grads, velocities):  # a held rate: foreach
                one_pass_kernel().paper_sgd_(params, grads, velocities, lr, group["momentum"], group["weight_decay"])
                continue
            torch._foreach_mul_(velocities, group["momentum"])
            _add_scaled_(velocities, params, -group["weight_decay"] * lr)
            _add_scaled_(velocities, grads, -lr)
            torch._foreach_add_(params, velocities)
        return None


def _one_pass_applies(params, grads, velocities) -> bool:
    """Whether the one-pass CPU kernel can update these: built, float32/float64 CPU tensors, each parameter's
    gradient and velocity laid out as it is (so the three can be walked as flat arrays together)."""
    dense = (torch.contiguous_format, torch.channels_last)
    return all(
        p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) and g.dtype == v.dtype == p.dtype
        and g.stride() == v.stride() == p.stride() and any(p.is_contiguous(memory_format=f) for f in dense)
        for p, g, v in zip(params, grads, velocities)
    ) and one_pass_kernel() is not None


def build_optimizer(params, kind: str, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    """`paper` (the default) or `torch_sgd`."""
    if kind == "paper":
        return PaperSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _add_scaled_(targets: list[torch.Tensor], sources: list[torch.Tensor], scale) -> None:
    """targets += scale * sources, for a number (one fused pass) or a rate-derived 0-dim tensor (a product,
    then a sum: foreach ops take a tensor factor but no tensor alpha)."""
    if isinstance(scale, torch.Tensor):
        torch._foreach_add_(targets, torch._foreach_mul(sources, scale))
    else:
        torch._foreach_add_(targets, sources, alpha=scale)
