"""The folders a run writes, claimed before any process group (checkpoints/folder.py `CheckpointFolder.claim`):
every process proves it can write each one with a probe file, and rank 0 holds a lock on its `.lock` for the
run's life, so a second live run on the same folders is refused (docs/ARCHITECTURE.md, "Checkpoints")."""

import os
import secrets
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from config.errors import UserError
from files import Busy, Refused, create_root, lock, remove, write_atomic

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
def claim(folders: dict[str, str], lock_them: bool) -> Iterator[None]:
    """Probe each folder (by the key that names it) and, when `lock_them`, lock them while the block runs."""
    for key, folder in folders.items():
        probe(folder, key)
    held = []
    try:
        if lock_them:
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
