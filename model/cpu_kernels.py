"""The project's C++ CPU kernels (model/csrc/: LRN, and the paper's SGD update), compiled at first use
(torch.utils.cpp_extension.load, with ninja) into one module.

Built once per machine into the git-ignored `.cache/cpu_kernels/`, in a folder named by the torch and
Python versions and a hash of the sources and flags, so a changed source or another torch builds afresh
rather than loading a stale library. Processes that start at once (the two tower processes, parallel
tests) take a file lock (files.lock, the program's one lock): one builds, the others wait (at most
BUILD_WAIT_S, then one line naming the holder's pid) and load what it built.

Only a build that cannot happen or fails (no compiler, no ninja: the GPU image; the compiler's error)
is a reason to run without the kernels: `extension()` says why once and returns None, and the callers
run their pure-torch twins instead (model/lrn/twin.py; PaperSGD's foreach update). Anything else raised
meanwhile is not swallowed: torch's "DataLoader worker killed", raised in whatever the main thread is
doing, stops the run as it would anywhere. A library is loaded only if it is the one that was built: its
digest is recorded once it has loaded, and one that no longer matches (truncated, say: the loader would
map it and die of SIGBUS) is linked again first.
"""

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch

import files

LRN_SOURCES = Path(__file__).with_name("lrn") / "csrc"
SOURCES = [LRN_SOURCES / "lrn.cpp", Path(__file__).with_name("csrc") / "paper_sgd.cpp"]
HEADERS = [LRN_SOURCES / "lrn_planes.h"]
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "cpu_kernels"
FLAGS = ["-O3", "-fopenmp", "-fno-math-errno"]
"""-fopenmp: at::parallel_for is OpenMP inside torch's headers; -fno-math-errno: std::sqrt may then vectorise."""
NAME = "alexnet_cpu_kernels"
BUILD_WAIT_S = 900.0
"""Longest wait for another process building the kernels (a build takes 30-80 s on two cores)."""
MAX_LIBRARY_BYTES = 2**28
"""Largest library read to check its digest (the built one is about 0.6 MB)."""


class BuildFailed(RuntimeError):
    """The kernels cannot be built here: no compiler or ninja, or the compiler failed."""


def build_folder() -> Path:
    text = b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(FLAGS).encode()
    digest = hashlib.sha256(text).hexdigest()[:16]
    return CACHE / f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{digest}"


@functools.cache
def extension():
    """The compiled module (`forward`, `backward`: LRN; `paper_sgd_`), or None where it cannot be built (said
    once, as a warning); anything else that goes wrong is raised."""
    try:
        return _load()
    except BuildFailed as err:  # the twin computes the same numbers
        warnings.warn(f"the C++ CPU kernels could not be built ({err}); using their pure-torch twins "
                      "(LRN: model/lrn/twin.py; SGD: foreach)", RuntimeWarning, stacklevel=2)
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
    if not cpp_extension.is_ninja_available():
        raise BuildFailed("no ninja on PATH: pip install ninja")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BuildFailed(f"no C++ compiler {compiler!r} on PATH")
    folder = files.create_root(build_folder())
    with files.lock(CACHE / "build.lock", wait_s=BUILD_WAIT_S):  # released by the OS if this process dies mid-build
        # torch's own lock file, left behind by a build that was killed, would make load() wait forever;
        # holding ours, no other process is building here.
        files.remove(folder / "lock")
        _unlink_unless_built_here(folder)
        built = folder / f"{NAME}.so"
        if built.is_file():  # the folder is named by what built it: imported as load() would, without running ninja
            spec = importlib.util.spec_from_file_location(NAME, built)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        # The one process that builds says so; the others wait on the lock, then import what it built.
        print(f"building the CPU kernels into {folder.relative_to(CACHE.parent.parent)} (first run only, about a "
              "minute)", file=sys.stderr, flush=True)
        try:
            module = cpp_extension.load(
                name=NAME, sources=[str(p) for p in SOURCES], build_directory=str(folder),
                extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False,
            )
        except RuntimeError as err:
            if not isinstance(err.__cause__, subprocess.CalledProcessError):  # torch's wrapping of a failed build
                raise
            raise BuildFailed((str(err).strip().splitlines() or ["the build failed"])[-1][:300]) from None
        _record(folder)
        return module


def _unlink_unless_built_here(folder: Path) -> None:
    """Remove the library in `folder` unless it is the one whose digest was recorded when it last loaded, so
    that ninja links it again from its objects: a damaged library would be mapped as it is."""
    library = folder / f"{NAME}.so"
    if not library.exists():
        return
    recorded = _recorded(folder)
    if recorded == _digest(library):
        return
    if recorded:
        warnings.warn(f"{library} is not the library built there (its digest changed: damaged?); linking it again",
                      RuntimeWarning, stacklevel=3)
    files.remove(library)


def _record(folder: Path) -> None:
    """Record the digest of the library in `folder`, which has just loaded."""
    library = folder / f"{NAME}.so"
    if library.exists():
        digest = _digest(library)
        if _recorded(folder) != digest:
            files.write_atomic(folder / f"{NAME}.so.sha256", digest)


def _digest(library: Path) -> str:
    return hashlib.sha256(files.read_capped(library, MAX_LIBRARY_BYTES, "a built library")).hexdigest()


def _recorded(folder: Path) -> str:
    """The digest recorded in `folder` ("" if none: a library built before digests were kept)."""
    record = folder / f"{NAME}.so.sha256"
    if not record.exists():
        return ""
    try:
        return bytes(files.read_capped(record, 64, "a library's digest")).decode(errors="replace")
    except files.Refused:
        return "unreadable"
