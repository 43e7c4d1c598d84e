"""Where the run is, and what it did since the last log: counts kept on the device between host syncs.

`Progress` is saved with every checkpoint (the step, and the training errors of the epoch so
far: the paper's Figure 1 axis); `Window` holds the sums of the steps since the last log step,
read back in one host sync when the logger's cadence says so.
"""

import math
import time

import torch
import torch.distributed as dist

from distributed.reductions import sum_over


class Progress:
    """Steps done, and the epoch's wrong top-1 answers and images on this replica."""

    def __init__(self, device: torch.device, replica_group: dist.ProcessGroup | None = None, replica: int = 0) -> None:
        self.device, self.replica_group, self.replica = device, replica_group, replica
        self.step = 0
        self.epoch_tally = torch.zeros(2, device=device)

    def count(self, wrong_top1: torch.Tensor, images: int) -> None:
        """One step done, with its wrong top-1 answers (a device tensor: no sync)."""
        self.epoch_tally[0] += wrong_top1
        self.epoch_tally[1] += images
        self.step += 1

    def end_epoch(self) -> float:
        """The epoch's training top-1 error over every replica; the tally starts again."""
        wrong, images = sum_over(self.epoch_tally.clone(), self.replica_group).tolist()
        self.epoch_tally.zero_()
        return wrong / images

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The step, and the epoch's tally summed over replicas: every process saves the same key and a
        checkpoint keeps one copy of it, so a replica's own share would be lost. Every process calls this
        (a collective with replicas)."""
        return {"step": torch.tensor(self.step), "epoch_tally": sum_over(self.epoch_tally.clone(), self.replica_group).cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """The tally goes back to replica 0 alone, so the sum at the epoch's end is the saved one in any layout.
        ValueError naming the value if it is not one a run could have saved."""
        step, (wrong, images) = int(state["step"]), state["epoch_tally"].tolist()
        if step < 0:
            raise ValueError(f"step={step}: must be at least 0")
        if not 0 <= wrong <= images < math.inf:
            raise ValueError(f"epoch_tally={[wrong, images]}: must be wrong answers out of images, 0 <= wrong <= images")
        self.step = step
        tally = state["epoch_tally"].to(self.device)
        self.epoch_tally = tally if self.replica == 0 else torch.zeros_like(tally)


class Window:
    """Sums over the steps since the last log: loss, wrong top-1/top-5 and images on the device, and
    the host seconds spent waiting for data."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), device=device)
        self.wrong = torch.zeros(2, device=device)
        self.images = 0
        self.data_wait = 0.0
        self.start = time.perf_counter()

    def next_batch(self, feed):
        """The feed's next batch, its wait counted."""
        waiting = time.perf_counter()
        batch = next(feed)
        self.data_wait += time.perf_counter() - waiting
        return batch

    def add(self, loss: torch.Tensor, wrong: torch.Tensor, images: int) -> None:
        self.loss += loss
        self.wrong += wrong
        self.images += images

    def totals(self, replica_group: dist.ProcessGroup | None) -> tuple[float, float, float, float]:
        """(loss, wrong top-1, wrong top-5, images) summed over replicas: the one host sync of a log step."""
        sums = torch.cat([self.loss[None], self.wrong, torch.tensor([float(self.images)], device=self.device)])
        return tuple(sum_over(sums, replica_group).tolist())

    def loss_over(self, replica_group: dist.ProcessGroup | None) -> float:
        """The window's loss summed over replicas (a host sync), so every process decides alike on it."""
        return sum_over(self.loss.clone(), replica_group).item()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
