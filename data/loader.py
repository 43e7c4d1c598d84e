"""Loading processes that prepare whole batches ahead of the training step."""

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from data.imageset import ImageSet
from data.order import EpochOrder


class _StepBatches(Dataset):
    """Item k is this replica's share of step `first_step + k` of the run, counted across epochs,
    so one loader (and its loading processes) serves a whole run, prefetching over epoch ends."""

    def __init__(self, images: ImageSet, order: EpochOrder, first_step: int, end_step: int, replica: int, replicas: int):
        self.images, self.order = images, order
        self.first_step, self.end_step, self.replica, self.replicas = first_step, end_step, replica, replicas

    def __len__(self) -> int:
        return self.end_step - self.first_step

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, step = divmod(self.first_step + k, self.order.steps_per_epoch)
        return self.images.load(self.order.batch(epoch, step, self.replica, self.replicas))


class _Chunks(Dataset):
    """Item k is the k-th consecutive chunk of `indices`, for evaluation."""

    def __init__(self, images: ImageSet, indices: torch.Tensor, batch_size: int) -> None:
        self.images, self.chunks = images, indices.split(batch_size)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images.load(self.chunks[k])


def _loader(dataset: Dataset, workers: int, prefetch: int, pin_memory: bool) -> DataLoader:
    # batch_size=None: items are whole batches already, assembled inside the worker.
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=prefetch if workers > 0 else None,
        pin_memory=pin_memory,
    )


def train_batches(
    images: ImageSet, order: EpochOrder, first_step: int, end_step: int, replica: int, replicas: int,
    workers: int, prefetch: int, pin_memory: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Steps [first_step, end_step) of the run (across epochs), for one replica."""
    dataset = _StepBatches(images, order, first_step, end_step, replica, replicas)
    return iter(_loader(dataset, workers, prefetch, pin_memory))


def eval_share(size: int, replica: int, replicas: int) -> torch.Tensor:
    """Replica r of R evaluates its own contiguous 1/R of the `size` images."""
    return torch.arange(size).tensor_split(replicas)[replica]


def eval_batches(
    images: ImageSet, batch_size: int, replica: int, replicas: int, workers: int, prefetch: int, pin_memory: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This replica's `eval_share` of `images`, in chunks of `batch_size`."""
    indices = eval_share(len(images), replica, replicas)
    return iter(_loader(_Chunks(images, indices, batch_size), workers, prefetch, pin_memory))
