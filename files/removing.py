"""Removing what the run made, and only that: a link is unlinked, never followed, never recursed into."""

import os
import shutil
import stat
from pathlib import Path
from typing import Sequence

from files.errors import Refused, refusal

# shutil.rmtree walks with file descriptors where the platform has them (Linux: openat, O_NOFOLLOW,
# unlinkat; `shutil.rmtree.avoids_symlink_attacks`), so no link inside a folder being removed is
# followed; tests/unit/test_files.py checks that it still holds.


def remove(path: str | os.PathLike, first: Sequence[str] = ()) -> bool:
    """Remove the entry `path`: a file or a link is unlinked (a link's target is untouched), a folder is
    removed with everything in it. `first`: names inside the folder to unlink before the rest (a
    completeness mark, so a kill midway leaves a folder that no longer counts). False if nothing was there."""
    target = Path(path)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return False
    except OSError as err:
        raise refusal(target, err, "remove") from None
    try:
        if not stat.S_ISDIR(mode):
            os.unlink(target)
            return True
        if first:
            _unlink_inside(target, first)
        shutil.rmtree(target)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise Refused(target, f"cannot be removed ({err.strerror or err})") from None
    return True


def _unlink_inside(folder: Path, names: Sequence[str]) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in names:
            try:
                os.unlink(name, dir_fd=fd)
            except (FileNotFoundError, IsADirectoryError):
                pass  # not there, or a folder: rmtree takes it with the rest
    finally:
        os.close(fd)
