"""Past two processes, and through faults: 2x2 layouts, killed and stalled workers, torn checkpoints, bad input, NaN."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from data.augment import Augmenter
from distributed import checkpoint, layout
from distributed.config import ConfigError, load_config
from distributed.trainer import NonFiniteLoss, Trainer
from tests.conftest import ROOT, free_port, run_workers
from tests.trainer_runs import SMALL, weights_and_velocity

# Everything random removed but the crops, which test_replicas_match_one_process_with_the_whole_batch
# makes the centre crop: crops are drawn per (step, replica), so 2 replicas of b and 1 of 2b draw different ones.
DETERMINISTIC = ["model.dropout=0", "data.pca_std=0", "data.flip=false", "train.batch_size=4", "train.max_steps=3",
                 "data.synthetic_val_images=4"]


def _small(run_dir: Path, *overrides: str):
    """trainer_runs.SMALL with some of its keys replaced (it refuses a key given twice)."""
    keys = {o.partition("=")[0] for o in overrides}
    kept = [o for o in SMALL if o.partition("=")[0] not in keys]
    return load_config([ROOT / "config.yaml"], [*kept, f"log.dir={run_dir}", f"checkpoint.dir={run_dir}/ck", *overrides])


def train(run_dir: Path, *overrides: str) -> Trainer:
    """trainer_runs.train, with smaller batches."""
    cfg = _small(run_dir, *overrides)
    trainer = Trainer(cfg, layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s))
    trainer.run()
    return trainer


# A tiny run through `python -m distributed.main`, for the subprocess tests: 6 steps of 2 images.
CLI = [o for o in SMALL if not o.startswith(("train.batch_size", "train.epochs", "data.synthetic"))] + [
    "train.batch_size=2", "train.epochs=1", "data.synthetic_train_images=12", "data.synthetic_val_images=2",
    "checkpoint.keep=1"]


def _centre_crop(self: Augmenter, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    return self.centre(images)


def _two_by_two(rank: int, world: int, run_dir: str, out: str) -> None:
    Augmenter.train = _centre_crop  # a fresh worker process: nothing to undo
    trainer = train(Path(run_dir), *DETERMINISTIC)
    assert (trainer.plan.replicas, trainer.plan.tower_processes, trainer.replica_batch) == (2, 2, 2)
    torch.save(weights_and_velocity(trainer), f"{out}/rank{rank}.pt")


def test_replicas_match_one_process_with_the_whole_batch(tmp_path, monkeypatch):
    """2 replicas x 2 towers, 2 images each, follow 1 process taking all 4 images."""
    monkeypatch.setattr(Augmenter, "train", _centre_crop)
    one = weights_and_velocity(train(tmp_path / "one", *DETERMINISTIC))
    run_workers(4, _two_by_two, str(tmp_path / "four"), str(tmp_path), init=False)
    for rank in range(4):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == {k for k in one if f"towers.{rank % 2}." in k}
        for key, value in got.items():
            torch.testing.assert_close(value, one[key], rtol=1e-4, atol=1e-6, msg=key)


# -- processes that die -----------------------------------------------------------------------


def _children(parent: int) -> list[int]:
    """Pids of `parent`'s child processes running distributed.main (scanned from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"distributed.main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not path.is_dir():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path.name} after {limit_s}s"
        time.sleep(0.05)


def _torchrun(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
            "-m", "distributed.main", *CLI, "checkpoint.every_steps=3", "parallel.timeout_s=30", f"log.dir={run_dir}", f"checkpoint.dir={run_dir}/ck"]


def _final_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, read in this one process without a process group."""
    flat = path.parent / f"{path.name}.pt"
    dcp_to_torch_save(path, flat)
    state = torch.load(flat, weights_only=True)
    return {f"{group}/{name}": value for group, entries in state.items() for name, value in entries.items()}


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_killed_worker_restarts_and_finishes_bitwise_equal(tmp_path):
    """kill -9 of one worker after checkpoint 3 under --max-restarts=1: the run resumes and ends where an uninterrupted one does."""
    whole = subprocess.run(_torchrun(tmp_path / "whole"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = subprocess.Popen(_torchrun(tmp_path / "killed", "--max-restarts=1"), cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "killed" / "ck" / "step_00000003", proc)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in out and "at step 3" in out, out
    a = _final_state(checkpoint.latest(tmp_path / "whole" / "ck"))
    b = _final_state(checkpoint.latest(tmp_path / "killed" / "ck"))
    assert checkpoint.latest(tmp_path / "killed" / "ck").name == "step_00000006"
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _pair(run_dir: Path, *overrides: str) -> list[subprocess.Popen]:
    """Two ranks of `python -m distributed.main` joined by hand (no torchrun agent to stop the survivor)."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}
        cmd = [sys.executable, "-m", "distributed.main", *CLI, "checkpoint.every_steps=2", "parallel.timeout_s=10",
               f"log.dir={run_dir}", f"checkpoint.dir={run_dir}/ck", *overrides]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.parametrize("how", ["kill", "stall"])
