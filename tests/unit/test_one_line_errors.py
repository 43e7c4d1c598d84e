"""Issue 31, class 1: one line, exit 2, for anything the user hands in, without each caller catching the right
exception.

The rule lives in two places: each program's one boundary (config/cli.py `main`) prints a UserError, or a file
refused by files/, on one line with exit status 2; and `config.errors.reading` turns whatever a reader of the
user's input raises (PyYAML's constructors, an int of 5,000 digits, a value in a checkpoint's state) into a
UserError naming what it read. Paths are checked where they are read: every free-form config key and every
option naming a file (`cli.path_option`), which the guards below hold every new key and option to.
"""

import argparse
import subprocess
import sys

import pytest
import torch

from config import cli
from config.errors import UserError, reading
from config.loading import load_config
from config.schema import ConfigError
from distributed.main import main as training_main
from programs.train import COMMANDS as TRAINING_COMMANDS
from results.__main__ import COMMANDS as RESULTS_COMMANDS
from results.__main__ import main as results_main
from tests import bounded
from tests.conftest import ROOT
from tests.png_by_hand import png_file
from tests.unit.config_keys import config_keys
from training.plateau import PlateauSchedule
from training.progress import Progress

BASE = ROOT / "config.yaml"
LONG = "x" * 300
"""A file name over every Linux file system's 255 bytes."""


