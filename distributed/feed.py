"""Both towers of a replica see the same batch: one process loads it, the other receives it."""

from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from config.schema import Config
from data.imageset import IMAGE_SHAPE, ImageSet
from data.loader import eval_batches, eval_share
from distributed.layout import Layout


def shared_batches(
    loaded: Iterator[tuple[torch.Tensor, torch.Tensor]] | None,
    sizes: Iterable[int],
    group: dist.ProcessGroup | None,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, int64 labels) batches of `sizes` images each, on `device`.

    The loading process passes its loader's iterator; the other tower process
    passes None and receives each batch by broadcast over the tower group, so the
    pair never disagrees about an image. Without a tower group this just moves the
    loader's batches to the device.
    """
    for size in sizes:
        if loaded is not None:
            images, labels = next(loaded)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
        else:
            images = torch.empty((size, *IMAGE_SHAPE), dtype=torch.uint8, device=device)
            labels = torch.empty(size, dtype=torch.int64, device=device)
        if group is not None:
            dist.broadcast(images, group=group, group_src=0)
            dist.broadcast(labels, group=group, group_src=0)
        yield images, labels


def validation_batches(val: ImageSet, cfg: Config, run: Layout) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This replica's share of the validation set, in its share of train.batch_size, the same on its tower processes."""
    plan = run.plan
    batch_size = cfg.train.batch_size // plan.replicas
    sizes = [len(c) for c in eval_share(len(val), plan.replica, plan.replicas).split(batch_size)]
    loaded = None
    if plan.loads_data:
        loaded = eval_batches(val, batch_size, plan.replica, plan.replicas, cfg.data.workers, cfg.data.prefetch,
                              plan.device.type == "cuda")
    return shared_batches(loaded, sizes, run.tower_group, plan.device)
