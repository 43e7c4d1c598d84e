"""Shared test helpers: start gloo worker processes on CPU."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, init: bool, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    if init:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(world: int, fn, *args, init: bool = True) -> None:
    """Run fn(rank, world, *args) in `world` gloo processes, as torchrun would set them up.

    fn must be importable (module level). With init=False the process group is left to
    fn (the trainer joins it itself from the environment).
    """
    mp.spawn(_worker, args=(world, free_port(), init, fn, args), nprocs=world, join=True)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


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
