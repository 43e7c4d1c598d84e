"""The paper's SGD rule and the plateau schedule."""

import torch
from torch.optim import Optimizer

from model import cpu_kernels


class PaperSGD(Optimizer):
    """Krizhevsky et al.'s update, with the learning rate inside the velocity:

        v <- momentum * v - weight_decay * lr * w - lr * grad
        w <- w + v

    torch.optim.SGD keeps lr outside (v <- m v + g + wd w; w <- w - lr v). The two
    agree while lr is constant; after a drop, torch's old velocity is suddenly
    scaled by the new lr, the paper's keeps the step it had already taken.
    The velocity lives in state["momentum_buffer"], as torch.optim.SGD's does.

    On CPU the update is one pass over each parameter (model/csrc/paper_sgd.cpp: w, g and v read once, w and
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
            if _one_pass_applies(params, grads, velocities):
                cpu_kernels.extension().paper_sgd_(params, grads, velocities, lr, group["momentum"],
                                                   group["weight_decay"])
                continue
            torch._foreach_mul_(velocities, group["momentum"])
            torch._foreach_add_(velocities, params, alpha=-group["weight_decay"] * lr)
            torch._foreach_add_(velocities, grads, alpha=-lr)
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
    ) and cpu_kernels.extension() is not None


def build_optimizer(params, kind: str, lr: float, momentum: float, weight_decay: float) -> Optimizer:
    """`paper` (the default) or `torch_sgd`."""
    if kind == "paper":
        return PaperSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class PlateauSchedule:
    """lr = base_lr * factor**k after the k-th plateau: a drop once validation error has
    not improved for `patience` evaluations in a row, at most `drops` drops (the paper: 3)."""

    def __init__(self, optimizer: Optimizer, base_lr: float, factor: float, drops: int, patience: int) -> None:
        self.optimizer, self.base_lr, self.factor = optimizer, base_lr, factor
        self.max_drops, self.patience = drops, patience
        self.best = float("inf")
        self.epochs_without_gain = 0
        self.drops = 0

    @property
    def lr(self) -> float:
        return self.base_lr * self.factor**self.drops

    def step(self, val_error: float) -> bool:
        """Record one validation error; returns True when it dropped the learning rate."""
        if val_error < self.best:
            self.best, self.epochs_without_gain = val_error, 0
            return False
        self.epochs_without_gain += 1
        if self.epochs_without_gain < self.patience or self.drops >= self.max_drops:
            return False
        self.drops += 1
        self.epochs_without_gain = 0
        self.apply()
        return True

    @property
    def converged(self) -> bool:
        """Every drop spent, and no better validation error for `patience` evaluations since."""
        return self.drops >= self.max_drops and self.epochs_without_gain >= self.patience

    def apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "epochs_without_gain": self.epochs_without_gain, "drops": self.drops}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best = float(state["best"])
        self.epochs_without_gain = int(state["epochs_without_gain"])
        self.drops = int(state["drops"])
        self.apply()
