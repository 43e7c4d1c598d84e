"""A checkpoint folder belongs to one run (issue 11): no silent overwrite, no other run's weights, a broken
checkpoint fallen back past, a clean Ctrl-C. Runs are launched as `python -m distributed.main` processes
(two ranks joined by hand, or torchrun) wherever the scenario involves processes. Unwritable folders (no lost
epoch) are in test_unwritable_folders."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.workers import free_port
from checkpoints import run_folder, store
from checkpoints.folder import CheckpointFolder
from config.errors import UserError
from distributed import layout
from distributed.main import main
from tests.conftest import ROOT
from tests.processes import CPU_ENV, wait_for
from tests.trainer_runs import CLI, small_config, small_words, train
from training.trainer import Trainer


def _ranks(launch, run_dir: Path, *words: str, world: int = 2, name: str = "rank") -> list[subprocess.Popen]:
    """`world` processes of `python -m distributed.main` on a tiny run (6 steps of 2 images), joined by hand."""
    port, procs = str(free_port()), []
    for rank in range(world):
        env = {**CPU_ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world)}
        cmd = [sys.executable, "-m", "distributed.main", *small_words(run_dir, *CLI, "parallel.timeout_s=30", *words)]
        procs.append(launch(cmd, f"{name}{rank}", env if world > 1 else CPU_ENV))
    return procs


def _finish(procs: list[subprocess.Popen], rc: int) -> None:
    for proc in procs:
        assert proc.wait(timeout=300) == rc, proc.err.read_text()[-3000:]


def _wait_for_output(proc: subprocess.Popen, text: str, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while text not in proc.out.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.err.read_text()[-3000:]
        time.sleep(0.05)


def _folder(path: Path) -> dict[str, float]:
    """Every file under `path` with its modification time: what a run must leave as it was."""
    return {str(f.relative_to(path)): f.stat().st_mtime_ns for f in sorted(path.rglob("*")) if f.is_file()}


# -- a folder holding another run's checkpoints -------------------------------------------------


def test_a_new_run_refuses_a_folder_holding_another_runs_checkpoints(tmp_path, launch):
    """The issue's first scenario: before, the new run wrote step_1, step_2 beside the old run's step_4 and
    pruned its own. Now both ranks stop with exit 2 naming the folder and both ways out, and touch nothing."""
    train(tmp_path, *CLI, "train.max_steps=2", "checkpoint.every_steps=1", "checkpoint.keep=3")
    (tmp_path / "ck" / "step_00000002").rename(tmp_path / "ck" / "step_00000004")  # the old run got further
    before = _folder(tmp_path / "ck")
    _finish(procs := _ranks(launch, tmp_path), 2)
    ck = tmp_path / "ck"
    message = (f"error: checkpoint.dir={ck} holds another run's checkpoints (newest: step_00000004): continue that "
               "run with train.resume=true, or start this one in another checkpoint.dir (and log.dir)")
    for proc in procs:
        assert message in proc.err.read_text().splitlines(), proc.err.read_text()[-3000:]
        assert "Traceback" not in proc.err.read_text()
    assert {k: v for k, v in _folder(ck).items() if k != run_folder.LOCK_FILE} == before


# -- two runs at once, and the lock of a dead one --------------------------------------------------


def test_a_second_live_run_on_the_same_folders_is_refused(tmp_path, launch):
    """Run B (torchrun) starts on run A's folders while A trains: before, both ran to rc 0 into one folder and
    one log.dir. Now B stops before any process group naming A's rank 0, A ends with rc 0 and its own
    checkpoints, and log.dir holds A's events alone."""
    first = _ranks(launch, tmp_path, "data.synthetic_train_images=40", "checkpoint.every_steps=4", "checkpoint.keep=2",
                   name="a")
    _wait_for_output(first[0], "processes:")  # A's group has started: it holds its folders
    second = launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     "-m", "distributed.main", *small_words(tmp_path, *CLI, "train.seed=7")], "b")
    assert second.wait(timeout=120) != 0
    assert first[0].poll() is None, "B should be refused while A still runs"
    refused = [line for line in second.err.read_text().splitlines() if line.startswith("error: ")]
    assert len(refused) == 1, second.err.read_text()[-3000:]
    assert refused[0].startswith(f"error: checkpoint.dir={tmp_path}/ck is in use by another run (pid {first[0].pid} "
                                 f"on {os.uname().nodename}, since ")
    assert refused[0].endswith("): wait for it to end, or give this run another checkpoint.dir")
    _finish(first, 0)
    assert [p.name for p in store.complete(tmp_path / "ck")] == ["step_00000016", "step_00000020"]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1  # A's alone
    assert "final validation" in first[0].out.read_text()


