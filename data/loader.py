"""Loading processes that prepare whole batches ahead of the training step, in a ring of reused buffers.

torch's DataLoader still schedules the work and watches the processes (its timeout, its check for a
dead worker); what it hands over is only a number. Each item is one batch, which the worker reads
(and decodes) straight into the ring slot data/ring.py assigns it, so the training process reads it
in place: no new shared-memory block per batch in the worker, no tensor rebuilt from one in the
training process. A batch is therefore valid only until the next one is asked for.
"""

import signal
from dataclasses import dataclass
from multiprocessing import active_children

import torch
from torch.utils.data import DataLoader, Dataset

from data.compact import DamagedImage
from data.imageset import ImageSet
from data.order import EpochOrder
from data.ring import BatchRing, RingOverrun, ring_slots


class LoaderFailed(RuntimeError):
    """A loading process died, or sent no batch within the timeout; the message names the loader."""


def is_loader_death(err: BaseException) -> bool:
    """Whether `err` is torch's DataLoader reporting a dead or silent loading process: raised from its
    queue, or from the SIGCHLD handler it installs, in whatever the training process was doing then."""
    return isinstance(err, RuntimeError) and str(err).startswith(("DataLoader worker (pid", "DataLoader timed out"))


@dataclass
class Records:
    """A compact pack's batch, undecoded: rows[i]'s first lengths[i] bytes are image indices[i]'s JPEG record
    (its header checked by the loading process), for a GPU to decode (data/transfer.py)."""

    rows: torch.Tensor
    lengths: torch.Tensor
    indices: torch.Tensor
    source: ImageSet
    """The split they come from: its `damaged` names an image that fails to decode."""

    def __len__(self) -> int:
        return len(self.lengths)

    def views(self) -> list[torch.Tensor]:
        return [row[:length] for row, length in zip(self.rows, self.lengths.tolist())]


class _StepBatches:
    """Batch k is this replica's share of step `first_step + k` of the run, counted across epochs,
    so one loader (and its loading processes) serves a whole run, prefetching over epoch ends."""

    def __init__(self, order: EpochOrder, first_step: int, end_step: int, replica: int, replicas: int) -> None:
        self.order, self.first_step, self.end_step, self.replica, self.replicas = order, first_step, end_step, replica, replicas
        self.size = order.batch_size // replicas

    def __len__(self) -> int:
        return self.end_step - self.first_step

    def __getitem__(self, k: int) -> torch.Tensor:
        epoch, step = divmod(self.first_step + k, self.order.steps_per_epoch)
        return self.order.batch(epoch, step, self.replica, self.replicas)


class _IntoRing(Dataset):
    """Item k: batch k's images read into ring slot k mod slots; what crosses back is (k, images), or the
    error that stops the run (a damaged image, an overrun ring) as a value, so that it arrives as one
    line rather than wrapped in the loading process's traceback."""

    def __init__(self, images: ImageSet, batches, ring: BatchRing, records: bool) -> None:
        self.images, self.batches, self.ring, self.records = images, batches, ring, records

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[int, int] | Exception:
        try:
            slot = self.ring.claim(k)
            indices = self.batches[k]
            n = len(indices)
            if self.records:
                labels = self.images.read_records(indices, self.ring.records(slot), self.ring.lengths[slot])
            else:
                labels = self.images.load_into(indices, self.ring.images[slot])
        except (DamagedImage, RingOverrun) as err:
            return err
        self.ring.labels[slot, :n] = labels
        self.ring.indices[slot, :n] = indices
        return k, n


