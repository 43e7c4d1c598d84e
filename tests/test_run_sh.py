"""The error contract through the launcher users type, `./run.sh` (programs/launch.py): a user error is one
line and exit 2 before torchrun starts; a worker's failure is its own line and status, without torchrun's
ChildFailedError report; Ctrl-C is one line naming the newest checkpoint and the command that continues it,
exit 130, nothing left running. Before the launcher, `./run.sh train.batch_size=-3` printed the line once per
process, then torchrun's traceback, and exited 1; Ctrl-C printed a SignalException traceback and exited 1."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoints.folder import CheckpointFolder
from distributed import layout
from tests.conftest import ROOT
from tests.processes import CPU_ENV, children, wait_for
from tests.trainer_runs import small_config, small_words

ENV = {**CPU_ENV, "PYTHON": sys.executable}
"""./run.sh with this interpreter as it is (no venv made)."""


def _run_sh(*words: str, limit_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["./run.sh", *words], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=limit_s)


def _left_running(marker: str) -> list[str]:
    """Command lines of live processes that name `marker` (a test's own folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if marker in cmdline and entry.name != str(os.getpid()):
            found.append(cmdline)
    return found


@pytest.mark.parametrize("words, line", [
    (["train.batch_size=-3"], "error: train.batch_size=-3: must be at least 1"),
    (["--config", "no_such.yaml"], "error: config file no_such.yaml: no such file or folder"),
    (["train.device=cuda"], "error: train.device=cuda but no GPU is visible"),
], ids=["bad value", "missing file", "impossible layout"])
def test_a_user_error_is_one_line_and_exit_2_before_torchrun_starts(words, line, tmp_path):
    if "cuda" in line and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible")
    done = _run_sh(*words, f"log.dir={tmp_path}", f"checkpoint.dir={tmp_path}/ck")
    assert (done.returncode, done.stderr, done.stdout) == (2, line + "\n", ""), done.stderr[-3000:]


def test_folders_another_run_holds_are_refused_before_torchrun_starts(tmp_path):
    """The lock a live run's rank 0 holds (taken here, in this process, as a run takes it)."""
    words = small_words(tmp_path)
    cfg = small_config(tmp_path)
    with CheckpointFolder(cfg, layout.plan_from_env(cfg, {})).claim():
        done = _run_sh(*words)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-3000:]
    assert re.fullmatch(rf"error: checkpoint.dir={tmp_path}/ck is in use by another run \(pid {os.getpid()} on .*\): "
                        r"wait for it to end, or give this run another checkpoint.dir\n", done.stderr), done.stderr


def test_a_failing_worker_ends_run_sh_with_its_own_lines_and_status(tmp_path):
    """A rate that sends the loss to NaN: each process says so and exits 1; so does ./run.sh, without torchrun's
    log lines or its ChildFailedError traceback."""
    done = _run_sh(*small_words(tmp_path, "train.lr=1e30", "train.max_steps=3"))
    assert done.returncode == 1, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("rank ")]
    assert sorted(line[:7] for line in said) == ["rank 0:", "rank 1:"], done.stderr
    assert all(re.fullmatch(rf"rank (\d): training loss became (nan|inf) by step 2 \(rank \1\); stopped, the last good "
                            rf"checkpoint in {tmp_path}/ck is kept", line) for line in said), done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr and "torch/distributed" not in done.stderr


def test_ctrl_c_through_run_sh_is_one_line_naming_the_command_that_continues(tmp_path):
    """SIGINT to ./run.sh's process group, as a terminal's Ctrl-C: one line, exit 130, no process left; the
    command it names continues the run from that checkpoint."""
    words = small_words(tmp_path, "checkpoint.every_steps=2", "checkpoint.keep=3", "train.max_steps=8")
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(["./run.sh", *words], cwd=ROOT, env=ENV, stdout=out, stderr=err, start_new_session=True)
    try:
        wait_for(tmp_path / "ck" / "step_00000002", proc)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130, (tmp_path / "err").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = (tmp_path / "err").read_text()
    said = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert len(said) == 1 and "Traceback" not in stderr and "rank " not in stderr, stderr[-3000:]
    found = re.fullmatch(rf"interrupted; newest complete checkpoint: ({tmp_path}/ck/step_0000000\d); to continue from "
                         r"it: (.*)", said[0])
    assert found, said[0]
    assert found.group(2) == f"PYTHON={sys.executable} ./run.sh {' '.join(words)} train.resume=true"
    time.sleep(1)  # the workers were waited for; their loading processes get a moment to be reaped
    assert not _left_running(str(tmp_path)), "processes left running"
    again = subprocess.run(["bash", "-c", found.group(2)], cwd=ROOT, env=CPU_ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {found.group(1)} at step {int(found.group(1)[-1])}" in again.stdout


def test_workers_killed_by_a_signal_are_named_in_one_line(tmp_path):
    """Workers killed outright (by the kernel's OOM killer, say) print nothing: ./run.sh names the first in one line
    and exits 128 + its signal, without torchrun's report. (One killed alone leaves the other to say `peer lost`, or
    to be stopped by torchrun first: a race; both killed is not.)"""
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(["./run.sh", *small_words(tmp_path, "train.max_steps=8")], cwd=ROOT, env=ENV,
                                stdout=out, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "processes:" not in (tmp_path / "out").read_text():  # both workers have joined the process group
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err").read_text()[-3000:]
            time.sleep(0.1)
        workers = children(proc.pid)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=120) == 128 + signal.SIGKILL, (tmp_path / "err").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = (tmp_path / "err").read_text()
    said = re.fullmatch(r"error: rank ([01]) \(pid (\d+)\) was killed by SIGKILL", stderr.splitlines()[-1])
    assert said and int(said.group(2)) == workers[int(said.group(1))], stderr[-3000:]
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr[-3000:]