HOLD = """
import os, sys, time
from pathlib import Path
from distributed import layout
from checkpoints.folder import CheckpointFolder
from tests.trainer_runs import small_config
cfg = small_config(Path(sys.argv[1]))
with CheckpointFolder(cfg, layout.plan_from_env(cfg, {})).claim():
    if os.fork() == 0:  # a child that outlives its parent, as a DataLoader worker can
        time.sleep(120)
        os._exit(0)
    print("held", flush=True)
    time.sleep(120)
"""


def test_the_lock_is_released_when_its_holder_dies_even_if_a_forked_child_lives(tmp_path, launch):
    """The lock refuses a live holder, naming it; once the holder is killed (-9, no clean-up), the same folders
    are claimed at once, though the holder's forked child still runs: a stale lock never blocks a restart."""
    holder = launch([sys.executable, "-c", HOLD, str(tmp_path)], "holder")
    _wait_for_output(holder, "held")
    cfg = small_config(tmp_path)
    folder = CheckpointFolder(cfg, layout.plan_from_env(cfg, {}))
    with pytest.raises(UserError, match=rf"checkpoint.dir={tmp_path}/ck is in use by another run \(pid {holder.pid} "):
        with folder.claim():
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with folder.claim():  # the forked child, in the holder's session, is still alive here
        assert (tmp_path / "ck" / run_folder.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
        assert (tmp_path / run_folder.LOCK_FILE).is_file()  # log.dir is locked too


# -- a broken newest checkpoint ------------------------------------------------------------------


def test_resume_sets_a_truncated_newest_checkpoint_aside_and_uses_the_one_before(tmp_path, launch):
    """Rank 1's file of the newest checkpoint cut in half: before, resume failed with tracebacks. Now it is
    named, renamed step_4.broken (not deleted), and both ranks resume from step 2 and finish."""
    _finish(_ranks(launch, tmp_path, "train.max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep=2"), 0)
    newest = tmp_path / "ck" / "step_00000004"
    torn = newest / "shard-00002-model-00001-of-00001.safetensors"  # rank 1's
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    kept = _folder(newest)
    _finish(procs := _ranks(launch, tmp_path, "train.resume=true", "checkpoint.every_steps=2", "checkpoint.keep=2"), 0)
    warning = [line for line in procs[0].err.read_text().splitlines() if line.startswith("warning: checkpoint")]
    assert len(warning) == 1 and warning[0].startswith(
        f"warning: checkpoint {newest} cannot be read: {torn}: not a complete safetensors file (truncated"), warning
    assert warning[0].endswith("; set aside as step_00000004.broken, trying the checkpoint before it")
    assert f"resumed from {tmp_path}/ck/step_00000002 at step 2" in procs[0].out.read_text()
    assert _folder(tmp_path / "ck" / "step_00000004.broken") == kept
    assert [p.name for p in store.complete(tmp_path / "ck")] == ["step_00000004", "step_00000006"]


def test_a_checkpoint_of_another_architecture_is_refused_not_set_aside(trained):
    """Each checkpoint records its model config; resuming with model.lrn=none a checkpoint trained with LRN is
    a user error naming the key and both values, and the checkpoint is not set aside as broken."""
    _, run_dir, words = trained
    newest = store.latest(run_dir / "ck")
    recorded = json.loads((newest / store.MODEL_FILE).read_text())
    assert recorded == dataclasses.asdict(small_config(run_dir, *words).model)
    cfg = small_config(run_dir, *words, "model.lrn=none")
    trainer = Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))
    with pytest.raises(UserError, match=r"model.lrn: 'paper' -> 'none'; give the checkpoint's values"):
        trainer.resume()
    assert store.latest(run_dir / "ck") == newest and trainer.step == 0


@pytest.mark.parametrize("override, difference", [("model.lrn=none", "model.lrn: 'paper' -> 'none'"),
                                                  ("model.towers=1", "model.towers: 2 -> 1"),
                                                  ("model.input_size=224", "model.input_size: 227 -> 224")])
