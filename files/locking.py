"""One lock: a POSIX record lock (fcntl.lockf) on a regular file of its own in a folder the run owns, waited
for `wait_s` seconds at most, then `Busy` naming its holder; the file is never opened through a link
(why lockf, and its price: docs/ARCHITECTURE.md, "Files")."""

import errno
import fcntl
import os
import struct
import time
from pathlib import Path

from files.errors import Busy, Refused
from files.reading import open_fd

_held: dict[tuple[int, int], Path] = {}
"""(device, inode) of each lock file this process holds: opening one again, even to look, would drop its lock."""
os.register_at_fork(after_in_child=_held.clear)  # a forked child holds none of its parent's locks

_FLOCK = "hhqqi"
"""struct flock on Linux (l_type, l_whence, l_start, l_len, l_pid), padded to 32 bytes below."""
_POLL_S = (0.05, 1.0)
"""First and longest pause between two tries of a lock being waited for."""


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


def lock(path: str | os.PathLike, *, wait_s: float = 0.0, note: str = "") -> Lock:
    """Lock the file `path` (created if missing) for this process, waiting at most `wait_s` seconds while
    another process holds it; then Busy, naming the holder. With `note`, the file then says who holds it."""
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
        names = os.fstat(fd).st_nlink
        if names > 1:  # a hard link: the note would be written into another file
            raise Refused(target, f"a hard link ({names} names for one file), not a lock file of this run's own; "
                                  "remove it")
        _take(fd, target, wait_s)
        if note:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return Lock(fd, target)


def _take(fd: int, target: Path, wait_s: float) -> None:
    """The lock on `fd`, tried until `wait_s` seconds have passed."""
    deadline, pause = time.monotonic() + wait_s, _POLL_S[0]
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise Refused(target, f"cannot be locked ({err.strerror}): give a folder on a file system with "
                                      "locks (NFS needs its lock manager)") from None
        left = deadline - time.monotonic()
        if left <= 0:
            raise Busy(target, os.pread(fd, 512, 0).decode(errors="replace").strip(), _holder(fd), wait_s)
        time.sleep(min(pause, left))
        pause = min(2 * pause, _POLL_S[1])


def _holder(fd: int) -> int | None:
    """The pid of the process holding a lock on `fd`'s file, as the kernel tells it (None if it has just let go)."""
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    query += bytes(32 - len(query))
    kind, _, _, _, pid = struct.unpack_from(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None
