"""A learning rate held on the device: a CUDA graph (training/graphed_step.py) replays the update with the rate
it reads from a tensor at each replay, where a Python number would be baked into the capture."""

import torch
from torch.optim import Optimizer


def hold_rate_on_device(optimizer: Optimizer, device: torch.device) -> None:
    """Keep each group's rate as a 0-dim tensor on `device`, of its parameters' dtype; `set_rate` writes into it."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=group["params"][0].dtype, device=device)


def set_rate(group: dict, lr: float) -> None:
    """A group's rate: replaced when a number, written in place when held on the device (no recapture)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr
