"""Both towers of a replica see the same batch: one process loads it, the other receives it.

The loading tower process reads each batch from its loader's ring (data/loader.py), moves it to its
device (data/transfer.py: a side stream on a GPU) and broadcasts it over the tower group. A loading
process that dies or stalls ends the run within parallel.timeout_s in every layout: the loader's own
timeout (LoaderFailed) in the process that loads, the broadcast's in its partner.
"""

import itertools
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from config.errors import UserError
from config.schema import Config
from data.compact import DamagedImage
from data.imageset import IMAGE_SHAPE, ImageSet
from data.loader import LoaderFailed, RingBatches, eval_batches, eval_share, is_loader_death, train_batches
from data.order import EpochOrder
from data.transfer import to_device
from distributed.layout import Layout


def loader_failure(err: BaseException) -> str | None:
    """The line to end the run with when `err` is a loading process's death or stall, else None.

    torch's DataLoader reports a killed loading process from a SIGCHLD handler, so that error may
    surface in any part of the step rather than in the loader: it is recognised by its message."""
    if isinstance(err, LoaderFailed):
        return str(err)
    if is_loader_death(err):
        return f"a loading process of the training or validation batches died: {err}"
    return None


def shared_batches(
    loaded: RingBatches | None,
    sizes: Iterable[int],
    group: dist.ProcessGroup | None,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, int64 labels) batches of `sizes` images each, on `device`; each valid until the next
    is asked for (on a CPU they are the loader's reused buffers).

    The loading process passes its loader; the other tower process passes None and receives each
    batch by broadcast over the tower group, so the pair never disagrees about an image. Without a
    tower group this just moves the loader's batches to the device. A damaged image of a pack stops
    the run as a UserError naming it.
    """
    local = to_device(loaded, device) if loaded is not None else None
    receive = _Receiver(device)
    try:
        for size in sizes:
            if local is None:
                images, labels = receive(size)
            else:
                try:
                    images, labels = next(local)
                except DamagedImage as err:
                    raise UserError(str(err)) from None
            if group is not None:
                dist.broadcast(images, group=group, group_src=0)
                dist.broadcast(labels, group=group, group_src=0)
            yield images, labels
    finally:
        if local is not None:
            local.close()


class _Receiver:
    """Buffers the partner tower process receives into: on a CPU one pair, reused (a fresh 25 MB block
    per batch costs more than the broadcast), since a batch is held only until the next is asked for."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type != "cpu" or self.buffers is None or len(self.buffers[1]) < size:
            self.buffers = (torch.empty((size, *IMAGE_SHAPE), dtype=torch.uint8, device=self.device),
                            torch.empty(size, dtype=torch.int64, device=self.device))
        images, labels = self.buffers
        return images[:size], labels[:size]


def training_batches(train: ImageSet, order: EpochOrder, cfg: Config, layout: Layout, first_step: int,
                     end_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Steps [first_step, end_step) of the run, this replica's share of each: one loader for the run,
    prefetching across epoch ends (and so under the evaluation at each)."""
    plan = layout.plan
    loaded = None
    if plan.loads_data:
        loaded = train_batches(train, order, first_step, end_step, plan.replica, plan.replicas, cfg.data.workers,
                               cfg.data.prefetch, plan.device.type == "cuda", cfg.parallel.timeout_s)
    sizes = itertools.repeat(cfg.train.batch_size // plan.replicas, end_step - first_step)
    return shared_batches(loaded, sizes, layout.tower_group, plan.device)


def validation_batches(val: ImageSet, cfg: Config, layout: Layout) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This replica's share of the validation set, in its share of train.batch_size, the same on its tower processes."""
    plan = layout.plan
    batch_size = cfg.train.batch_size // plan.replicas
    sizes = [len(c) for c in eval_share(len(val), plan.replica, plan.replicas).split(batch_size)]
    loaded = None
    if plan.loads_data:
        loaded = eval_batches(val, batch_size, plan.replica, plan.replicas, cfg.data.workers, cfg.data.prefetch,
                              plan.device.type == "cuda", cfg.parallel.timeout_s)
    return shared_batches(loaded, sizes, layout.tower_group, plan.device)