def test_evaluate_refuses_a_checkpoint_of_another_architecture(trained, capfd, override, difference):
    """Before: other numbers, silently (LRN, input size), or a 57-line traceback (towers)."""
    _, _, words = trained
    assert main(["evaluate", *words, override]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: checkpoint ") and difference in err, err[-3000:]
    assert "Traceback" not in err


# -- pruning and duplicate writes ----------------------------------------------------------------


KILLED_PRUNING = """
import os, sys, torch
from checkpoints import store
root = sys.argv[1]
state = {"model": {"w": torch.arange(1000.0)}}
store.save(state, root, 1, keep=1)
unlink = os.unlink
def killed_after_first_removal(path, *args, dir_fd=None, **kwargs):
    unlink(path, *args, dir_fd=dir_fd, **kwargs)
    folder = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.path.dirname(os.fspath(path))
    if folder.endswith("step_00000001"):
        os._exit(9)  # as kill -9: no clean-up of any kind
os.unlink = killed_after_first_removal
store.save(state, root, 2, keep=1)
"""


def test_a_kill_during_pruning_leaves_a_folder_that_is_ignored_and_later_removed(tmp_path):
    """The process dies right after removing the first file of the checkpoint it prunes. Before, rmtree took
    a data file first and left the marker: the half-deleted folder still counted as complete."""
    ck = tmp_path / "ck"
    done = subprocess.run([sys.executable, "-c", KILLED_PRUNING, str(ck)], cwd=ROOT, env=CPU_ENV, timeout=120,
                          capture_output=True, text=True)
    assert done.returncode == 9, done.stderr[-3000:]
    assert (ck / "step_00000001").is_dir()  # killed midway: the folder is still there
    assert [p.name for p in store.complete(ck)] == ["step_00000002"]
    shutil.rmtree(ck / "step_00000002")  # were the newest lost too, nothing half-deleted would be read
    assert store.latest(ck) is None
    store.save({"model": {"w": torch.zeros(1000)}}, ck, 3, keep=1)  # the next save clears the leftover
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000003"]


def test_each_step_is_checkpointed_once_even_when_resumed_at_its_end(tmp_path, monkeypatch):
    """every_steps=2 dividing the 4-step epoch: steps 2 and 4 are not written twice; a run resumed where the last
    one stopped (step 3, nothing left to train) does not write step 3 again (before, it replaced it)."""
    written, save = [], store.save

    def counted(state, folder, step, *rest):
        written.append(step)
        return save(state, folder, step, *rest)

    monkeypatch.setattr(store, "save", counted)
    every = ("checkpoint.every_steps=2", "checkpoint.keep=5", "data.synthetic_val_images=2")
    train(tmp_path, *every, "train.max_steps=3")
    assert written == [2, 3]
    train(tmp_path, *every, "train.max_steps=3", "train.resume=true")
    assert written == [2, 3]
    train(tmp_path, *every, "train.resume=true")
    assert written == [2, 3, 4, 6, 8]
    assert [p.name for p in store.complete(tmp_path / "ck")] == [f"step_0000000{s}" for s in (2, 3, 4, 6, 8)]


# -- Ctrl-C --------------------------------------------------------------------------------------


@pytest.mark.parametrize("world, during", [(2, "save"), (2, "step"), (1, "save"), (1, "step")])
def test_ctrl_c_ends_each_process_with_one_line(tmp_path, launch, world, during):
    """SIGINT to each process's group, as a terminal's Ctrl-C: exit 130 and one line per process, where it
    stopped and the newest complete checkpoint; no traceback, no "could not write", no partial folder left.
    Before, a save interrupted was reported as a failed write with a free-space figure."""
    procs = _ranks(launch, tmp_path, "checkpoint.every_steps=2", "checkpoint.keep=3", world=world)
    ck = tmp_path / "ck"
    if during == "save":
        wait_for(ck / "step_00000002.partial", procs[0])
    else:
        wait_for(ck / "step_00000002", procs[0])
        time.sleep(0.3)  # into step 3
    for proc in procs:
        os.killpg(proc.pid, signal.SIGINT)
    _finish(procs, 130)
    newest = store.latest(ck)
    for rank, proc in enumerate(procs):
        err = proc.err.read_text()
        lines = [line for line in err.splitlines() if line.startswith(f"rank {rank}: ")]
        assert len(lines) == 1 and lines[0].startswith(f"rank {rank}: interrupted at step "), err[-3000:]
        assert lines[0].endswith(f"; newest complete checkpoint: {newest or 'none'} (the same command with "
                                 "train.resume=true continues it)"), err[-3000:]
        assert "Traceback" not in err and "could not write" not in err, err[-3000:]
    assert not list(ck.glob("*.partial"))
    if during == "step":
        assert newest is not None and newest.name >= "step_00000002"
