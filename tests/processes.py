"""Helpers for tests that launch whole runs as separate processes (torchrun agents, killed workers)."""

import os
import subprocess
import time
from pathlib import Path

import torch

from checkpoints import shards, store
from checkpoints.tensor_file import DTYPE_NAMES

CPU_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
"""A launched run's environment: one thread per process, as the in-process workers use."""


def children(parent: int) -> list[int]:
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


def wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 300) -> None:
    """Wait until the folder `path` exists, failing if `proc` ends first or the limit passes."""
    deadline = time.monotonic() + limit_s
    while not path.is_dir():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path.name} after {limit_s}s"
        time.sleep(0.05)


def final_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors as `group/name` (model/towers.0.fc6.weight), read in this one process without a
    process group, through the project's checked reader, whatever layout wrote it."""
    dtypes = {name: dtype for dtype, name in DTYPE_NAMES.items()}
    entries = shards.check(path, {}, 2**32)  # DCP's flat names: model.towers.0.fc6.weight
    state = {fqn: torch.empty(shape, dtype=dtypes[dtype]) for fqn, (dtype, shape) in entries.items()}
    store.load(state, path)
    return {fqn.replace(".", "/", 1): value for fqn, value in state.items()}
