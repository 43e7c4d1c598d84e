"""Shared test fixtures: thread count, a fresh compiler, commands launched in their own session, the session's
trained run and its export, and the packs and folders the tests of hostile input start from."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def fresh_compiler():
    """Compiled code is cached per Python function across tests: a test that counts graphs compiles its own."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def launch(tmp_path):
    """Start a command in its own session, output to files; whatever is left of it is killed at the end."""
    from tests.processes import CPU_ENV

    started: list[subprocess.Popen] = []

    def start(cmd: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        out, err = open(tmp_path / f"{name}.out", "w"), open(tmp_path / f"{name}.err", "w")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env or CPU_ENV, stdout=out, stderr=err, start_new_session=True)
        proc.out, proc.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(trainer, run dir, the override words that name its config) after a two-step run, shared by
    the tests of what a trained net is used for."""
    from tests.trainer_runs import small_config, small_words, start
    from training.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("run")
    words = small_words(run_dir, "train.max_steps=2", "train.epochs=1", "data.synthetic_val_images=4")
    cfg = small_config(run_dir, *words)
    trainer = Trainer(cfg, start(cfg))
    trainer.run()
    return trainer, run_dir, words


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained run's newest checkpoint, exported by the command."""
    from results.__main__ import main as results_main

    _, _, overrides = trained
    target = tmp_path_factory.mktemp("weights") / "alexnet.safetensors"
    assert results_main(["export", "--out", str(target), *overrides]) == 0
    return target


@pytest.fixture
def pack(tmp_path):
    """A small pack written by hand (tests/pack_files.py)."""
    from tests.pack_files import write_pack

    return write_pack(tmp_path / "pack")


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    """The same 40 photograph-sized JPEGs (8 classes), packed raw and as JPEG records; the val split is
    the training folder again."""
    from bench.images import make_jpegs
    from packs.encoding import Encoding
    from packs.prepare import prepare

    root = tmp_path_factory.mktemp("compact")
    make_jpegs(root / "jpegs", 40)
    files = sorted(p.relative_to(root / "jpegs") for p in (root / "jpegs").rglob("*.jpg"))
    val = root / "val"
    val.mkdir()
    for f in files[:4]:
        (val / f.name).write_bytes((root / "jpegs" / f).read_bytes())
    (root / "val.txt").write_text("".join(f"{f.name} {f.parent}\n" for f in files[:4]))
    out = {}
    for name in ("raw", "jpeg"):
        out[name] = root / name
        prepare(root / "jpegs", out[name], val, root / "val.txt", workers=2, shard_size=16, encoding=Encoding(name))
    return out


@pytest.fixture
def outside(tmp_path):
    """Another run's files: a file and a folder with a checkpoint's completeness mark, which nothing may change."""
    from checkpoints import store

    folder = tmp_path / "elsewhere"
    (folder / "step_00000001").mkdir(parents=True)
    (folder / "step_00000001" / store.MARKER).write_bytes(b"another run's checkpoint")
    (folder / "precious.txt").write_text("keep me")
    return folder
