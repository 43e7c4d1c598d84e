"""The paper's learning-rate schedule: a drop by a factor each time the validation error stops improving
(the paper: by 10, three times), its state in tensors for the checkpoint."""

import math

import torch
from torch.optim import Optimizer

from training.device_rate import set_rate


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
            set_rate(group, self.lr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors, as a checkpoint holds them; the best error in float64, so a resumed run compares
        the next validation error with exactly the value an uninterrupted run would."""
        return {"best": torch.tensor(self.best, dtype=torch.float64),
                "epochs_without_gain": torch.tensor(self.epochs_without_gain), "drops": torch.tensor(self.drops)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """A checkpoint's schedule; ValueError naming the value if it is not one a run could have saved."""
        best, waited, drops = float(state["best"]), int(state["epochs_without_gain"]), int(state["drops"])
        if not (best == math.inf or 0 <= best <= 1):
            raise ValueError(f"best={best}: must be an error rate from 0 to 1, or inf (none yet)")
        if waited < 0:
            raise ValueError(f"epochs_without_gain={waited}: must be at least 0")
        if not 0 <= drops <= self.max_drops:
            raise ValueError(f"drops={drops}: must be from 0 to {self.max_drops} (train.lr_drops)")
        self.best, self.epochs_without_gain, self.drops = best, waited, drops
        self.apply()
