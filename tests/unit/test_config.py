"""Config errors name the problem before any process starts."""

import re
import subprocess
import sys

import pytest
import torch

from config.loading import load_config
from config.schema import ConfigError
from distributed.layout import plan_from_env
from tests.conftest import ROOT
from training.speed import SpeedSwitches

BASE = ROOT / "config.yaml"


def test_base_config_holds_the_papers_values():
    cfg = load_config([BASE])
    t = cfg.train
    assert (t.batch_size, t.momentum, t.weight_decay, t.lr, t.lr_factor, t.lr_drops, t.epochs) == (
        128, 0.9, 5e-4, 0.01, 0.1, 3, 90)
    m = cfg.model
    assert (m.lrn_k, m.lrn_size, m.lrn_alpha, m.lrn_beta, m.dropout, m.weight_std, m.bias_init) == (
        2.0, 5, 1e-4, 0.75, 0.5, 0.01, 1.0)
    assert cfg.data.pca_std == 0.1 and cfg.model.input_size == 227


def test_config_yaml_lists_every_key_at_its_dataclass_default():
    """One source of defaults: the dataclasses hold them (each documented where it is declared); config.yaml
    shows the same recipe whole, so a reader of either sees what runs. A key added, dropped or changed on one
    side only fails here, naming it."""
    import dataclasses

    import yaml

    from config.schema import Config

    listed = yaml.safe_load(BASE.read_text())
    defaults = dataclasses.asdict(Config())
    assert listed.keys() == defaults.keys()
    for section, values in defaults.items():
        assert listed[section].keys() == values.keys(), section
        for key, value in values.items():
            assert listed[section][key] == value and type(listed[section][key]) is type(value), \
                f"{section}.{key}: config.yaml {listed[section][key]!r}, dataclass {value!r}"


