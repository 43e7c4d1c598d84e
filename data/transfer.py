"""Batches from the loader's ring to the training device: on a GPU, copied (or a compact pack's records
decoded) on a side stream while the step before runs."""

from typing import Iterator

import torch

from data import compact
from data.loader import Records, RingBatches

Batch = tuple[torch.Tensor, torch.Tensor]


def to_device(loaded: RingBatches, device: torch.device) -> Iterator[Batch]:
    """(uint8 images [N, 3, 256, 256], int64 labels [N]) on `device`, each batch of `loaded` in turn.

    On a CPU the batches are the ring's own slots, valid until the next is asked for. On a GPU batch
    j + 1 is copied (or decoded) on a side stream as soon as batch j is handed out, so the copy runs
    under step j; the step's stream waits for it on the GPU, not on the host.
    """
    try:
        yield from (_on_gpu(loaded, device) if device.type == "cuda" else loaded)
    finally:
        loaded.close()


def _on_gpu(loaded: RingBatches, device: torch.device) -> Iterator[Batch]:
    side = torch.cuda.Stream(device)
    ahead = _start(next(loaded, None), device, side)
    while ahead is not None:
        images, labels, done = ahead
        # The copy (or decode) has read its ring slot once `done` has passed: only then may asking for
        # the next batch let a loading process refill that slot (data/ring.py's bound). It was issued
        # a step ago, so this rarely waits.
        done.synchronize()
        ahead = _start(next(loaded, None), device, side)
        stream = torch.cuda.current_stream(device)
        stream.wait_event(done)
        images.record_stream(stream)  # made on the side stream, used on this one: keep it until used
        labels.record_stream(stream)
        yield images, labels


def _start(batch: tuple[torch.Tensor | Records, torch.Tensor] | None, device: torch.device,
           side: torch.cuda.Stream) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.Event] | None:
    """Issue batch's move to `device` on `side`; the device tensors and the event that marks it done."""
    if batch is None:
        return None
    images, labels = batch
    with torch.cuda.stream(side):
        if isinstance(images, Records):
            images = decode_records(images, device)
        else:
            images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(side)
    return images, labels, done


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
