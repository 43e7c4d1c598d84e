"""One lock: a POSIX record lock (fcntl.lockf) on a regular file in a folder the run owns.

The kernel drops it when its process dies, so a killed run leaves nothing that blocks the next;
and unlike flock it is not inherited by forked children (DataLoader workers, packing processes),
which could outlive a killed holder and keep the lock. The price of POSIX locks: a process loses
its lock on a file when it closes any descriptor of that file, so each lock has a file of its own,
opened only here, and a second lock of a file this process holds is refused before it is opened. The
lock file is opened without following a link and without blocking, and
refused unless it is a regular file: a link planted in a folder someone handed over is never
truncated through.
"""

import errno
import fcntl
import os
from pathlib import Path

from files.errors import Busy, Refused
from files.reading import open_fd

_held: dict[tuple[int, int], Path] = {}
"""(device, inode) of each lock file this process holds: opening one again, even to look, would drop its lock."""
os.register_at_fork(after_in_child=_held.clear)  # a forked child holds none of its parent's locks


class Lock:
    """A held lock; released by `release`, by leaving its `with` block, or when the process ends."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path
        info = os.fstat(fd)
        self.key = (info.st_dev, info.st_ino)
        _held[self.key] = path

    def release(self) -> None:
        if self.fd >= 0:
            _held.pop(self.key, None)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock(path: str | os.PathLike, *, wait: bool = False, note: str = "") -> Lock:
    """Lock the file `path` (created if missing) for this process: Busy, naming what its holder wrote,
    if another process holds it and not `wait`; with `note`, the file then says who holds it."""
    target = Path(path)
    try:
        info = os.stat(target, follow_symlinks=False)
        if (info.st_dev, info.st_ino) in _held:
            raise Refused(target, f"already locked by this process (as {_held[info.st_dev, info.st_ino]}); "
                                  "give each use a folder of its own")
    except FileNotFoundError:
        pass
    fd = open_fd(target, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, "create a lock file in")
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise Busy(target, os.pread(fd, 512, 0).decode(errors="replace").strip()) from None
            raise Refused(target, f"cannot be locked ({err.strerror}): give a folder on a file system with "
                                  "locks (NFS needs its lock manager)") from None
        if note:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return Lock(fd, target)
