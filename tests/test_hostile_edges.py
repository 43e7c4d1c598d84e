"""Issue 31, on the session's trained run: class 1 where a run meets it (a value inside a checkpoint's state, a
log folder whose disk fills) and class 4, no wrong result with exit 0 (finite weights whose outputs are not
numbers; a checkpoint without the model.json that says which architecture it holds, resumed).
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from checkpoints import store
from distributed.main import main as training_main
from results.__main__ import main as results_main
from tests.conftest import ROOT
from tests.png_by_hand import tiny_png
from tests.processes import CPU_ENV
from tests.trainer_runs import small_words
from tests.weight_files import rewritten

RESUMED = ("train.max_steps=2", "train.epochs=1", "data.synthetic_val_images=4", "train.resume=true")
"""The trained run's words (conftest.py `trained`), resumed."""


def the_line(capsys) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def copied_checkpoint(trained, into):
    """The trained run's newest checkpoint copied into the checkpoint.dir `into` (its files hard-linked, so
    a test that changes one writes a new file first)."""
    _, run_dir, _ = trained
    source = store.latest(run_dir / "ck")
    copy = into / source.name
    copy.mkdir(parents=True)
    for entry in source.iterdir():
        os.link(entry, copy / entry.name)
    return copy


def set_tensor_bytes(path, key: str, value: bytes) -> None:
    """Overwrite the bytes of `key` in the safetensors file `path`, as a new file (its name may be a hard link)."""
    raw = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8 : 8 + length])[key]["data_offsets"]
    assert end - begin == len(value)
    raw[8 + length + begin : 8 + length + end] = value
    path.unlink()
    path.write_bytes(raw)


def test_a_hostile_value_in_a_checkpoint_s_state_is_one_line_naming_it(trained, tmp_path, capsys):
    checkpoint = copied_checkpoint(trained, tmp_path / "ck")
    (shard,) = checkpoint.glob("*.safetensors")
    set_tensor_bytes(shard, "schedule.drops", struct.pack("<q", -400))
    assert training_main(small_words(tmp_path, *RESUMED)) == 2
    assert the_line(capsys) == f"error: checkpoint {checkpoint}: schedule: drops=-400: must be from 0 to 3 (train.lr_drops)"


def test_a_checkpoint_without_model_json_is_not_resumed_under_another_architecture(trained, tmp_path, capsys):
    checkpoint = copied_checkpoint(trained, tmp_path / "ck")
    (checkpoint / store.MODEL_FILE).unlink()
    assert training_main(small_words(tmp_path, *RESUMED, "model.lrn=none")) == 2
    assert the_line(capsys) == (f"error: {checkpoint / store.MODEL_FILE}: missing, so the architecture of checkpoint "
                                f"{checkpoint} is unknown; only checkpoints written by this project's training are read")
    assert sorted((tmp_path / "ck").glob("step_*")) == [checkpoint]  # nothing trained, nothing saved


@pytest.fixture(scope="module")
def overflowing(exported, tmp_path_factory):
    """The export with every weight scaled by 1e30: all finite, but the activations overflow float32."""
    def change(tensors):
        for t in tensors.values():
            t *= 1e30
        assert all(t.isfinite().all() for t in tensors.values())

    return rewritten(exported, tmp_path_factory.mktemp("scaled") / "scaled.safetensors", change)


def test_outputs_that_are_not_numbers_are_refused_not_printed(trained, overflowing, tmp_path, capsys):
    _, _, overrides = trained
    (tmp_path / "photo.png").write_bytes(tiny_png())
    assert results_main(["predict", "--image", str(tmp_path / "photo.png"), "--checkpoint", str(overflowing),
                         *overrides]) == 2
    assert the_line(capsys) == (f"error: {overflowing}: the net's outputs for 1 of 1 image(s) are not numbers (NaN): "
                                "finite weights whose activations overflow float32; give another checkpoint")
    assert training_main(["evaluate", "--checkpoint", str(overflowing), *overrides]) == 2
    assert the_line(capsys) == (f"error: {overflowing}: the outputs for 4 of 4 validation images are not numbers "
                                "(NaN): finite weights whose activations overflow float32; no error rate can be read "
                                "from them: give another checkpoint")


FULL = """
import resource, signal, sys
from training.metrics import LogFailed, MetricLogger

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
logger = MetricLogger(sys.argv[1], enabled=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
try:
    for step in range(100_000):
        logger.scalars(step, {"loss/train": 1.0})
except LogFailed as err:
    print(err)
"""


def test_a_log_folder_that_cannot_take_more_is_one_message_not_tensorboard_s_tracebacks(tmp_path):
    done = subprocess.run([sys.executable, "-c", FULL, str(tmp_path)], cwd=ROOT, env=CPU_ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]  # the writing thread's report too
    assert done.stdout == (f"log.dir={tmp_path}: TensorBoard cannot write there (File too large); free space there, "
                           "or give another log.dir, and resume (train.resume=true)\n")


def _user_namespaces() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.timeout(600)
@pytest.mark.skipif(not _user_namespaces(), reason="mounting a small file system needs user namespaces (unshare -rm)")
def test_a_run_whose_log_disk_fills_ends_with_one_line(tmp_path):
    """log.dir on a file system of 16 KiB (a tmpfs mounted in a user namespace): the run's probe and lock fit, the
    40 KB of events of its one epoch do not."""
    logs = tmp_path / "logs"
    logs.mkdir()
    words = small_words(tmp_path, f"log.dir={logs}", "data.synthetic_train_images=8", "data.synthetic_val_images=2",
                        "train.epochs=1", "data.synthetic_cache=")
    command = 'mount -t tmpfs -o size=16k none "$1" && shift && exec "$@"'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command, "sh", str(logs), sys.executable, "-m",
                           "distributed.main", *words], cwd=ROOT, env=CPU_ENV, capture_output=True, text=True,
                          timeout=540)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("rank 0:")] == [
        f"rank 0: log.dir={logs}: TensorBoard cannot write there (No space left on device); free space there, or "
        "give another log.dir, and resume (train.resume=true)"], done.stderr[-3000:]
