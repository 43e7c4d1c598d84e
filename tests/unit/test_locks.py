"""Issue 31, classes 6 and 7: no wait on a lock without a deadline, and a lock file is the run's own.

A process that is alive but stopped (SIGSTOP, Ctrl-Z) keeps its POSIX lock: the kernel drops it only when the
process dies. Every wait for a lock (files.lock's `wait_s`: the embedded data's cache, the CPU kernels' build)
ends at its deadline with one line naming the lock and the holder's pid. And a lock file planted as a hard
link to another file is refused, never written into (the symbolic link is refused in test_hostile_links.py).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import files
from checkpoints import run_folder
from config.data import DataConfig
from config.errors import UserError
from packs.synthetic_cache import LOCK_FILE
from tests import bounded
from tests.conftest import ROOT
from tests.processes import CPU_ENV
from tests.trainer_runs import small_words
from tests.unit.handed_folders import claimed, snapshot
from training.datasets import open_datasets

HOLD = """
import sys, time
import files
held = files.lock(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def stopped_holder():
    """Hold the lock on a file in a process of its own, then stop it (SIGSTOP): it keeps the lock, alive."""
    started = []

    def hold(path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, env=CPU_ENV, text=True,
                                stdout=subprocess.PIPE)
        started.append(proc)
        assert proc.stdout.readline() == "held\n"
        os.kill(proc.pid, signal.SIGSTOP)
        return proc.pid

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_wait_for_a_stopped_holder_ends_at_its_deadline_naming_its_pid(tmp_path, stopped_holder):
    pid = stopped_holder(tmp_path / "x.lock")
    began = time.monotonic()
    with pytest.raises(files.Busy, match=f"x.lock: locked by another process \\(pid {pid}\\) and still held after "
                                         "1.5 s: is it stopped or stuck\\?"):
        files.lock(tmp_path / "x.lock", wait_s=1.5)
    assert 1.5 <= time.monotonic() - began < 10


def test_a_lock_let_go_during_the_wait_is_taken(tmp_path, stopped_holder):
    pid = stopped_holder(tmp_path / "x.lock")
    subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {pid}"])
    files.lock(tmp_path / "x.lock", wait_s=30).release()


def test_the_embedded_data_s_cache_waits_no_longer_than_its_deadline(tmp_path, stopped_holder):
    cache = tmp_path / "cache"
    pid = stopped_holder(cache / LOCK_FILE)
    cfg = DataConfig(synthetic_train_images=8, synthetic_val_images=4, synthetic_cache=str(cache))
    with pytest.raises(files.Busy, match=f"{LOCK_FILE}: locked by another process \\(pid {pid}\\) and still held"):
        open_datasets(cfg, 0, wait_s=1)


@pytest.mark.timeout(300)
def test_a_run_whose_cache_is_held_by_a_stopped_process_ends_in_one_line_within_parallel_timeout(tmp_path,
                                                                                                 stopped_holder):
    cache = tmp_path / "cache"
    pid = stopped_holder(cache / LOCK_FILE)
    words = small_words(tmp_path, f"data.synthetic_cache={cache}", "parallel.timeout_s=2", "train.max_steps=1")
    line = bounded.one_error_line(bounded.program("distributed.main", words, timeout=240, capped=False))
    assert line == (f"error: {cache / LOCK_FILE}: locked by another process (pid {pid}) and still held after 2 s: "
                    "is it stopped or stuck?")


def test_the_kernels_build_waits_no_longer_than_its_deadline_and_is_no_reason_to_fall_back(tmp_path,
                                                                                            stopped_holder):
    pid = stopped_holder(tmp_path / "build.lock")
    outcome = bounded.call(f"from pathlib import Path\nimport kernels\nfrom model.lrn import ops\n"
                           f"kernels.CACHE = Path({str(tmp_path)!r})\nkernels.BUILD_WAIT_S = 1",
                           "kernels.built(ops.KERNEL)", timeout=60)
    assert outcome["error"] == "Busy", outcome  # raised, not a warning and the twins
    assert f"build.lock: locked by another process (pid {pid}) and still held after 1 s" in outcome["message"]


@pytest.mark.parametrize("key", ["checkpoint.dir", "log.dir"])
def test_a_lock_file_that_is_a_hard_link_is_refused_never_written_into(tmp_path, outside, key):
    before = snapshot(outside)
    run = tmp_path / "handed"
    run.mkdir()
    os.link(outside / "precious.txt", run / run_folder.LOCK_FILE)
    others = {"checkpoint_dir": tmp_path / "ck", "log_dir": tmp_path / "logs"}
    others[key.replace(".", "_")] = run
    with pytest.raises(UserError, match=rf"{key}={run}: {run / '.lock'}: a hard link \(2 names for one file\)"):
        claimed(tmp_path, **others)
    assert snapshot(outside) == before
