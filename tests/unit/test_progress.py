"""The run's progress through a checkpoint: an epoch's training errors survive a mid-epoch save in any layout."""

import torch
import torch.distributed as dist

from bench.workers import run_workers
from checkpoints import store
from training.progress import Progress


def _two_replicas_save(rank: int, world: int, folder: str) -> None:
    progress = Progress(torch.device("cpu"), dist.group.WORLD, replica=rank)
    for _ in range(3):  # replica 0 counts 1 wrong answer of 4 a step, replica 1 counts 3 of 4
        progress.count(torch.tensor(1.0 + 2 * rank), 4)
    store.save({"progress": progress.state_dict()}, folder, progress.step, keep=1)


def test_a_mid_epoch_checkpoint_of_two_replicas_keeps_both_tallies(tmp_path):
    """Each replica holds its own share of the epoch's tally under the same key, and a checkpoint keeps one copy
    of a key: saved as each replica's share, one replica's 3 (or 9) wrong answers would be lost."""
    run_workers(2, _two_replicas_save, str(tmp_path))
    one = Progress(torch.device("cpu"))
    state = {"progress": one.state_dict()}
    store.load(state, store.latest(tmp_path))
    one.load_state_dict(state["progress"])
    assert one.step == 3
    assert one.end_epoch() == (3 * 1 + 3 * 3) / (2 * 3 * 4)


def test_the_tally_goes_back_to_replica_zero_alone():
    """Loaded into two replicas, the sum at the epoch's end is the saved tally, counted once."""
    saved = {"step": torch.tensor(5), "epoch_tally": torch.tensor([6.0, 20.0])}
    first, second = Progress(torch.device("cpu"), replica=0), Progress(torch.device("cpu"), replica=1)
    first.load_state_dict(saved)
    second.load_state_dict(saved)
    assert torch.equal(first.epoch_tally + second.epoch_tally, saved["epoch_tally"])
    assert first.step == second.step == 5