class RingBatches:
    """(images, int64 labels) batches of a loader, views of its ring; `images` is uint8 [N, 3, 256, 256]
    pixels, or Records when a compact pack's images go to a GPU to be decoded.

    Asking for a batch releases the one before (data/ring.py). A loading process that dies, or sends
    nothing for `timeout_s` seconds, raises LoaderFailed; the loading processes are killed first, since
    a stopped one would otherwise hold the training process's exit (multiprocessing joins its children).
    """

    def __init__(self, images: ImageSet, batches, batch: int, workers: int, prefetch: int, gpu: bool, timeout_s: float,
                 what: str) -> None:
        """`batches[k]` are the indices of batch k, at most `batch` of them."""
        self.what, self.workers, self.timeout_s = what, workers, timeout_s
        self.records = gpu and images.compressed
        self.ring = BatchRing(ring_slots(workers, prefetch), batch, workers)
        self.source = images
        self.loader = iter(DataLoader(
            _IntoRing(images, batches, self.ring, self.records),
            batch_size=None,  # items are whole batches already, assembled inside the worker
            num_workers=workers,
            prefetch_factor=prefetch if workers > 0 else None,
            timeout=timeout_s if workers > 0 else 0,
            worker_init_fn=self.ring.register_worker if workers > 0 else None,
        ))
        if gpu:  # after the loading processes are forked: CUDA does not say that a child can write registered pages
            self.ring.pin()
        self.received = 0

    def __iter__(self) -> "RingBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor | Records, torch.Tensor]:
        self.ring.release(self.received)
        failure = None
        try:
            item = next(self.loader)
        except RuntimeError as err:
            if not is_loader_death(err):
                raise
            failure = self.failure(err)
        if failure is not None:  # raised here, not in the except clause: the error must not keep the loader alive
            self.close()
            raise LoaderFailed(failure)
        if isinstance(item, Exception):
            self.close()
            raise item
        k, n = item
        self.received = k + 1
        slot = k % self.ring.slots
        labels = self.ring.labels[slot, :n]
        if self.records:
            return Records(self.ring.records(slot)[:n], self.ring.lengths[slot, :n], self.ring.indices[slot, :n], self.source), labels
        return self.ring.images[slot, :n], labels

    def failure(self, err: RuntimeError) -> str:
        """One line: which loader, and what became of its loading process."""
        if str(err).startswith("DataLoader timed out"):
            what = f"sent no batch for {self.timeout_s:g} s (parallel.timeout_s): stopped or stuck?"
        else:
            what = f"died: {err}"
        return f"the loading process of {self.what} ({self.workers} of data.workers) {what}"

    def close(self) -> None:
        """Stop the loading processes, a stopped one included, and unpin the ring.

        A stopped process ignores the SIGTERM torch's DataLoader ends its workers with, and Python's
        multiprocessing waits for its children at exit: the run would never end. So they are killed,
        with SIGCHLD held back until torch has let go of them, or its SIGCHLD handler would report the
        kill as one more dead worker.
        """
        pids = set(self.ring.pids.tolist()) - {0}
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            for child in active_children():
                if child.pid in pids:
                    child.kill()
                    child.join()
            self.loader = iter(())  # the DataLoader's iterator goes, and unregisters its workers
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        self.ring.unpin()


def train_batches(
    images: ImageSet, order: EpochOrder, first_step: int, end_step: int, replica: int, replicas: int,
    workers: int, prefetch: int, gpu: bool = False, timeout_s: float = 0.0,
) -> RingBatches:
    """Steps [first_step, end_step) of the run (across epochs), for one replica. `gpu`: the batches go to a
    GPU (the ring is pinned, and a compact pack's records are handed over for the GPU to decode);
    `timeout_s`: how long to wait for a loading process before LoaderFailed (0: for ever)."""
    batches = _StepBatches(order, first_step, end_step, replica, replicas)
    return RingBatches(images, batches, batches.size, workers, prefetch, gpu, timeout_s, "the training batches")


def eval_share(size: int, replica: int, replicas: int) -> torch.Tensor:
    """Replica r of R evaluates its own contiguous 1/R of the `size` images."""
    return torch.arange(size).tensor_split(replicas)[replica]


def eval_batches(
    images: ImageSet, batch_size: int, replica: int, replicas: int, workers: int, prefetch: int, gpu: bool = False,
    timeout_s: float = 0.0,
) -> RingBatches:
    """This replica's `eval_share` of `images`, in chunks of `batch_size` (train_batches says the rest)."""
    chunks = eval_share(len(images), replica, replicas).split(batch_size)
    return RingBatches(images, chunks, batch_size, workers, prefetch, gpu, timeout_s, "the validation batches")
