"""Shared test fixtures: thread count, a fresh compiler, and commands launched in their own session."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def fresh_compiler():
    """Compiled code is cached per Python function across tests: a test that counts graphs compiles its own."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def launch(tmp_path):
    """Start a command in its own session, output to files; whatever is left of it is killed at the end."""
    from tests.processes import CPU_ENV

    started: list[subprocess.Popen] = []

    def start(cmd: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        out, err = open(tmp_path / f"{name}.out", "w"), open(tmp_path / f"{name}.err", "w")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or CPU_ENV, stdout=out, stderr=err, start_new_session=True)
        proc.out, proc.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(trainer, run dir, the override words that name its config) after a two-step run, shared by
    the tests of what a trained net is used for."""
    from tests.trainer_runs import small_config, small_words, start
    from training.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("run")
    words = small_words(run_dir, "train.max_steps=2", "train.epochs=1", "data.synthetic_val_images=4")
    cfg = small_config(run_dir, *words)
    trainer = Trainer(cfg, start(cfg))
    trainer.run()
    return trainer, run_dir, words
