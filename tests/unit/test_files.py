"""The file primitives (files/) on their own: what each refuses, and that no link is ever written or
deleted through. The classes of hostile input they close are tested where a run meets them
(tests/test_hostile_*.py); these tests pin the primitives' own promises."""

import io
import json
import multiprocessing
import os
import re
import shutil
import socket
import zipfile

import numpy as np
import pytest
import torch

import files
from files import Refused

pytestmark = pytest.mark.timeout(30)  # a primitive that blocked on a pipe would otherwise hang the suite


@pytest.fixture
def outside(tmp_path):
    """A file and a folder outside the run's folder, which nothing may change."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious.txt").write_text("keep me")
    return tmp_path / "outside"


@pytest.fixture
def run(tmp_path):
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def untouched(outside) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me"


def non_regular(tmp_path, what: str):
    if what == "fifo":
        os.mkfifo(tmp_path / "pipe")
        return tmp_path / "pipe", "a named pipe"
    if what == "device":
        return "/dev/zero", "a character device"
    if what == "folder":
        return tmp_path, "a folder"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    return tmp_path / "sock", "socket"


@pytest.mark.parametrize("what", ["fifo", "device", "folder", "socket"])
def test_anything_but_a_regular_file_is_refused_unread_and_at_once(tmp_path, what):
    path, kind = non_regular(tmp_path, what)
    for read in (files.open_regular, lambda p: files.read_capped(p, 100), lambda p: files.read_json(p, 100),
                 files.map_npy, lambda p: files.read_torch(p, 100)):
        with pytest.raises(Refused, match=f"^{re.escape(str(path))}: .*{kind}"):
            read(path)


def test_reading_follows_a_link_to_a_regular_file_unless_told_not_to(tmp_path, outside):
    (tmp_path / "link").symlink_to(outside / "precious.txt")
    assert files.read_capped(tmp_path / "link", 100) == b"keep me"
    with pytest.raises(Refused, match="a symbolic link"):
        files.open_regular(tmp_path / "link", follow_links=False)


def test_a_file_over_its_limit_is_refused_before_a_byte_is_read(tmp_path, monkeypatch):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(2**40)  # a terabyte, sparse: reading it would take the machine's memory
    monkeypatch.setattr(os, "read", lambda *a: pytest.fail("read before the size was checked"))
    with pytest.raises(Refused, match=f"{2**40} bytes, over the 1000-byte limit of a pack's JSON file"):
        files.read_json(big, 1000, "a pack's JSON file")


@pytest.mark.parametrize("content, why", [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="nested 100,000 deep"),
    pytest.param(b"\xff\xfe{}", "not valid JSON", id="not UTF-8"),
    pytest.param(b'{"a": ', "not valid JSON", id="truncated"),
])
def test_json_that_cannot_be_read_is_refused_naming_the_file(tmp_path, content, why):
    (tmp_path / "x.json").write_bytes(content)
    with pytest.raises(Refused, match=f"x.json: {why}"):
        files.read_json(tmp_path / "x.json", 10**6)


def test_npy_maps_plain_arrays_and_refuses_pickles_and_short_files(tmp_path):
    np.save(tmp_path / "ok.npy", np.arange(5, dtype=np.int64))
    assert files.map_npy(tmp_path / "ok.npy").tolist() == [0, 1, 2, 3, 4]
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(Refused, match="objects.npy: an array of Python objects"):
        files.map_npy(tmp_path / "objects.npy")
    data = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-8])
    with pytest.raises(Refused, match=r"short.npy: \d+ bytes, but its header declares int64 \(5,\)"):
        files.map_npy(tmp_path / "short.npy")


def test_torch_files_load_weights_only_and_compressed_entries_are_refused(tmp_path):
    torch.save({"x": torch.arange(3.0)}, tmp_path / "ok.pt")
    assert torch.equal(files.read_torch(tmp_path / "ok.pt", 10**6)["x"], torch.arange(3.0))
    with zipfile.ZipFile(tmp_path / "ok.pt") as source, zipfile.ZipFile(tmp_path / "deflated.pt", "w") as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(Refused, match="deflated.pt: holds compressed entries"):
        files.read_torch(tmp_path / "deflated.pt", 10**6)
    buffer = io.BytesIO()
    torch.save({"x": torch.arange(3.0)}, buffer, _use_new_zipfile_serialization=False)  # the old format
    (tmp_path / "legacy.pt").write_bytes(buffer.getvalue())
    with pytest.raises(Refused, match="legacy.pt: not a torch.save zip file"):
        files.read_torch(tmp_path / "legacy.pt", 10**6)


@pytest.mark.parametrize("planted", ["target", "partial"])
def test_a_write_replaces_a_link_and_never_writes_through_it(run, outside, planted):
    name = "index.json" if planted == "target" else "index.json.partial"
    (run / name).symlink_to(outside / "precious.txt")
    files.write_atomic(run / "index.json", "{}")
    assert (run / "index.json").read_text() == "{}" and not (run / "index.json").is_symlink()
    assert sorted(p.name for p in run.iterdir()) == ["index.json"]
    untouched(outside)


def test_a_failed_write_leaves_the_old_file_and_nothing_else(run):
    files.write_atomic(run / "a.txt", "old")
    with pytest.raises(ZeroDivisionError):
        with files.replacing(run / "a.txt") as out:
            out.write(b"new, half written")
            1 / 0
    assert sorted(p.name for p in run.iterdir()) == ["a.txt"] and (run / "a.txt").read_text() == "old"
    with pytest.raises(ZeroDivisionError):
        with files.atomic_path(run / "b.onnx") as partial:
            partial.write_bytes(b"x" * 1000)
            1 / 0
    assert sorted(p.name for p in run.iterdir()) == ["a.txt"]


def test_writing_onto_a_folder_or_into_a_missing_folder_is_refused_naming_it(run):
    (run / "out.onnx").mkdir()
    with pytest.raises(Refused, match="out.onnx: a folder; give the name of a file"):
        files.write_atomic(run / "out.onnx", b"")
    with pytest.raises(Refused, match="out.onnx: a folder"):
        with files.atomic_path(run / "out.onnx"):
            pass
    with pytest.raises(Refused, match=f"its folder {run / 'missing'} cannot be written into \\(it does not exist"):
        files.write_atomic(run / "missing" / "x.json", b"")
    assert sorted(p.name for p in run.iterdir()) == ["out.onnx"] and not any((run / "out.onnx").iterdir())


def test_a_link_where_the_run_makes_a_folder_is_refused(run, outside):
    (run / "train").symlink_to(outside)
    with pytest.raises(Refused, match="train: a symbolic link where this run keeps a folder of its own"):
        files.make_folder(run / "train")
    (run / "building.partial").symlink_to(outside)  # a leftover name, planted: unlinked, not followed
    with files.atomic_folder(run / "building") as folder:
        (folder / "meta.json").write_text("{}")
    assert (run / "building" / "meta.json").is_file() and not (run / "building.partial").exists()
    with pytest.raises(ZeroDivisionError):
        with files.atomic_folder(run / "other") as folder:
            (folder / "half").write_text("x")
            1 / 0
    assert sorted(p.name for p in run.iterdir()) == ["building", "train"]
    untouched(outside)


def test_renaming_moves_entries_never_what_links_lead_to(run, outside):
    (run / "step_1").mkdir()
    (run / "step_1.broken").symlink_to(outside)  # planted under the name a broken checkpoint is set aside as
    files.rename(run / "step_1", run / "step_1.broken")
    assert (run / "step_1.broken").is_dir() and not (run / "step_1.broken").is_symlink()
    (run / "full").mkdir()
    (run / "full" / "x").write_text("")
    (run / "step_2").mkdir()
    with pytest.raises(Refused, match="full: cannot rename"):
        files.rename(run / "step_2", run / "full")
    untouched(outside)


def test_removing_never_follows_a_link(run, outside):
    (run / "step_1").symlink_to(outside)  # another run's folder, linked in
    assert files.remove(run / "step_1", first=["precious.txt"])
    (run / "step_2").mkdir()
    (run / "step_2" / "inner").symlink_to(outside)
    (run / "step_2" / "mark").write_text("")
    assert files.remove(run / "step_2", first=["mark"])
    assert not files.remove(run / "step_3")
    assert not any(run.iterdir())
    untouched(outside)
    assert shutil.rmtree.avoids_symlink_attacks  # what remove relies on for the links inside a folder


def _hold(path, ready, done) -> None:
    with files.lock(path, note="pid of the holder"):
        ready.set()
        done.wait(20)


def test_a_lock_is_refused_while_another_process_holds_it_and_free_once_it_dies(run):
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(run / ".lock", ready, done))
    holder.start()
    assert ready.wait(20)
    with pytest.raises(files.Busy, match="locked by another process \\(pid of the holder\\)"):
        files.lock(run / ".lock")
    holder.kill()
    holder.join()
    files.lock(run / ".lock", note="me").release()
    assert (run / ".lock").read_text() == "me"


def test_a_lock_file_that_is_a_link_or_a_pipe_is_refused_and_untouched(run, outside):
    (run / ".lock").symlink_to(outside / "precious.txt")
    with pytest.raises(Refused, match=r"\.lock: a symbolic link"):
        files.lock(run / ".lock", note="would overwrite")
    os.mkfifo(run / "pipe")
    with pytest.raises(Refused, match="pipe: a named pipe"):
        files.lock(run / "pipe")
    untouched(outside)


def test_a_second_lock_of_a_file_this_process_holds_is_refused_before_it_could_drop_the_first(run):
    with files.lock(run / ".lock"):
        with pytest.raises(Refused, match="already locked by this process"):
            files.lock(run / ".lock")
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_try_lock, args=(str(run / ".lock"),))
        child.start()
        child.join(20)
        assert child.exitcode == 3  # still held: the refused second lock did not release it


def _try_lock(path: str) -> None:
    try:
        files.lock(path)
    except files.Busy:
        os._exit(3)
    os._exit(0)


def test_json_written_is_read_back(run):
    files.write_atomic(run / "a.json", json.dumps({"k": [1, 2]}))
    assert files.read_json(run / "a.json", 100) == {"k": [1, 2]}
