"""A run owns its folders: checkpoint.dir and log.dir are proven writable, locked, and never another run's.

- Before any process group (`claim`): every process proves it can write checkpoint.dir (each
  writes its own .distcp files), and rank 0 log.dir (only it writes events), by writing a probe
  file the way every file is written (files.write_atomic: created exclusively, never through a
  link, synced, renamed) and removing it. An unwritable folder is a UserError there, not a
  traceback at the first save an epoch later.
- Rank 0 then holds a lock on `.lock` in each folder for the run's life, so a second live run on
  the same folders is refused (files.lock: a POSIX record lock, dropped by the kernel when its
  process dies and not inherited by the DataLoader's forked workers). A `.lock` that is not a
  regular file of its own, a symbolic or hard link planted in a folder someone handed over say, is
  refused, never truncated or written through.
- A run that does not resume (`resumes`: train.resume=false and no process restarted) refuses a
  checkpoint.dir that already holds a complete checkpoint: it is another run's, and pruning by
  step number would delete this run's checkpoints instead of it.
- `check_unclaimed` checks all of that in one process before any is started (./run.sh's launcher),
  taking the locks and releasing them at once; each process still checks for itself.
- Resuming takes the newest complete checkpoint that loads (`load_newest`): one that cannot be
  read is renamed step_N.broken (never deleted), named with the reason, and the one before it is
  tried. A checkpoint of another architecture is not broken: that is the user's error.
"""

import os
import secrets
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from checkpoints import store
from config.errors import UserError
from config.schema import Config
from distributed.layout import Plan
from distributed.reductions import any_process
from files import Busy, Refused, create_root, lock, remove, write_atomic
from model.config import ModelConfig

LOCK_FILE = ".lock"


def probe(folder: str | Path, key: str) -> None:
    """Create `folder` if needed, then write a file in it as every file is written (created, synced, renamed)
    and remove it, or raise a UserError naming `key`. The probe's name is this process's own and new, so
    processes sharing the folder do not collide and nothing placed ahead of it is touched."""
    trial = Path(folder) / f".probe-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        create_root(folder, key)
        write_atomic(trial, bytes(4096))  # synced: a full disk or a quota can only show once the bytes reach it
        remove(trial)
    except (OSError, Refused) as err:
        why = err.why if isinstance(err, Refused) else err.strerror or err
        raise UserError(f"{key}={folder} cannot be written ({why}): make it writable, or give another {key}") from None


@contextmanager
def claim(cfg: Config, plan: Plan) -> Iterator[None]:
    """Probe the run's folders and, on rank 0, lock them while the block runs: call before any process group."""
    folders = {"checkpoint.dir": cfg.checkpoint.dir}
    if plan.logs:
        folders["log.dir"] = cfg.log.dir
    for key, folder in folders.items():
        probe(folder, key)
    held = []
    try:
        if plan.rank == 0:
            locked = set()
            for key, folder in folders.items():
                where = Path(folder).resolve()
                if where not in locked:  # one folder for both: a second lock of it would release the first
                    held.append(_lock(where / LOCK_FILE, key, folder))
                    locked.add(where)
        yield
    finally:
        for taken in held:
            taken.release()


def _lock(path: Path, key: str, folder: str):
    """The lock on `path`, which then names this process; a UserError if another live process holds it
    or it cannot be taken."""
    note = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    try:
        return lock(path, note=note)
    except Busy as err:
        raise UserError(f"{key}={folder} is in use by another run ({err.holder}): wait for it to "
                        f"end, or give this run another {key}") from None
    except Refused as err:
        raise UserError(f"{key}={folder}: {err}") from None


def resumes(cfg: Config, plan: Plan) -> bool:
    """Whether this run continues from checkpoint.dir: train.resume, or torchrun restarted a process.
    A run that does not refuses a checkpoint.dir that holds a complete checkpoint, on every process.

    A machine whose agent was lost and is started again counts its workers' restarts from 0 while
    the survivors' agents count 1, so the processes agree by a MAX over all of them: every process
    resumes, or none. That needs the process group, so this runs after it starts."""
    if cfg.train.resume or any_process(plan.restarts > 0, plan.device):
        return True
    newest = store.latest(cfg.checkpoint.dir)
    if any_process(newest is not None, plan.device):
        raise _another_run(cfg, newest)
    return False


def _another_run(cfg: Config, newest: Path | None) -> UserError:
    found = f" (newest: {newest.name})" if newest else ""
    return UserError(f"checkpoint.dir={cfg.checkpoint.dir} holds another run's checkpoints{found}: continue that run "
                     "with train.resume=true, or start this one in another checkpoint.dir (and log.dir)")


def check_unclaimed(cfg: Config, plan: Plan) -> None:
    """What `claim` and `resumes` refuse, checked for rank 0 of `plan` before any process starts: the folders
    writable and not held by a live run (the locks taken and released), and, unless resuming, no other run's
    checkpoints; resuming, the newest checkpoint of this architecture (one that cannot be read is left to the
    run, which sets it aside)."""
    with claim(cfg, plan):
        pass
    newest = store.latest(cfg.checkpoint.dir)
    if newest is None:
        return
    if not cfg.train.resume:
        raise _another_run(cfg, newest)
    try:
        store.check_model(newest, cfg.model)
    except store.BrokenCheckpoint:
        pass


def load_newest(
    make_state: Callable[[], dict], directory: str | Path, model: ModelConfig, device: torch.device
) -> tuple[Path, dict] | None:
    """(path, state) of the newest complete checkpoint in `directory` that loads on every process into
    make_state()'s tensors; None when there is none. Every process takes the same decision on each,
    so none trains on while a peer gave up. When every one is broken the run stops: a failed read
    may have filled some tensors already, so they no longer hold the run's starting point."""
    aside = []
    for path in reversed(store.complete(directory)):
        state, broken = make_state(), None
        try:
            store.load(state, path, model)
        except store.BrokenCheckpoint as err:
            broken = err
        if not any_process(broken is not None, device):
            return path, state
        aside.append(path.name)
        if not dist.is_initialized() or dist.get_rank() == 0:
            moved = store.set_aside(path)
            reason = broken or f"checkpoint {path} failed to load on another process"
            print(f"warning: {reason}; set aside as {moved.name}, trying the checkpoint before it",
                  file=sys.stderr, flush=True)
    if aside:
        raise UserError(f"no checkpoint in checkpoint.dir={directory} loads ({', '.join(aside)} set aside as "
                        "*.broken): run again to start from step 0, or put back a good copy")
    return None
