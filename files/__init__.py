"""The one way a run touches files: every reader and writer of the project goes through these primitives.

Anything a user is handed (a checkpoint folder, a pack, weights, an image, a config) may have
been made by someone hostile, so the rules are written once, here, instead of in each reader:

- Reading opens a file without blocking and proves it a regular file before a byte is read
  (`open_regular`): a named pipe, a device such as /dev/zero, a socket or a folder is refused,
  naming it. A read is bounded by what the format declares and a stated limit, checked before
  reading (`read_capped`, `read_json`, `read_torch`, `map_npy`). Reading may follow a link: what
  it reaches is checked the same way, and reading changes nothing.
- Writing and removing happen only inside folders the run owns, and never through a link
  (`replacing`, `write_atomic`, `atomic_path`, `atomic_folder`, `make_folder`, `rename`, `remove`, `lock`):
  a file is written under a temporary name created exclusively (O_EXCL | O_NOFOLLOW), synced,
  and renamed over its final name relative to its folder's descriptor, so a link planted under
  either name is replaced, never written through; a link where a folder is expected is refused
  or unlinked, never recursed into. The folders a user names (checkpoint.dir, log.dir, --out's
  folder) are taken as named, links included: that choice is the user's.
- A lock (`lock`) is never waited for past its deadline (`wait_s`), then refused naming its
  holder (its note, or the pid the kernel tells); its file is written only when it is a regular file of one name, never through a
  symbolic or a hard link.

Every refusal is a `Refused` (a ValueError) whose message names the file; the programs turn it
into one line and exit status 2. This package imports nothing of the project's, so data/ and
config/ can use it.
"""

from files.errors import Busy, Refused
from files.locking import Lock, lock
from files.reading import map_npy, open_regular, read_capped, read_json, read_torch
from files.removing import remove
from files.writing import atomic_folder, atomic_path, create_root, make_folder, rename, replacing, write_atomic

__all__ = [
    "Busy", "Lock", "Refused", "atomic_folder", "atomic_path", "create_root", "lock", "make_folder", "map_npy",
    "open_regular", "read_capped", "read_json", "read_torch", "remove", "rename", "replacing", "write_atomic",
]
