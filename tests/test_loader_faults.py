"""A loading process killed (kill -9) or stopped (SIGSTOP) in the middle of a run ends it within
parallel.timeout_s, in one process and in two tower processes, with one line naming the loader.

Before the ring (data/loader.py), a stopped loading process in the one-process layout held the run for ever."""

import os
import signal
import sys
import time

import pytest

from bench.workers import free_port
from tests.processes import CPU_ENV, children, wait_for
from tests.trainer_runs import small_words

TIMEOUT_S = 5
RUN = ["train.batch_size=2", "train.micro_batches=1", "train.epochs=1", "data.synthetic_train_images=200",
       "data.synthetic_val_images=2", "data.workers=1", "data.prefetch=2", "checkpoint.every_steps=2",
       "checkpoint.keep=1", f"parallel.timeout_s={TIMEOUT_S}"]


def start_run(launch, run_dir, processes: int) -> list:
    """`processes` ranks of `python -m distributed.main`, joined by hand (no torchrun agent to end the others)."""
    port = str(free_port())
    procs = []
    for rank in range(processes):
        env = {**CPU_ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "WORLD_SIZE": str(processes), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(processes)}
        cmd = [sys.executable, "-m", "distributed.main", *small_words(run_dir, *RUN)]
        procs.append(launch(cmd, f"rank{rank}", env))
    return procs


@pytest.mark.timeout(240)
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_dead_or_stopped_loading_process_ends_the_run_in_one_line(tmp_path, launch, how, processes):
    procs = start_run(launch, tmp_path, processes)
    wait_for(tmp_path / "ck" / "step_00000002", procs[0])
    loading = children(procs[0].pid)  # rank 0's DataLoader worker: forked, so it runs distributed.main too
    assert len(loading) == 1, loading
    os.kill(loading[0], signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    start = time.monotonic()
    codes = [proc.wait(timeout=60) for proc in procs]
    took = time.monotonic() - start
    errors = [proc.err.read_text() for proc in procs]
    assert codes == [1] * processes, errors
    assert took < TIMEOUT_S + 10  # the timeout, a few prefetched steps, tearing down
    lines = [line for line in errors[0].splitlines() if line.startswith("rank 0: at step ")]
    assert len(lines) == 1, errors[0][-3000:]
    assert "Traceback" not in errors[0], errors[0][-3000:]
    if how == "kill":
        assert "died" in lines[0] and str(loading[0]) in lines[0], lines[0]
    else:
        assert took > TIMEOUT_S - 1  # it waited for the stopped process rather than failing at once
        assert f"the loading process of the training batches (1 of data.workers) sent no batch for {TIMEOUT_S} s" in lines[0]
    if processes == 2:
        assert "rank 1: peer lost at step " in errors[1], errors[1][-3000:]
    assert not children(procs[0].pid)