def test_survivor_names_rank_and_step_within_the_timeout(tmp_path, how):
    """One of two ranks dies (kill -9) or stalls (SIGSTOP) after checkpoint 2; the other stops within parallel.timeout_s."""
    procs = _pair(tmp_path)
    try:
        _wait_for(tmp_path / "ck" / "step_00000002", procs[0])
        os.kill(procs[1].pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        start = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 1, err[-3000:]
    assert took < 10 + 5
    if how == "stall":
        assert took > 5  # it waited for the stalled peer rather than failing at once
    line = [l for l in err.splitlines() if "peer lost" in l]
    assert line and line[0].startswith("rank 0: peer lost at step "), err[-3000:]
    assert int(line[0].split("at step ")[1].split(":")[0]) >= 2
    assert checkpoint.latest(tmp_path / "ck") is not None


# -- checkpoints torn mid-write ---------------------------------------------------------------


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = _small(tmp_path)
    trainer = Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))
    trainer.step = 1
    trainer.save()
    saved = weights_and_velocity(trainer)
    # A crash halfway through writing step 2: some files are there, the rename never happens.
    real_save = dcp.save

    def torn_save(state, checkpoint_id):
        real_save({"model": state["model"]}, checkpoint_id=checkpoint_id)
        raise OSError("disk gone")

    monkeypatch.setattr(dcp, "save", torn_save)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1)
    trainer.step = 2
    with pytest.raises(OSError, match="disk gone"):
        trainer.save()
    # Also garbage left by another crash, and a complete-looking folder name without its metadata.
    (tmp_path / "ck" / "step_00000003.partial").mkdir()
    (tmp_path / "ck" / "step_00000003.partial" / ".metadata").write_bytes(b"garbage")
    (tmp_path / "ck" / "step_00000004").mkdir()
    assert (tmp_path / "ck" / "step_00000002.partial").is_dir()
    assert checkpoint.latest(tmp_path / "ck").name == "step_00000001"
    monkeypatch.undo()
    assert trainer.resume()
    assert trainer.step == 1
    for key, value in weights_and_velocity(trainer).items():
        assert torch.equal(value, saved[key]), key


# -- bad input ---------------------------------------------------------------------------------


def _main(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distributed.main", *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("root, message", [
    ("/nonexistent", "data.root=/nonexistent: no such folder"),
    ("EMPTY", "data.root=EMPTY: no packed dataset (the folder is empty)"),
])
def test_missing_or_empty_data_root_fails_before_the_process_group(tmp_path, root, message):
    root = root.replace("EMPTY", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    message = message.replace("EMPTY", str(tmp_path / "empty"))
    # WORLD_SIZE=2 with no rendezvous address: joining a process group would fail or hang, so
    # a clean config error proves the check ran before it.
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    proc = _main(f"data.root={root}", "train.device=cpu", env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"config error: {message}" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("parallel.timeout_s=soon", "parallel.timeout_s: expected float"),
    ("parallel.timeout_s=0", "parallel.timeout_s=0.0: must be positive"),
    ("checkpoint.every_steps=-1", "checkpoint.every_steps=-1: must be at least 0"),
    ("train.micro_batches=0", "train.micro_batches=0: must be at least 1"),
    ("train.max_steps=2.5", "train.max_steps: expected int"),
    ("parallel.timeout=5", "unknown config key parallel.timeout"),
])
def test_bad_values_test_config_does_not_cover(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config([ROOT / "config.yaml"], [override])


def test_torchrun_refuses_a_batch_replicas_cannot_share_on_every_rank(tmp_path):
    """4 processes = 2 replicas; batch 6 over 2 replicas x 2 micro-batches: every rank exits 2 before any group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
           "distributed.main", "train.device=cpu", "train.batch_size=6", "train.micro_batches=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    message = "config error: train.batch_size=6 is not divisible by 2 replica(s) x train.micro_batches=2"
    assert proc.stderr.count(message) == 4, proc.stderr[-3000:]


def test_odd_world_size_is_refused_by_the_entry_point():
    env = {**ENV, "WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}
    proc = _main("train.device=cpu", env=env)
    assert proc.returncode == 2
    assert "config error: world size 3: one tower per process needs 1, 2 or an even number" in proc.stderr


# -- NaN ---------------------------------------------------------------------------------------


def test_absurd_learning_rate_stops_with_the_last_good_checkpoint(tmp_path):
    """lr=1e6: step 1's loss is finite, step 2's is not; the run stops there and checkpoint 1 loads, all finite."""
    with pytest.raises(NonFiniteLoss, match=r"training loss became nan by step 2 \(rank 0\); stopped, the last good"):
        train(tmp_path, "train.lr=1e6", "checkpoint.every_steps=1", "train.batch_size=2", "train.max_steps=6",
              "data.synthetic_val_images=2")
    last = checkpoint.latest(tmp_path / "ck")
    assert last.name == "step_00000001"
    state = _final_state(last)
    assert int(state["progress/step"]) == 1
    weights = {k: v for k, v in state.items() if not k.startswith("progress/")}  # progress/best starts at inf
    assert {k.split("/")[0] for k in weights} == {"model", "velocity"}
    assert all(torch.isfinite(v).all() for v in weights.values())
