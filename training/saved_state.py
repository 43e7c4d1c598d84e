"""What one process's checkpoint holds: the weights and velocity of its towers, and the state of each
component handed in (the run's progress, the plateau schedule), each through its own `state_dict` /
`load_state_dict` of tensors, so nothing is packed by hand. When and where it is saved, and which
checkpoint a run resumes from, is checkpoints/folder.py's `CheckpointFolder`.
"""

from pathlib import Path
from typing import Protocol

import torch
from torch.optim import Optimizer

from config.errors import reading
from distributed.layout import Plan
from distributed.reductions import any_process
from model.alexnet import AlexNet


class Stateful(Protocol):
    """What a component saves with a checkpoint: tensors only (torch.distributed.checkpoint's Stateful)."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class NonFiniteLoss(RuntimeError):
    """The loss or a weight became NaN or infinite; the last good checkpoint is kept."""


class SavedState:
    """This process's towers, their velocity and `components` by name, as a checkpoint holds them."""

    def __init__(self, model: AlexNet, optimizer: Optimizer, components: dict[str, Stateful], plan: Plan) -> None:
        self.model, self.optimizer, self.components, self.plan = model, optimizer, components, plan

    def tensors(self) -> dict:
        """The entries this process saves or loads: fresh tensors for the components, the model's own."""
        velocity = {}
        for name, param in self.model.named_parameters():
            held = self.optimizer.state[param]
            if held.get("momentum_buffer") is None:
                held["momentum_buffer"] = torch.zeros_like(param)
            velocity[name] = held["momentum_buffer"]
        return {"model": self.model.state_dict(), "velocity": velocity,
                **{name: c.state_dict() for name, c in self.components.items()}}

    def restore(self, state: dict, path: Path) -> None:
        """Hand the components their entries loaded from checkpoint `path` (the towers were loaded in place)."""
        for name, component in self.components.items():
            with reading(f"checkpoint {path}: {name}"):  # values someone else may have written
                component.load_state_dict(state[name])

    def check_finite(self, step: int, folder: str) -> None:
        """Stop the run, on every process alike, when a weight is no longer finite on some process."""
        # A tensor's min and max are finite exactly when all of it is (both propagate NaN): aminmax reads each
        # weight once, where isfinite() would write a mask as large as the net; and one sync for them all.
        ends = torch.stack([end for p in self.model.parameters() for end in torch.aminmax(p.detach())])
        finite = bool(ends.isfinite().all())
        if any_process(not finite, self.plan.device):
            raise NonFiniteLoss(
                f"weights became non-finite by step {step}; stopped, the last good checkpoint in {folder} is kept"
            )

    @property
    def checkpoint_bytes(self) -> int:
        """What one checkpoint takes on disk: the weights and the velocity of every tower (replicas write one copy)."""
        weights = sum(t.nbytes for t in self.model.state_dict().values())
        return 2 * weights * self.plan.tower_processes
