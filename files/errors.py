"""What the file primitives refuse with."""

import errno
import os
import stat


class Refused(ValueError):
    """A file the run will not read, or a place it will not write; the message names the file and why.

    A ValueError, as the data readers' other refusals are (packs.prepare and check_data catch those)."""

    def __init__(self, path: str | os.PathLike, why: str) -> None:
        super().__init__(f"{os.fsdecode(path)}: {why}")
        self.path, self.why = path, why


class Busy(Refused):
    """A lock another live process holds: `holder` names it, by what it wrote in the lock file or else by the pid
    the kernel tells (`pid`, None if unknown); `waited_s`, how long this process waited for it."""

    def __init__(self, path: str | os.PathLike, note: str, pid: int | None = None, waited_s: float = 0.0) -> None:
        self.holder, self.pid = note or (f"pid {pid}" if pid else "starting"), pid
        waited = f" and still held after {waited_s:g} s: is it stopped or stuck?" if waited_s else ""
        super().__init__(path, f"locked by another process ({self.holder}){waited}")


KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFDIR: "a folder", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def kind(mode: int) -> str:
    """What a file of `mode` is, in words."""
    return KINDS.get(stat.S_IFMT(mode), "a regular file" if stat.S_ISREG(mode) else "not a regular file")


def refusal(path: str | os.PathLike, err: OSError, doing: str) -> Refused:
    """An OSError of `doing` (open, create, rename...) on `path`, as one line naming the file."""
    why = {
        errno.ELOOP: "a symbolic link, never followed here: remove it",
        errno.ENXIO: "a socket or a device without a reader, not a regular file",
        errno.ENOENT: "no such file or folder",
        errno.EISDIR: "a folder, not a file",
        errno.ENOTDIR: "a path through something that is not a folder",
    }.get(err.errno, f"cannot {doing} it ({err.strerror or err})")
    return Refused(path, why)
