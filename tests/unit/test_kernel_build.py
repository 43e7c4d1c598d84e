"""Issue 31, class 5: only a failed build is a reason to run without the CPU kernels, and a library is loaded
only if it is the one that was built.

Each case runs in a process of its own (tests/bounded.py, with a deadline), its kernels' cache in tmp_path:
`kernels.built` is cached per process, and a damaged library would kill the process that maps it.
"""

import hashlib
import shutil

import pytest

import kernels
from tests import bounded
from training.optimizer import ONE_PASS

CACHE_AT = "from pathlib import Path\nimport kernels\nkernels.CACHE = Path({cache!r})\n"
LRN = "from model.lrn.ops import KERNEL as LRN\n"


def test_a_source_that_does_not_compile_runs_the_twins_and_says_why(tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("#error this source does not compile\n")
    imports = "import dataclasses, warnings\n" + CACHE_AT.format(cache=str(tmp_path / "cache")) + LRN + \
        f"broken = dataclasses.replace(LRN, sources=(Path({str(broken)!r}),))\nwarnings.simplefilter('error')"
    outcome = bounded.call(imports, "kernels.built(broken)", timeout=240)
    assert outcome["error"] == "RuntimeWarning", outcome  # the one warning, made an error here to be seen
    assert outcome["message"].startswith("the C++ CPU kernel alexnet_lrn could not be built (") and \
        outcome["message"].endswith("); using its pure-torch twin (model/lrn/twin.py)"), outcome


KILLED_MEANWHILE = """
import os, signal, time
import torch
from torch.utils import cpp_extension
from torch.utils.data import DataLoader, Dataset

class Slow(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        time.sleep(60)
        return i

loader = iter(DataLoader(Slow(), num_workers=1))

def load(**kwargs):  # the build: meanwhile the run's loading process is killed, and torch says so in this thread
    os.kill(loader._workers[0].pid, signal.SIGKILL)
    time.sleep(30)

cpp_extension.load = load
"""


def test_a_loading_process_killed_during_the_build_stops_the_run_rather_than_the_kernels(tmp_path):
    outcome = bounded.call(CACHE_AT.format(cache=str(tmp_path / "cache")) + LRN + KILLED_MEANWHILE,
                           "kernels.built(LRN)", timeout=120)
    assert outcome["error"] == "RuntimeError", outcome
    assert outcome["message"].startswith("DataLoader worker (pid"), outcome


@pytest.mark.timeout(600)
def test_a_damaged_library_is_linked_again_never_mapped(tmp_path):
    """A library cut inside its ELF header (a full disk, a killed copy): mapping it kills the process with
    SIGBUS, so its digest is checked against the one recorded when it last loaded, and it is linked again."""
    if kernels.built(ONE_PASS) is None:
        pytest.skip("the kernels cannot be built here")
    built = ONE_PASS.build_folder()
    copy = tmp_path / "cache" / built.name
    shutil.copytree(built, copy)  # copy2: ninja sees the objects as up to date, and relinks only
    library = copy / f"{ONE_PASS.name}.so"
    with open(library, "r+b") as f:
        f.truncate(4096)
    outcome = bounded.call(CACHE_AT.format(cache=str(tmp_path / "cache")) + "from training.optimizer import ONE_PASS",
                           "kernels.built(ONE_PASS).paper_sgd_", timeout=540)
    assert outcome["error"] is None and "paper_sgd_" in outcome["value"], outcome
    assert (copy / f"{ONE_PASS.name}.so.sha256").read_text() == hashlib.sha256(library.read_bytes()).hexdigest()