def the_line(capsys) -> str:
    """The one line a refused command printed."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("word, message", [
    ("train.lr=2001-13-45", "error: the value of override 'train.lr=2001-13-45': month must be in 1..12"),
    ("train.seed=!!int abc", "error: the value of override 'train.seed=!!int abc': invalid literal for int() with "
                             "base 10: 'abc'"),
    ("train.seed=" + "9" * 5000, "error: the value of override 'train.seed=9999999999999999...9999999999999999999"
                                 "999999999': Exceeds the limit (4300 digits) for integer string conversion"),
    ("train.lr=[1", "error: the value of override 'train.lr=[1' is not valid YAML: while parsing a flow sequence "
                    "expected ',' or ']', but got '<stream end>' at line 1, column 3"),
])
def test_a_value_yaml_cannot_build_is_one_line_naming_it(capsys, word, message):
    assert training_main(["describe", word]) == 2
    assert the_line(capsys).startswith(message)


def test_a_config_file_pyyaml_cannot_read_is_one_line_naming_it_and_where(tmp_path, capsys):
    tabbed = tmp_path / "tabbed.yaml"
    tabbed.write_text("train:\n\tlr: 0.1\n")
    assert training_main(["describe", "--config", str(tabbed)]) == 2
    assert the_line(capsys) == (f"error: config file {tabbed} is not valid YAML: while scanning for the next token "
                                "found character '\\t' that cannot start any token at line 2, column 1")


@pytest.mark.parametrize("key", config_keys(str))
@pytest.mark.parametrize("value", ["a\0b", f"runs/{LONG}/ck"], ids=["NUL", "300-byte name"])
def test_every_text_key_refuses_what_no_path_can_be_where_the_config_is_read(tmp_path, key, value):
    """A guard: every free-form text key is a path (a new one must be checked as one, config/checks.py `paths`),
    and every other is a choice: either way a NUL byte or an over-long name is refused naming the key."""
    section, name = key.split(".")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{section}:\n  {name}: {value!r}\n".replace("'a\\x00b'", '"a\\0b"'))
    with pytest.raises(ConfigError, match=f"^{key}="):
        load_config([BASE, bad])


def test_a_path_with_a_nul_byte_stops_the_run_in_one_line_before_anything_starts(tmp_path):
    bad = tmp_path / "nul.yaml"
    bad.write_text('checkpoint:\n  dir: "runs/a\\0b"\n')
    line = bounded.one_error_line(bounded.program("distributed.main", ["--config", str(bad)], timeout=120))
    assert line == "error: checkpoint.dir='runs/a\\x00b': holds a NUL byte, which no path can"


def _file_options() -> list[tuple[str, str, argparse.Action]]:
    found = []
    for program, commands in (("distributed.main", TRAINING_COMMANDS), ("results", RESULTS_COMMANDS)):
        parser = cli.Parser(prog=program)
        sub = parser.add_subparsers()
        for name, command in commands.items():
            each = sub.add_parser(name)
            command.options(each)
            found += [(program, name, a) for a in each._actions if a.option_strings and a.metavar and
                      any(kind in a.metavar for kind in ("FILE", "DIR"))]
    return found


@pytest.mark.parametrize("program, command, action", _file_options(), ids=lambda x: getattr(x, "dest", x))
def test_every_option_naming_a_file_is_checked_as_a_path(program, command, action):
    """A guard: a new option naming a file is declared with cli.path_option, which refuses a name no file can
    have in one line before anything runs."""
    assert action.type is cli.path_option, f"{program} {command} {action.option_strings}"


@pytest.mark.parametrize("argv, option, name_bytes", [
    (["export", "--out", f"{LONG}.safetensors"], "--out", 312),
    (["predict", "--image", "photo.png", "--checkpoint", LONG], "--checkpoint", 300),
    (["predict", "--image", f"{LONG}.png"], "--image", 304),
])
def test_a_name_no_file_can_have_is_one_line_before_anything_is_loaded(capsys, argv, option, name_bytes):
    with pytest.raises(SystemExit) as exit:
        results_main(argv)
    assert exit.value.code == 2
    line = the_line(capsys)
    assert line.startswith(f"error: argument {option}: a name of {name_bytes} bytes (xxxxxxxxxxxxxxxxxxxx...)"), line
    assert line.endswith(f"over the system's 255 (see python -m results {argv[0]} --help)"), line


def test_an_option_argparse_cannot_parse_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        results_main(["predict"])
    assert exit.value.code == 2
    assert the_line(capsys) == ("error: the following arguments are required: --image "
                                "(see python -m results predict --help)")


def test_an_image_of_no_pixels_is_refused_from_its_header_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.png"
    empty.write_bytes(png_file(0, 0, 8, 2, b""))
    assert results_main(["predict", "--image", str(empty), "train.device=cpu"]) == 2
    assert the_line(capsys) == f"error: cannot read image {empty}: 0x0: an image of no pixels"


def test_reading_names_what_it_read_whatever_its_parser_raises():
    with pytest.raises(UserError, match=r"^the file x: OverflowError: \(34, 'Numerical result out of range'\)$"):
        with reading("the file x"):
            0.1 ** -400
    with pytest.raises(UserError, match="^the file x: not a number$"):
        with reading("the file x"):
            raise ValueError("not a number\n\n")
    with pytest.raises(KeyboardInterrupt):  # not an error in the file
        with reading("the file x"):
            raise KeyboardInterrupt


@pytest.mark.parametrize("state, message", [
    ({"drops": -400}, "drops=-400: must be from 0 to 3 (train.lr_drops)"),
    ({"drops": 4}, "drops=4: must be from 0 to 3 (train.lr_drops)"),
    ({"epochs_without_gain": -1}, "epochs_without_gain=-1: must be at least 0"),
    ({"best": float("nan")}, "best=nan: must be an error rate from 0 to 1, or inf (none yet)"),
])
def test_a_schedule_no_run_could_have_saved_is_refused_naming_the_value(state, message):
    params = [torch.nn.Parameter(torch.zeros(1))]
    schedule = PlateauSchedule(torch.optim.SGD(params, lr=0.1), 0.1, 0.1, 3, 1)
    saved = {**schedule.state_dict(), **{k: torch.tensor(v) for k, v in state.items()}}
    with pytest.raises(ValueError, match=f"^{message}$".replace("(", "\\(").replace(")", "\\)")):
        schedule.load_state_dict(saved)
    assert schedule.lr == 0.1  # unchanged


@pytest.mark.parametrize("state, message", [
    ({"step": torch.tensor(-1)}, "step=-1: must be at least 0"),
    ({"epoch_tally": torch.tensor([5.0, 4.0])}, "epoch_tally=[5.0, 4.0]: must be wrong answers out of images"),
    ({"epoch_tally": torch.tensor([float("nan"), 4.0])}, "epoch_tally=[nan, 4.0]: must be wrong answers"),
])
def test_progress_no_run_could_have_saved_is_refused_naming_the_value(state, message):
    progress = Progress(torch.device("cpu"))
    with pytest.raises(ValueError, match="^" + message.replace("[", "\\[").replace("]", "\\]")):
        progress.load_state_dict({**progress.state_dict(), **state})
    assert progress.step == 0


def test_the_packing_programs_share_the_boundary(tmp_path):
    done = subprocess.run([sys.executable, "-m", "packs.prepare", str(tmp_path / "none"), str(tmp_path / LONG)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "error: argument dst: a name of 300 bytes (xxxxxxxxxxxxxxxxxxxx...), over the system's 255 "
        "(see python -m packs.prepare --help)"], done.stderr