@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=0.1", "unknown config key train.learning_rate"),
    ("nosuch.key=1", "unknown config key nosuch"),
    ("train.batch_size=big", "train.batch_size: expected int"),
    ("train.batch_size=0", "train.batch_size=0: must be at least 1"),
    ("train.lr=-1", "train.lr=-1.0: must be positive"),
    ("model.input_size=225", "model.input_size=225"),
    ("data.mean=median", "data.mean='median'"),
    ("train.resume=maybe", "train.resume: expected bool"),
    ("train.precision=fp16", "train.precision='fp16'"),
    ("train.compile=maybe", "train.compile='maybe'"),
    ("parallel.backend=mpi", "parallel.backend='mpi'"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config([BASE], [override])


def test_duplicate_keys_are_refused(tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_config([BASE, bad])
    with pytest.raises(ConfigError, match="override train.lr given twice"):
        load_config([BASE], ["train.lr=0.1", "train.lr=0.2"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file /no/such.yaml: no such file"):
        load_config([BASE, "/no/such.yaml"])


def test_scientific_notation_floats():
    assert load_config([BASE], ["train.weight_decay=1e-3"]).train.weight_decay == 1e-3


@pytest.mark.parametrize("world, overrides, message", [
    (3, [], "world size 3"),
    (2, ["train.batch_size=10", "train.micro_batches=4"], "not divisible by 1 replica"),
    (4, ["train.batch_size=6", "train.micro_batches=2"], "not divisible by 2 replica"),
])
def test_world_size_and_batch_arithmetic(world, overrides, message):
    cfg = load_config([BASE], overrides)
    with pytest.raises(ConfigError, match=message):
        plan_from_env(cfg, {"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0"})


def test_supported_world_sizes():
    cfg = load_config([BASE], ["train.device=cpu"])
    assert plan_from_env(cfg, {"WORLD_SIZE": "1"}).tower_processes == 1
    two = plan_from_env(cfg, {"WORLD_SIZE": "2", "RANK": "1"})
    assert (two.tower_processes, two.replicas, two.tower_indices(2)) == (2, 1, (1,))
    four = plan_from_env(cfg, {"WORLD_SIZE": "4", "RANK": "3"})
    assert (four.replicas, four.replica, four.tower_indices(2)) == (2, 1, (1,))
    three = plan_from_env(load_config([BASE], ["parallel.tower_parallel=false", "train.batch_size=129", "train.micro_batches=1"]),
                          {"WORLD_SIZE": "3"})
    assert (three.tower_processes, three.replicas, three.tower_indices(2)) == (1, 3, (0, 1))


def test_entry_point_reports_config_errors_before_starting():
    proc = subprocess.run([sys.executable, "-m", "distributed.main", "train.momentum=2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: train.momentum=2.0: must be in [0, 1)" in proc.stderr


def test_backends_and_two_tower_processes_sharing_one_gpu(monkeypatch):
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    cpu = plan_from_env(load_config([BASE], ["train.device=cpu"]), env)
    assert (cpu.backend, cpu.exchanges_via_host) == ("gloo", False)
    with pytest.raises(ConfigError, match="parallel.backend=nccl needs a GPU per process"):
        plan_from_env(load_config([BASE], ["train.device=cpu", "parallel.backend=nccl"]), env)
    # One GPU, two tower processes: NCCL is refused with both ways out named; gloo shares the GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 processes on this node but 1 GPU.*parallel.backend=gloo"):
        plan_from_env(load_config([BASE], []), env)
    shared = plan_from_env(load_config([BASE], ["parallel.backend=gloo"]), env)
    assert (shared.device, shared.backend, shared.exchanges_via_host) == (torch.device("cuda", 0), "gloo", True)
    speed = SpeedSwitches.resolve(load_config([BASE], []).train, shared.device)
    assert speed.precision == "bf16" and speed.compile == "on"  # auto on a GPU


# -- numbers and text the code cannot take -------------------------------------------------


def float_keys() -> list[str]:
    """Every float key of the config, as section.key."""
    from typing import get_type_hints

    from config.schema import Config

    sections = get_type_hints(Config)
    return [f"{s}.{name}" for s, cls in sections.items() for name, kind in get_type_hints(cls).items() if kind is float]


@pytest.mark.parametrize("value", [".nan", "nan", ".inf", "-.inf", "inf", "1e39", "-1e39", str(10**400)],
                         ids=[".nan", "nan", ".inf", "-.inf", "inf", "1e39", "-1e39", "10**400"])
def test_nan_infinity_and_floats_beyond_float32_are_refused_for_every_float_key(value):
    keys = float_keys()
    assert len(keys) >= 13 and "parallel.timeout_s" in keys and "model.bias_init" in keys
    for key in keys:
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}=.*must be a finite number"):
            load_config([BASE], [f"{key}={value}"])


def _collective_with_the_longest_timeout(rank: int, world: int) -> None:
    import torch.distributed as dist

    from config.schema import MAX_TIMEOUT_S
    from distributed import layout

    cfg = load_config([BASE], ["train.device=cpu", f"parallel.timeout_s={MAX_TIMEOUT_S}"])
    layout.start(plan_from_env(cfg), cfg.parallel.timeout_s)
    total = torch.ones(1)
    dist.all_reduce(total)
    assert total.item() == world


def test_the_longest_timeout_accepted_still_runs_a_collective():
    from bench.workers import run_workers

    run_workers(2, _collective_with_the_longest_timeout, init=False)


@pytest.mark.parametrize("override, message", [
    ("train.lr=[", r"the value of override 'train.lr=\[' is not valid YAML"),
    ("train.lr=!!python/object/apply:os.system [echo]", "is not valid YAML: could not determine a constructor"),
    ("train.lr=*anchor", "YAML alias \\*anchor at 1:1: aliases are not allowed in a config"),
    pytest.param("train.lr=" + "[" * 5000, "nests collections too deeply", id="5000 nested lists"),
    ("train.lr={a: 1, a: 2}", "the value of override 'train.lr={a: 1, a: 2}': duplicate key 'a'"),
])
def test_a_bad_override_value_is_a_config_error_naming_it(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([BASE], [override])


def test_the_command_line_reports_a_bad_override_value(capsys):
    from distributed.main import main

    assert main(["describe", "train.lr=["]) == 2
    assert "error: the value of override 'train.lr=[' is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    pytest.param(bytes(range(256)), "is not UTF-8 text (a binary file?)", id="binary"),
    pytest.param("train:\n  lr: 0.1\n".encode("utf-16"), "is not UTF-8 text", id="utf-16"),
    pytest.param(b"train:\n  ? [lr]\n  : 0.1\n", "is not valid YAML: while constructing a mapping", id="list as key"),
    pytest.param(b"train: " + b"[" * 5000, "nests collections too deeply", id="5000 nested lists"),
    pytest.param(b"#" * (2**20 + 1), "1048577 bytes, over the 1048576-byte limit of a config file", id="over 1 MiB"),
])
def test_a_config_file_that_is_not_yaml_text_is_a_config_error_naming_it(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(f"config file {bad}") + ":? " + re.escape(message)):
        load_config([BASE, bad])


def test_a_wrong_value_is_shown_short(tmp_path):
    # A thousand strings of a thousand characters: a megabyte of repr. (Aliases, which made a small file's
    # repr exponential, are refused outright: tests/test_hostile_memory.py.)
    bad = tmp_path / "long.yaml"
    bad.write_text("train:\n  lr: [" + ", ".join(["x" * 1000] * 1000) + "]\n")
    with pytest.raises(ConfigError, match=r"train.lr: expected float, got \['xxx") as err:
        load_config([BASE, bad])
    assert len(str(err.value)) < 300
