"""The one way a run touches files: every reader and writer of the project goes through these primitives.
Reading proves a file regular before a byte is read and is bounded; writing and removing happen only inside
folders the run owns, never through a link; a lock is never waited for past its deadline. Every refusal is a
`Refused` naming the file. This package imports nothing of the project's (the rules and why:
docs/ARCHITECTURE.md, "Files")."""

from files.errors import Busy, Refused
from files.locking import Lock, lock
from files.reading import map_npy, open_regular, read_capped, read_json, read_torch
from files.removing import remove
from files.writing import atomic_folder, atomic_path, create_root, make_folder, rename, replacing, write_atomic

__all__ = [
    "Busy", "Lock", "Refused", "atomic_folder", "atomic_path", "create_root", "lock", "make_folder", "map_npy",
    "open_regular", "read_capped", "read_json", "read_torch", "remove", "rename", "replacing", "write_atomic",
]
