"""A ring of batch slots in shared memory, allocated once: loading processes fill slots in place and
hand over a number, so a batch crosses into the training process without a copy or a new allocation.

Why: a DataLoader worker that returns a tensor puts it in a fresh shared-memory block (about 11 ms
of a worker's 27 ms per 25 MB batch on the 2-core machine), and the training process rebuilds a
tensor from it and pins it again (2 ms of its Python thread per batch), which at 32,000 images/s
is more than the thread has (docs/BENCHMARKS.md, "Data pipeline").

Item k of a loader (its k-th batch, counted from the loader's start) goes in slot k mod `slots`.
`ring_slots` sizes the ring so that no slot is written while the training process still reads it:

    torch's DataLoader sends its workers `prefetch x workers` items when it starts and one more
    each time it hands an item to the training process (`_MultiProcessingDataLoaderIter._reset` and
    `_process_data`, read in torch 2.14's source; unchanged since prefetch_factor came in), and
    items are handed over in order (in_order=True, the default). So when the training
    process has received item j, at most items 0 .. j + prefetch x workers have been sent out, and
    a worker writes nothing past item j + P (P = prefetch x workers). The training process reads
    only the item it received last (`release` is called for every earlier one before it asks for
    the next: see data/loader.py and data/transfer.py, which wait for a batch's copy to the GPU
    before asking). The items that may be read or written at once are j .. j + P: P + 1
    consecutive numbers, which fall in P + 1 different slots of a ring of P + 1. Without workers
    (loading in the training process) P is 0 and one slot serves.

The bound rests on how torch's DataLoader schedules, which its documentation does not promise, so
each loading process checks it too (`claim`): an item that would overwrite a slot not yet released
stops the run with RingOverrun instead of tearing a batch. tests/unit/test_ring.py holds consumers to
the bound under random timing.
"""

import os
import shutil

import torch

from data.imageset import IMAGE_BYTES, IMAGE_SHAPE


class RingOverrun(RuntimeError):
    """A loading process was sent an item whose slot the training process still holds."""


SHARED_MEMORY = "/dev/shm"
"""Where torch's shared CPU tensors live on Linux (shm_open): a tmpfs, whose size can be far below the
machine's memory (64 MB in a container by default)."""


def ring_slots(workers: int, prefetch: int) -> int:
    """Slots a loader of `workers` processes, each `prefetch` batches ahead, needs (module doc)."""
    return workers * prefetch + 1


def ring_bytes(workers: int, prefetch: int, batch: int) -> int:
    """Shared memory a loader's ring takes (`BatchRing`: each slot's images, labels, record lengths and indices)."""
    return ring_slots(workers, prefetch) * batch * (IMAGE_BYTES + 3 * 8)


def shared_memory_room() -> tuple[int, str]:
    """(bytes, what they are) that rings can take on this machine: the free room of SHARED_MEMORY where
    there is one, and never more than the machine's memory."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if os.path.isdir(SHARED_MEMORY):
        free = shutil.disk_usage(SHARED_MEMORY).free
        if free < memory:
            return free, f"free in {SHARED_MEMORY}, where shared memory lives"
    return memory, "of memory on this machine"


class BatchRing:
    """`slots` slots of `batch` images each, in shared memory, with their labels and record lengths.

    A slot holds a batch's images as uint8 [batch, 3, 256, 256] pixels, or (a compact pack whose
    images are decoded on the GPU) one compressed record per image row: row i's first
    `lengths[slot, i]` bytes (a record is never longer than a raw image: data/compact.py).
    `indices` keeps which image of the split each row holds, to name a damaged one.
    """

    def __init__(self, slots: int, batch: int, workers: int) -> None:
        self.slots, self.batch = slots, batch

        def shared(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype).share_memory_()

        self.images = shared(slots, batch, *IMAGE_SHAPE, dtype=torch.uint8)
        self.labels = shared(slots, batch)
        self.lengths = shared(slots, batch)
        self.indices = shared(slots, batch)
        self.released = shared(1)
        """How many items (from the loader's first) the training process no longer reads."""
        self.pids = shared(max(workers, 1))
        """Each loading process's pid, written as it starts: what to kill when one stalls."""
        self._pinned = False

    def records(self, slot: int) -> torch.Tensor:
        """Slot `slot` as uint8 [batch, IMAGE_BYTES] rows: one compressed record per row."""
        return self.images[slot].view(self.batch, IMAGE_BYTES)

    def claim(self, item: int) -> int:
        """The slot of item `item`, in a loading process; RingOverrun if it is still held (module doc)."""
        held = int(self.released[0])
        if item - held >= self.slots:
            raise RingOverrun(
                f"batch {item} would overwrite slot {item % self.slots} while batch {item - self.slots} is still read "
                f"({self.slots} slots, {held} batches released): the DataLoader sent work further ahead than "
                "prefetch x workers (data/ring.py)"
            )
        return item % self.slots

    def release(self, items: int) -> None:
        """The training process no longer reads items before `items`."""
        self.released[0] = items

    def register_worker(self, worker_id: int) -> None:
        """DataLoader's worker_init_fn: note this loading process's pid."""
        self.pids[worker_id] = os.getpid()

    def pin(self) -> None:
        """Page-lock the ring in place for asynchronous copies to a GPU (cudaHostRegister: torch's
        pin_memory() would copy it into a new block, which the loading processes cannot see)."""
        cudart = torch.cuda.cudart()
        for t in (self.images, self.labels):
            torch.cuda.check_error(cudart.cudaHostRegister(t.data_ptr(), t.nbytes, 0))  # 0: cudaHostRegisterDefault
        self._pinned = True

    def unpin(self) -> None:
        if self._pinned:
            cudart = torch.cuda.cudart()
            for t in (self.images, self.labels):
                torch.cuda.check_error(cudart.cudaHostUnregister(t.data_ptr()))
            self._pinned = False
