"""The run's checkpoints as one component: when it saves, what it saves, and where it resumes from.

A checkpoint holds the weights and velocity of this process's towers and the state of every
component handed in (the run's progress, the plateau schedule), each through its own
`state_dict` / `load_state_dict` of tensors, so nothing is packed by hand here. Checkpoints are
written at each epoch's end and every `checkpoint.every_steps`, never twice for one step, and
only while every weight is finite (an update can overflow on a finite loss). The folders
themselves, written atomically and portable across layouts, are checkpoints/store.py's; owning
them and resuming past a broken one, checkpoints/run_folder.py's.
"""

from pathlib import Path
from typing import Protocol

import torch
from torch.optim import Optimizer

from checkpoints import run_folder, store
from config.errors import reading
from config.schema import Config
from distributed.layout import Plan
from distributed.reductions import any_process
from model.alexnet import AlexNet


class Stateful(Protocol):
    """What a component saves with a checkpoint: tensors only (torch.distributed.checkpoint's Stateful)."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class NonFiniteLoss(RuntimeError):
    """The loss or a weight became NaN or infinite; the last good checkpoint is kept."""


class Checkpointer:
    """Saves and restores this process's share of the run: its towers and `components` by name."""

    def __init__(self, cfg: Config, plan: Plan, model: AlexNet, optimizer: Optimizer, components: dict[str, Stateful]):
        self.cfg, self.plan, self.model, self.optimizer, self.components = cfg, plan, model, optimizer, components
        self.folder = cfg.checkpoint.dir
        self.saved_step: int | None = None  # the step saved or resumed from last: never written twice

    def due(self, step: int, epoch_end: bool) -> bool:
        """Whether `step` is saved: each epoch's end, and every checkpoint.every_steps, once."""
        every = self.cfg.checkpoint.every_steps
        return step != self.saved_step and (epoch_end or (every > 0 and step % every == 0))

    def state(self) -> dict:
        """The entries this process saves or loads: fresh tensors for the components, the model's own."""
        velocity = {}
        for name, param in self.model.named_parameters():
            held = self.optimizer.state[param]
            if held.get("momentum_buffer") is None:
                held["momentum_buffer"] = torch.zeros_like(param)
            velocity[name] = held["momentum_buffer"]
        return {"model": self.model.state_dict(), "velocity": velocity,
                **{name: c.state_dict() for name, c in self.components.items()}}

    def check_space(self) -> None:
        """Stop before the first step when the disk cannot hold the checkpoints the run keeps: each holds
        the weights and the velocity of every tower (replicas write one copy)."""
        weights = sum(t.nbytes for t in self.model.state_dict().values())
        store.check_space(self.folder, 2 * weights * self.plan.tower_processes, self.cfg.checkpoint.keep)

    def save(self, step: int) -> Path | None:
        """Checkpoint `step`, unless it is saved already or a weight is no longer finite on some process."""
        if step == self.saved_step:
            return None
        finite = all(p.isfinite().all() for p in self.model.parameters())
        if any_process(not finite, self.plan.device):
            raise NonFiniteLoss(
                f"weights became non-finite by step {step}; stopped, the last good checkpoint in {self.folder} is kept"
            )
        path = store.save(self.state(), self.folder, step, self.cfg.checkpoint.keep, self.cfg.model)
        self.saved_step = step
        return path

    def resume(self) -> Path | None:
        """Load the newest complete checkpoint that loads on every process into the towers and the
        components (run_folder.load_newest); None, and nothing changed, when there is none."""
        found = run_folder.load_newest(self.state, self.folder, self.cfg.model, self.plan.device)
        if found is None:
            return None
        path, state = found
        for name, component in self.components.items():
            with reading(f"checkpoint {path}: {name}"):  # values someone else may have written
                component.load_state_dict(state[name])
        return path
