"""The loader's ring (data/ring.py): no slot is rewritten while the training process reads it, batches are
the order's, and a killed or stopped loading process ends the loader within its timeout, in one line."""

import os
import random
import signal
import time

import pytest

import data.loader
from data.loader import LoaderFailed, RingBatches, eval_batches, is_loader_death, train_batches
from data.order import EpochOrder
from data.ring import BatchRing, RingOverrun
from tests.unit.stamped_images import Stamped, chunks, stamps


@pytest.mark.parametrize("workers, prefetch", [(0, 1), (1, 1), (2, 2), (3, 1)])
def test_no_slot_is_rewritten_while_its_batch_is_read(workers, prefetch):
    """The consumer holds each batch a random while (the loading processes meanwhile run as far ahead as
    they are let), then checks the slot still holds that batch: a slot refilled early fails here."""
    batches = 40
    loader = RingBatches(Stamped(batches * 2), chunks(batches, 2), 2, workers, prefetch, False, 30, "the test batches")
    assert loader.ring.slots == workers * prefetch + 1
    for k, (images, labels) in enumerate(loader):
        assert stamps(images) == [2 * k, 2 * k + 1] == labels.tolist()
        time.sleep(random.uniform(0, 0.01))
        assert stamps(images) == [2 * k, 2 * k + 1], f"batch {k}'s slot was refilled while it was read"
    assert k == batches - 1


def test_a_ring_one_slot_short_is_caught_not_torn(monkeypatch):
    """With one slot fewer than ring_slots asks for, a loading process is sent a batch whose slot is still
    read: the run stops with RingOverrun rather than handing over a torn batch."""
    monkeypatch.setattr(data.loader, "ring_slots", lambda workers, prefetch: workers * prefetch)
    loader = RingBatches(Stamped(80, jitter_s=0.0), chunks(40, 2), 2, 2, 2, False, 30, "the test batches")
    with pytest.raises(RingOverrun, match="would overwrite slot"):
        for _ in loader:
            time.sleep(0.02)  # hold each batch long enough for every loading process to run ahead


def test_claim_refuses_an_item_whose_slot_is_held():
    ring = BatchRing(3, 1, 1)
    ring.release(2)
    assert [ring.claim(k) for k in (2, 3, 4)] == [2, 0, 1]
    with pytest.raises(RingOverrun, match="batch 5 would overwrite slot 2 while batch 2 is still read"):
        ring.claim(5)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_follow_the_order_and_resume_bitwise(workers):
    """Training batch k is step first_step + k's share of the order, whatever the loading processes; a loader
    started at step 7 (a resume) gives exactly what the uninterrupted one gave from step 7."""
    images = Stamped(48, jitter_s=0.0)
    order = EpochOrder(len(images), 8, seed=3)
    whole = [stamps(x) for x, _ in train_batches(images, order, 0, 12, 1, 2, workers, 2)]
    resumed = [stamps(x) for x, _ in train_batches(images, order, 7, 12, 1, 2, workers, 2)]
    expected = [order.batch(*divmod(s, order.steps_per_epoch), 1, 2).tolist() for s in range(12)]
    assert whole == expected and resumed == expected[7:]


def test_validation_chunks_cover_the_share():
    got = [stamps(x) for x, _ in eval_batches(Stamped(11, jitter_s=0.0), 4, 1, 2, 1, 2)]
    assert got == [[6, 7, 8, 9], [10]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_dead_or_stopped_loading_process_ends_the_loader_within_its_timeout(how):
    """One line naming the loader. A killed process may also be reported by torch's SIGCHLD handler, from
    wherever the training process is when the signal lands (then as torch's own one-line RuntimeError,
    which distributed/feed.py's loader_failure recognises); a stopped one only by the loader's timeout."""
    loader = train_batches(Stamped(4000, jitter_s=0.0), EpochOrder(4000, 2, 0), 0, 2000, 0, 1, 1, 2, timeout_s=3)
    next(loader)
    pid = int(loader.ring.pids[0])
    os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as failed:
        for _ in loader:
            pass
    took = time.monotonic() - start
    loader.close()
    message = str(failed.value)
    assert "\n" not in message
    if how == "kill":
        assert isinstance(failed.value, LoaderFailed) or is_loader_death(failed.value), message
        assert str(pid) in message and took < 3 + 5  # the DataLoader checks its processes every 5 s
    else:
        assert isinstance(failed.value, LoaderFailed), message
        assert message == ("the loading process of the training batches (1 of data.workers) sent no batch for 3 s "
                           "(parallel.timeout_s): stopped or stuck?")
        assert 2.5 < took < 3 + 2
    assert str(pid) not in os.popen(f"ps -o pid= --ppid {os.getpid()}").read().split(), "the loading process was left"
