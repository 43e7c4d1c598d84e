"""The CPU kernel of model/csrc/lrn.cpp, compiled at first use (torch.utils.cpp_extension.load, ninja).

Built once per machine into the git-ignored `.cache/lrn_extension/`, in a folder named by the torch and
Python versions and the source's hash, so a changed source or another torch builds afresh rather than
loading a stale library. Processes that start at once (the two tower processes, parallel tests) take a
file lock: one builds, the others wait and load what it built. Where nothing can be built (no compiler,
no ninja: the GPU image) `extension()` says why once and returns None, and model/lrn.py runs the
pure-torch twin instead.
"""

import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "lrn.cpp"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "lrn_extension"
FLAGS = ["-O3", "-fopenmp", "-fno-math-errno"]
"""-fopenmp: at::parallel_for is OpenMP inside torch's headers; -fno-math-errno: std::sqrt may then vectorise."""


def build_folder() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return CACHE / f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{digest}"


@functools.cache
def extension():
    """The compiled module (`forward`, `backward`), or None where it cannot be built (said once, as a warning)."""
    try:
        return _load()
    except Exception as err:  # no compiler, no ninja, a failed build: the twin computes the same numbers
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
        warnings.warn(f"LRN: the C++ kernel could not be built ({reason}); using the pure-torch twin "
                      "(model/lrn_twin.py)", RuntimeWarning, stacklevel=2)
        return None


def _load():
    # Importing cpp_extension logs a guess at CUDA's location on a machine without CUDA: irrelevant to a CPU build.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)

    if importlib.util.find_spec("ninja") is not None:  # the pinned PyPI ninja, wherever the venv's bin is
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    folder = build_folder()
    folder.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS if this process dies mid-build
        # torch's own lock file, left behind by a build that was killed, would make load() wait forever;
        # holding ours, no other process is building here.
        (folder / "lock").unlink(missing_ok=True)
        return cpp_extension.load(
            name="alexnet_lrn", sources=[str(SOURCE)], build_directory=str(folder),
            extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False,
        )
