"""Issue 23, classes 5 and 6: no silently wrong result, and one line where one line is promised.

Class 5: weights with NaN or infinite values, or a checkpoint folder that does not say which architecture it
is (no model.json), are refused naming the file, rather than evaluated with exit 0. Class 6: what a user
gets wrong about where a command writes (an --out that is a folder, or in a folder that does not exist), a
NaN training loss, a file name that is not UTF-8 among the images to pack: each is one line and a clean
exit, with nothing half-written left behind.
"""

import json
import os

import pytest
import torch

from bench.workers import run_workers
from checkpoints import store
from checkpoints.trained import checkpoint_paths, load_network
from config.errors import UserError
from distributed import layout
from distributed.main import main as training_main
from packs.prepare import prepare
from results.__main__ import main as results_main
from tests import bounded
from tests.png_by_hand import tiny_png
from tests.trainer_runs import ONE_PIECE, config, small_words
from tests.weight_files import rewritten


@pytest.fixture(scope="module")
def not_finite(exported, tmp_path_factory):
    """The export with one weight of tower 1's half of FC8 made NaN: only a process holding tower 1 sees it."""
    def change(tensors):
        tensors["fc8.weight"][0, -1] = float("nan")  # FC8 is split by input: the last column is tower 1's

    return rewritten(exported, tmp_path_factory.mktemp("nan") / "nan.safetensors", change)


def test_predict_and_evaluate_refuse_weights_that_are_not_finite(trained, not_finite, tmp_path, capsys):
    _, _, overrides = trained
    (tmp_path / "photo.png").write_bytes(tiny_png())
    assert results_main(["predict", "--image", str(tmp_path / "photo.png"), "--checkpoint", str(not_finite),
                         *overrides]) == 2
    assert training_main(["evaluate", "--checkpoint", str(not_finite), *overrides]) == 2
    expected = f"error: {not_finite}: holds weights that are not finite (NaN or infinite, in towers.1.fc8.weight)"
    assert [line[:len(expected)] for line in capsys.readouterr().err.splitlines()] == [expected] * 2


def _load_in_two_processes(rank: int, world: int, overrides: list[str], path: str) -> None:
    cfg = config(overrides)
    started = layout.start(layout.plan_from_env(cfg), 30)
    try:
        with pytest.raises(UserError, match="holds weights that are not finite"):
            load_network(cfg, path, torch.device("cpu"), started)
    finally:
        layout.stop()


def test_every_tower_process_refuses_when_only_one_holds_the_bad_weight(trained, not_finite):
    """Tower 0's process reads no NaN itself; it refuses too, rather than wait in a collective for its peer."""
    _, _, overrides = trained
    run_workers(2, _load_in_two_processes, overrides, str(not_finite), init=False)


@pytest.fixture
def without_model_json(trained, tmp_path):
    """The trained run's newest checkpoint, hard-linked file by file, less its model.json."""
    _, _, overrides = trained
    source = store.latest(config(overrides).checkpoint.dir)
    copy = tmp_path / source.name
    copy.mkdir()
    for entry in source.iterdir():
        if entry.name != store.MODEL_FILE:
            os.link(entry, copy / entry.name)
    return copy


def test_a_checkpoint_without_model_json_is_refused_naming_it(trained, without_model_json, capsys):
    _, _, overrides = trained
    with pytest.raises(UserError, match=f"{without_model_json / 'model.json'}: missing, so the architecture"):
        checkpoint_paths(config(overrides), [without_model_json])
    assert training_main(["evaluate", "--checkpoint", str(without_model_json), *overrides]) == 2


@pytest.mark.parametrize("command, out, why", [
    ("export", "folder.safetensors", "{out} is a folder; name the file to write"),
    ("export", "missing/alexnet.safetensors", "{out}: its folder {tmp}/missing does not exist; create it first"),
    ("onnx", "folder.onnx", "{out} is a folder; name the file to write"),
    ("figures", "file.png", "{out} is a file; figures writes into a folder"),
])
def test_an_out_that_cannot_be_written_is_one_line_before_anything_is_loaded(trained, tmp_path, capsys, command, out, why):
    _, _, overrides = trained
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "file.png").write_bytes(b"a picture")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert results_main([command, "--out", str(tmp_path / out), *overrides]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --out " + why.format(out=tmp_path / out, tmp=tmp_path)]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no partial file


@pytest.mark.parametrize("content", [pytest.param("[1, 2]", id="a list"), pytest.param("[" * 100_000 + "]" * 100_000, id="nested")])
def test_a_model_json_that_is_not_an_object_is_refused_naming_it(tmp_path, content):
    folder = tmp_path / "step_00000001"
    folder.mkdir()
    (folder / store.MARKER).write_text(json.dumps(store.FORMAT))
    (folder / store.MODEL_FILE).write_text(content)
    with pytest.raises(UserError, match="model.json"):
        checkpoint_paths(config(["train.device=cpu"]), [folder])


@pytest.mark.timeout(600)
def test_a_nan_loss_ends_the_run_with_one_line_and_the_last_good_checkpoint(tmp_path):
    words = small_words(tmp_path, ONE_PIECE, "train.lr=1e6", "checkpoint.every_steps=1", "train.batch_size=2",
                        "train.max_steps=6", "data.synthetic_val_images=2", "data.synthetic_cache=")
    done = bounded.program("distributed.main", words, timeout=540, capped=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("rank 0:")]
    assert line == (f"rank 0: training loss became nan by step 2 (rank 0); stopped, the last good checkpoint in "
                    f"{tmp_path}/ck is kept")
    assert store.latest(tmp_path / "ck").name == "step_00000001"


def test_a_file_name_that_is_not_utf8_is_listed_escaped_and_the_pack_finishes(tmp_path):
    src = tmp_path / "src"
    for name in ("a/one.png", "b/two.png"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(tiny_png())
    with open(os.path.join(os.fsencode(src / "a"), b"caf\xe9.png"), "wb") as f:
        f.write(b"not an image")
    assert prepare(src, tmp_path / "dst", None, None, workers=1) == 3
    assert (tmp_path / "dst" / "skipped.txt").read_text().splitlines() == [
        "train\ta/caf\\xe9.png\tValueError: not a JPEG, PNG, GIF or WebP file"]
    assert json.loads((tmp_path / "dst" / "meta.json").read_text())["splits"]["train"] == {"images": 2, "skipped": 1}
