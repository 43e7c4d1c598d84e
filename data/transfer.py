"""Batches from the loader's ring to the training device: on a GPU, each batch copied (or a compact pack's
records decoded) on a helper thread and a side stream while the training thread runs the step before."""

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, Iterator, TypeVar

import torch

from data import compact
from data.loader import Records, RingBatches

Batch = tuple[torch.Tensor, torch.Tensor]
In = TypeVar("In")
Out = TypeVar("Out")


def to_device(loaded: RingBatches, device: torch.device) -> Iterator[Batch]:
    """(uint8 images [N, 3, 256, 256], int64 labels [N]) on `device`, each batch of `loaded` in turn.

    On a CPU the batches are the ring's own slots, valid until the next is asked for. On a GPU batch
    j + 1 moves (`moved_ahead`) while the training thread enqueues step j.
    """
    try:
        if device.type == "cuda":
            move = partial(_move, device=device, side=torch.cuda.Stream(device),
                           consumer=torch.cuda.current_stream(device))
            yield from moved_ahead(loaded, move)
        else:
            yield from loaded
    finally:
        loaded.close()


def moved_ahead(batches: Iterator[In], move: Callable[[In], Out]) -> Iterator[Out]:
    """move(batch) of each batch in turn, batch j + 1's on a helper thread while the caller works on batch j.

    `move` must have finished reading its batch when it returns: asking `batches` for the next one may
    hand the batch's ring slot back to a loading process. A move blocks its thread (nvJPEG's batched
    decode synchronises its stream, a copy waits for its stream; the GIL is released meanwhile), so on the
    training thread it would add its time to every step's. Ending early (a stop rule, an exception) waits
    for the move in flight, so the ring is never unpinned or freed under a copy still reading it.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="to-device") as helper:  # its exit waits for the move
        batch = next(batches, None)
        moving = helper.submit(move, batch) if batch is not None else None
        while moving is not None:
            moved = moving.result()
            batch = next(batches, None)  # hands the slot `moved` was read from back to the loader
            moving = helper.submit(move, batch) if batch is not None else None
            yield moved


def _move(batch: tuple[torch.Tensor | Records, torch.Tensor], device: torch.device, side: torch.cuda.Stream,
          consumer: torch.cuda.Stream) -> Batch:
    """Batch on `device`, copied or decoded on the `side` stream, whole when this returns; `consumer` is the
    stream the step will use it on."""
    images, labels = batch
    with torch.cuda.device(device), torch.cuda.stream(side):  # this thread's current device and stream
        if isinstance(images, Records):
            images = decode_records(images, device)
        else:
            images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
    side.synchronize()  # the ring slot is read, so the next batch may be asked for; the step needs no wait
    images.record_stream(consumer)  # made on the side stream, used on the consumer's: kept until used there
    labels.record_stream(consumer)
    return images, labels


def decode_records(records: Records, device: torch.device) -> torch.Tensor:
    """A batch of checked JPEG records decoded on `device` in one call; a record nvJPEG refuses is found
    by decoding each on the CPU, and named (DamagedImage)."""
    try:
        return compact.decode_batch(records.views(), device)
    except RuntimeError as err:
        for view, image in zip(records.views(), records.indices.tolist()):
            try:
                compact.decode(view)
            except ValueError as why:
                raise records.source.damaged(image, str(why)) from None
        raise records.source.damaged(int(records.indices[0]), f"nvJPEG refused a record of its batch: {err}") from None
