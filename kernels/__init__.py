"""The project's C++ CPU kernels, each declared beside the Python that uses it (`CppKernel`: the LRN in
model/lrn/, the paper's SGD update in training/), compiled at first use (`built`) into .cache/cpu_kernels/.

Only a build that cannot happen or fails is a reason to run without one: `built` then says why once and
returns None, and its caller runs the pure-torch twin. How builds are cached, shared between processes and
checked before loading: docs/KERNELS.md. Imports nothing of the project's but files/.
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
from dataclasses import dataclass
from pathlib import Path

import torch

import files

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "cpu_kernels"
FLAGS = ["-O3", "-fopenmp", "-fno-math-errno"]
"""-fopenmp: at::parallel_for is OpenMP inside torch's headers; -fno-math-errno: std::sqrt may then vectorise."""
BUILD_WAIT_S = 900.0
"""Longest wait for another process building a kernel (a build takes 30-80 s on two cores)."""
MAX_LIBRARY_BYTES = 2**28
"""Largest library read to check its digest (the built ones are under 1 MB)."""


class BuildFailed(RuntimeError):
    """A kernel cannot be built here: no compiler or ninja, or the compiler failed."""


@dataclass(frozen=True)
class CppKernel:
    """A C++ extension module `name`, compiled from `sources`; `headers` are what they include (a changed header
    builds afresh too); `instead` says what its callers run where it cannot be built."""

    name: str
    sources: tuple[Path, ...]
    headers: tuple[Path, ...] = ()
    instead: str = "its pure-torch twin"

    def build_folder(self) -> Path:
        """Where it is built: named by the torch and Python versions and a hash of the sources and flags, so a
        changed source or another torch builds afresh rather than loading a stale library."""
        text = b"".join(p.read_bytes() for p in self.sources + self.headers) + " ".join(FLAGS).encode()
        digest = hashlib.sha256(text).hexdigest()[:16]
        python = f"py{sys.version_info.major}{sys.version_info.minor}"
        return CACHE / f"{self.name}-torch{torch.__version__}-{python}-{digest}"


@functools.cache
def built(kernel: CppKernel):
    """The compiled module, or None where it cannot be built (said once, as a warning); anything else that goes
    wrong is raised."""
    try:
        return _load(kernel)
    except BuildFailed as err:  # the twin computes the same numbers
        warnings.warn(f"the C++ CPU kernel {kernel.name} could not be built ({err}); using {kernel.instead}",
                      RuntimeWarning, stacklevel=2)
        return None


def _load(kernel: CppKernel):
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
    folder = files.create_root(kernel.build_folder())
    with files.lock(CACHE / "build.lock", wait_s=BUILD_WAIT_S):  # released by the OS if this process dies mid-build
        # torch's own lock file, left behind by a build that was killed, would make load() wait forever;
        # holding ours, no other process is building here.
        files.remove(folder / "lock")
        _unlink_unless_built_here(folder, kernel.name)
        library = folder / f"{kernel.name}.so"
        if library.is_file():  # the folder is named by what built it: imported as load() would, without running ninja
            spec = importlib.util.spec_from_file_location(kernel.name, library)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        # The one process that builds says so; the others wait on the lock, then import what it built.
        print(f"building the CPU kernel {kernel.name} into {folder.relative_to(CACHE.parent.parent)} (first run "
              "only, about a minute)", file=sys.stderr, flush=True)
        try:
            module = cpp_extension.load(
                name=kernel.name, sources=[str(p) for p in kernel.sources], build_directory=str(folder),
                extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False,
            )
        except RuntimeError as err:
            if not isinstance(err.__cause__, subprocess.CalledProcessError):  # torch's wrapping of a failed build
                raise
            raise BuildFailed((str(err).strip().splitlines() or ["the build failed"])[-1][:300]) from None
        _record(folder, kernel.name)
        return module


def _unlink_unless_built_here(folder: Path, name: str) -> None:
    """Remove the library `name` in `folder` unless it is the one whose digest was recorded when it last loaded, so
    that ninja links it again from its objects: a damaged library would be mapped as it is."""
    library = folder / f"{name}.so"
    if not library.exists():
        return
    recorded = _recorded(folder, name)
    if recorded == _digest(library):
        return
    if recorded:
        warnings.warn(f"{library} is not the library built there (its digest changed: damaged?); linking it again",
                      RuntimeWarning, stacklevel=3)
    files.remove(library)


def _record(folder: Path, name: str) -> None:
    """Record the digest of the library `name` in `folder`, which has just loaded."""
    library = folder / f"{name}.so"
    if library.exists():
        digest = _digest(library)
        if _recorded(folder, name) != digest:
            files.write_atomic(folder / f"{name}.so.sha256", digest)


def _digest(library: Path) -> str:
    return hashlib.sha256(files.read_capped(library, MAX_LIBRARY_BYTES, "a built library")).hexdigest()


def _recorded(folder: Path, name: str) -> str:
    """The digest recorded for the library `name` in `folder` ("" if none: built before digests were kept)."""
    record = folder / f"{name}.so.sha256"
    if not record.exists():
        return ""
    try:
        return bytes(files.read_capped(record, 64, "a library's digest")).decode(errors="replace")
    except files.Refused:
        return "unreadable"
