"""Writing inside a folder the run owns: whole files or nothing, and never through a link. A file is written as
`NAME.partial` (created exclusively, no link followed, relative to the folder's descriptor), fsynced, then
renamed over NAME; on any failure the partial file is removed (docs/ARCHITECTURE.md, "Files")."""

import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from files.errors import Refused, kind, refusal
from files.removing import remove

PARTIAL = ".partial"


@contextmanager
def _folder(path: Path) -> Iterator[int]:
    """A descriptor of the folder `path` is in (as its name leads there: a folder the user named or the run made)."""
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise Refused(path, f"its folder {path.parent} cannot be written into ({_why(err)})") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _why(err: OSError) -> str:
    return "it does not exist" if isinstance(err, FileNotFoundError) else err.strerror or str(err)


def _create(name: str, folder: int, where: Path) -> int:
    """A new, empty file `name` in the folder `folder`, after unlinking whatever entry had that name."""
    try:
        os.unlink(name, dir_fd=folder)  # a leftover or a planted link: the entry goes, never its target
    except FileNotFoundError:
        pass
    except OSError as err:  # a folder under that name
        raise refusal(where, err, "replace") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, 0o644, dir_fd=folder)
    except OSError as err:
        raise refusal(where, err, "create") from None


def _commit(partial: str, name: str, folder: int, target: Path) -> None:
    try:
        os.replace(partial, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as err:
        raise refusal(target, err, "replace") from None
    os.fsync(folder)  # the rename itself, durable


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A file object whose bytes replace `path` whole when the block ends without an error (see the module
    doc); nothing of them is left anywhere when it raises."""
    target = Path(path)
    partial = target.name + PARTIAL
    with _folder(target) as folder:
        if _is_folder(target.name, folder):
            raise Refused(target, "a folder; give the name of a file to write")
        out = os.fdopen(_create(partial, folder, target.with_name(partial)), "wb")
        try:
            with out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            _commit(partial, target.name, folder, target)
        except BaseException:
            _unlink_quietly(partial, folder)
            raise


def write_atomic(path: str | os.PathLike, data: bytes | bytearray | str) -> None:
    """Replace `path` by `data` (text is written as UTF-8) whole, never through a link."""
    with replacing(path) as out:
        out.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """For a library that writes by file name (safetensors, torch.onnx): the name of a fresh, empty,
    exclusively created file beside `path`, renamed over `path` when the block ends, removed if it raises.

    The library opens that name itself, so this holds against a link handed over with the folder (the
    name is made new here), not against someone racing the run in its own folder."""
    target = Path(path)
    partial = target.name + PARTIAL
    with _folder(target) as folder:
        if _is_folder(target.name, folder):
            raise Refused(target, "a folder; give the name of a file to write")
        fd = _create(partial, folder, target.with_name(partial))
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        try:
            yield target.with_name(partial)
            fd = os.open(partial, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            try:
                # safetensors replaces the name by a private (0600) file of its own: the file gets back the
                # mode every file the project writes has (0644 less the umask), so whoever it is for can read it.
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            _commit(partial, target.name, folder, target)
        except BaseException:
            _unlink_quietly(partial, folder)
            raise


@contextmanager
def atomic_folder(path: str | os.PathLike, suffix: str = PARTIAL) -> Iterator[Path]:
    """A new folder `path` + `suffix` to fill, renamed to `path` when the block ends; removed (never followed)
    if it raises. What a killed writer left under that name is removed first. `path` itself must not exist."""
    target = Path(path)
    building = target.with_name(target.name + suffix)
    remove(building)
    make_folder(building)
    try:
        yield building
        rename(building, target)
    except BaseException:
        remove(building)
        raise


def rename(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the entry `source` to `target` in the same folder the run owns (a finished folder to its final name,
    a broken checkpoint aside). rename(2) moves and replaces entries themselves, never what a link leads to:
    a link at `source` moves as a link; a link at `target` is unlinked first (rename(2) would not put a folder
    in its place), a file there is replaced, a folder only if empty."""
    try:
        if os.path.islink(target):
            os.unlink(target)
        os.rename(source, target)
    except OSError as err:
        raise refusal(target, err, f"rename {source} to") from None
    return Path(target)


def make_folder(path: str | os.PathLike) -> Path:
    """The folder `path` inside one the run owns, made if missing: a link (or a file) under that name is
    refused, never followed, so nothing is written through it."""
    target = Path(path)
    try:
        os.mkdir(target)
    except FileExistsError:
        mode = os.lstat(target).st_mode
        if not stat.S_ISDIR(mode):
            raise Refused(target, f"{kind(mode)} where this run keeps a folder of its own; remove it") from None
    except OSError as err:
        raise refusal(target, err, "create") from None
    return target


def create_root(path: str | os.PathLike, key: str = "") -> Path:
    """A folder the user named (checkpoint.dir, log.dir, a pack's DST), made with its parents if missing.
    Taken as named, links included: where it leads is the user's choice (`key` names the setting)."""
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise Refused(target, f"{'the ' + key + ' ' if key else ''}exists and is not a folder") from None
    except OSError as err:
        raise refusal(target, err, "create") from None
    return target


def _is_folder(name: str, folder: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _unlink_quietly(name: str, folder: int) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except OSError:
        pass  # already gone, or the error being raised says more
