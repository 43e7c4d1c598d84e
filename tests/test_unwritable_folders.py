"""An unwritable checkpoint.dir or log.dir (issue 11: no lost epoch) stops every process before the process
group, with one line naming the folder, instead of failing at the first save an epoch later. Runs are launched
as `python -m distributed.main` processes."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.processes import CPU_ENV
from tests.trainer_runs import CLI


@pytest.fixture
def unwritable(tmp_path):
    """A folder holding `ro` (made read-only for each process by how it is started), `logs` and `file`."""
    (tmp_path / "ro").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "file").write_text("not a folder")
    yield tmp_path
    (tmp_path / "ro").chmod(0o755)


def _as_unwritable(how: str, folder: Path, cmd: list[str]) -> tuple[list[str], dict]:
    """`cmd` and Popen options under which `folder` cannot be written. Root writes through any mode, so a
    read-only folder is a read-only bind mount in a mount namespace of the process's own (a non-root user
    gets mode 555); "no room" sets the file size limit to 0 bytes, so every write fails as on a full disk."""
    if how == "no room":
        return cmd, {"preexec_fn": lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))}
    if how != "read-only":
        return cmd, {}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return cmd, {}
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("root without mount namespaces (unshare --mount): no read-only folder to test with")
    remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", remount, str(folder), *cmd], {}


@pytest.mark.parametrize("key, how, where, why", [
    ("checkpoint.dir", "read-only", "ro/ck", "Read-only file system"), ("checkpoint.dir", "no room", "logs/ck", "File too large"),
    ("checkpoint.dir", "a file", "file", "exists and is not a folder"),
    ("checkpoint.dir", "under a file", "file/ck", "not a folder"), ("log.dir", "a file", "file", "exists and is not a folder"),
])
def test_an_unwritable_folder_stops_every_process_before_the_process_group(unwritable, key, how, where, why):
    """Before, an unwritable checkpoint.dir was found at the first save, an epoch later, with a traceback.
    WORLD_SIZE=2 with no rendezvous address: joining a process group would fail or hang, so exit 2 with the
    message proves the probe ran before it. checkpoint.dir is probed on every rank (each writes its own files):
    rank 1 is checked too where the folder exists but takes no file."""
    folders = {"checkpoint.dir": unwritable / "logs" / "ck", "log.dir": unwritable / "logs", key: unwritable / where}
    words = [*CLI, "train.device=cpu", *(f"{k}={v}" for k, v in folders.items())]
    procs = []
    for rank in [0, 1] if how in ("read-only", "no room") else [0]:
        env = {**CPU_ENV, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_PORT": "1"}
        cmd, options = _as_unwritable(how, unwritable / "ro", [sys.executable, "-m", "distributed.main", *words])
        # stdout to /dev/null: "no room"'s file size limit would stop the first print where stdout is a regular
        # file (pytest's capture), before the probe
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, **options))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {key}={unwritable / where} cannot be written ("), err
        assert why in errors[0]
        assert errors[0].endswith(f"make it writable, or give another {key}")
    assert list((unwritable / "ro").iterdir()) == []
    assert not [p for p in (unwritable / "logs").rglob("*") if p.is_file()]  # no probe left behind
