"""The move to a GPU's schedule (data/transfer.py `moved_ahead`), on CPU moves: batch j + 1 moves while the
caller holds batch j, a move reads a ring slot that no loading process refills meanwhile, ending early waits
for the move in flight; and a GPU's ring is pinned only once its loading processes exist."""

import random
import threading
import time
from multiprocessing import active_children

import pytest

from data.loader import RingBatches
from data.ring import BatchRing
from data.transfer import moved_ahead
from tests.unit.stamped_images import Stamped, chunks, stamps


def test_each_batch_moves_while_the_caller_holds_the_one_before():
    """Batch j + 1's move goes on only once the caller holds batch j: a move done before handing batch j over
    (the training thread decoding the next batch before enqueuing this step) never sees that and fails."""
    held = [threading.Event() for _ in range(5)]

    def move(j: int) -> int:
        if j > 0 and not held[j - 1].wait(timeout=30):
            raise AssertionError(f"batch {j} moved before the caller held batch {j - 1}")
        return j

    for j, moved in enumerate(moved_ahead(iter(range(5)), move)):
        assert moved == j
        held[j].set()


@pytest.mark.parametrize("workers, prefetch", [(0, 1), (2, 2)])
def test_a_move_reads_a_slot_no_loading_process_refills_meanwhile(workers, prefetch):
    """Each move reads its slot over a random while, as a copy to the GPU does, with the loading processes as
    far ahead as they are let: a slot handed back before its move ended is rewritten (or refused) here."""
    batches = 30
    loader = RingBatches(Stamped(batches * 2), chunks(batches, 2), 2, workers, prefetch, False, 30, "the test batches")

    def move(batch):
        images, labels = batch
        first = stamps(images)
        time.sleep(random.uniform(0, 0.01))
        assert stamps(images) == first, "the slot was refilled during its move"
        return first, labels.tolist()

    try:
        moved = list(moved_ahead(loader, move))
    finally:
        loader.close()
    assert moved == [([2 * k, 2 * k + 1], [2 * k, 2 * k + 1]) for k in range(batches)]


def test_ending_early_waits_for_the_move_in_flight():
    """A consumer that stops after batch 0 (a stop rule, an exception) gets control back only once batch 1's
    move has ended: the ring is then closed under no copy."""
    events = []

    def move(j: int) -> int:
        if j > 0:
            time.sleep(0.3)
        events.append(f"moved {j}")
        return j

    batches = moved_ahead(iter(range(5)), move)
    assert next(batches) == 0
    batches.close()
    events.append("closed")
    assert events == ["moved 0", "moved 1", "closed"]


def test_a_gpu_ring_is_pinned_once_its_loading_processes_exist(monkeypatch):
    """Page-locked after the DataLoader forks its workers, so that no child inherits registered memory."""
    children_when_pinned = []
    monkeypatch.setattr(BatchRing, "pin", lambda ring: children_when_pinned.append(len(active_children())))
    loader = RingBatches(Stamped(8), chunks(4, 2), 2, 2, 1, True, 30, "the test batches")
    try:
        assert children_when_pinned == [2]
        assert [stamps(images) for images, _ in loader] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    finally:
        loader.close()
