"""The project's C++ CPU kernels (model/csrc/: LRN, and the paper's SGD update), compiled at first use
(torch.utils.cpp_extension.load, with ninja) into one module.

Built once per machine into the git-ignored `.cache/cpu_kernels/`, in a folder named by the torch and
Python versions and a hash of the sources and flags, so a changed source or another torch builds afresh
rather than loading a stale library. Processes that start at once (the two tower processes, parallel
tests) take a file lock (files.lock, the program's one lock): one builds, the others wait and load what
it built. Where nothing can be built
(no compiler, no ninja: the GPU image) `extension()` says why once and returns None, and the callers run
their pure-torch twins instead (model/lrn_twin.py; PaperSGD's foreach update).
"""

import functools
import hashlib
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

import torch

import files

SOURCES = [Path(__file__).with_name("csrc") / name for name in ("lrn.cpp", "paper_sgd.cpp")]
HEADERS = [Path(__file__).with_name("csrc") / "lrn_planes.h"]
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "cpu_kernels"
MODULE = "alexnet_cpu_kernels"
FLAGS = ["-O3", "-fopenmp", "-fno-math-errno"]
"""-fopenmp: at::parallel_for is OpenMP inside torch's headers; -fno-math-errno: std::sqrt may then vectorise."""


def build_folder() -> Path:
    text = b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(FLAGS).encode()
    digest = hashlib.sha256(text).hexdigest()[:16]
    return CACHE / f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{digest}"


@functools.cache
def extension():
    """The compiled module (`forward`, `backward`: LRN; `paper_sgd_`), or None where it cannot be built (said
    once, as a warning)."""
    try:
        return _load()
    except Exception as err:  # no compiler, no ninja, a failed build: the twin computes the same numbers
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
        warnings.warn(f"the C++ CPU kernels could not be built ({reason}); using their pure-torch twins "
                      "(LRN: model/lrn_twin.py; SGD: foreach)", RuntimeWarning, stacklevel=2)
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
    folder = files.create_root(build_folder())
    with files.lock(CACHE / "build.lock", wait=True):  # released by the OS if this process dies mid-build
        # torch's own lock file, left behind by a build that was killed, would make load() wait forever;
        # holding ours, no other process is building here.
        files.remove(folder / "lock")
        built = folder / f"{MODULE}.so"
        if built.is_file():  # the folder is named by what built it: imported as load() would, without running ninja
            spec = importlib.util.spec_from_file_location(MODULE, built)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        # The one process that builds says so; the others wait on the lock, then import what it built.
        print(f"building the CPU kernels into {folder.relative_to(CACHE.parent.parent)} (first run only, about a "
              "minute)", file=sys.stderr, flush=True)
        return cpp_extension.load(
            name=MODULE, sources=[str(p) for p in SOURCES], build_directory=str(folder),
            extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False,
        )
