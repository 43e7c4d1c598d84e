"""Shared weights (safetensors): the export is exactly the checkpoint, and a file that is not this
model's weights is refused from its header, naming the key and both values, before a tensor byte
is read and without running anything in it.

Genuine files come from `python -m results export` of the session's trained run; hostile ones are
its header edited and written back with the data as a sparse file of zeros (the checks must refuse
them before reading it).
"""

import builtins
import json
import os
import re
import struct
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from checkpoints import store
from checkpoints.tensor_file import MAX_HEADER_BYTES
from checkpoints.trained import load_network
from config.errors import UserError
from config.loading import load_config
from distributed import layout
from distributed.workers import free_port, run_workers
from results.__main__ import main as results_main
from tests import dcp_checkpoints
from tests.conftest import ROOT
from training.evaluation import evaluate_checkpoints

CPU = torch.device("cpu")


def config(overrides):
    return load_config([ROOT / "config.yaml"], overrides)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained run's newest checkpoint, exported by the command."""
    _, _, overrides = trained
    target = tmp_path_factory.mktemp("weights") / "alexnet.safetensors"
    assert results_main(["export", "--out", str(target), *overrides]) == 0
    return target


def rewritten(exported, target, change) -> object:
    """`target`: the export's tensors after `change` (a function of the dict of them), with its metadata."""
    with safe_open(exported, framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    change(tensors)
    save_file(tensors, target, metadata=metadata)
    return target


def read_header(path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def data_end(header: dict) -> int:
    return max(e["data_offsets"][1] for k, e in header.items() if k != "__metadata__")


def craft(path, header: dict, data_bytes: int | None = None):
    """A safetensors file with `header`, followed by `data_bytes` zeros (default: the end of its last
    tensor), written sparse."""
    raw = json.dumps(header).encode()
    data_bytes = data_end(header) if data_bytes is None else data_bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
    os.truncate(path, 8 + len(raw) + data_bytes)
    return path


@torch.no_grad()
def test_the_export_gives_exactly_the_checkpoints_logits(trained, exported):
    trainer, _, overrides = trained
    cfg = config(overrides)
    from_checkpoint = load_network(cfg, store.latest(cfg.checkpoint.dir), CPU)
    from_file = load_network(cfg, exported, CPU)
    images = trainer.augment.centre(trainer.data.val.load(torch.arange(4))[0])
    logits = from_file(images)
    assert torch.equal(logits, from_checkpoint(images))
    assert logits.std() > 0  # a net that is there: not all zeros, not one constant
    with safe_open(exported, framework="pt") as f:
        assert json.loads(f.metadata()["model"]) == asdict(cfg.model)
        assert f.get_slice("conv2.weight").get_shape() == [256, 48, 5, 5]  # grouped, Caffe's layout


def test_towers_state_dict_inverts_grouped_state_dict():
    from model.alexnet import AlexNet
    from model.config import ModelConfig
    from model.export import grouped_state_dict, towers_state_dict

    for towers in (2, 1):
        net = AlexNet(ModelConfig(num_classes=10, towers=towers))
        net.init_paper(0)
        state = net.state_dict()
        grouped = grouped_state_dict(state, towers)
        assert towers_state_dict(grouped, towers).keys() == state.keys()
        for tower in range(towers):
            own = towers_state_dict(grouped, towers, [tower])
            assert own.keys() == {k for k in state if k.startswith(f"towers.{tower}.")}
            for key, value in own.items():
                assert torch.equal(value, state[key]), key


def _from_file_in_two_processes(rank: int, world: int, overrides: list[str], path: str, out: str, port: int) -> None:
    from distributed.main import main as run_main

    cfg = config(overrides)
    run = layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s)
    net = load_network(cfg, path, CPU, run)
    rates = evaluate_checkpoints(cfg, [path], run)
    torch.save({"state": net.state_dict(), "rates": {w: (r.top1, r.top5, r.images) for w, r in rates.items()}},
               f"{out}/rank{rank}.pt")
    layout.stop()
    os.environ["MASTER_PORT"] = str(port)  # the command under the same launch, on a port of its own
    assert run_main(["evaluate", "--checkpoint", path, *overrides]) == 0


def test_each_tower_process_takes_its_slices_of_the_file(trained, exported, tmp_path):
    _, _, overrides = trained
    cfg = config(overrides)
    folder = store.latest(cfg.checkpoint.dir)
    whole = load_network(cfg, folder, CPU).state_dict()
    one = layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s)
    expected = {w: (r.top1, r.top5, r.images) for w, r in evaluate_checkpoints(cfg, [folder], one).items()}
    run_workers(2, _from_file_in_two_processes, overrides, str(exported), str(tmp_path), free_port(), init=False)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["rates"] == expected, rank
        assert got["state"].keys() == {k for k in whole if k.startswith(f"towers.{rank}.")}
        for key, value in got["state"].items():
            assert torch.equal(value, whole[key]), key


def test_predict_reads_the_file_as_it_reads_the_checkpoint(trained, exported, tmp_path, capsys):
    from torchvision.io import write_png

    trainer, _, overrides = trained
    image = tmp_path / "val0.png"
    write_png(trainer.data.val.load(torch.arange(1))[0][0], str(image))
    assert results_main(["predict", "--image", str(image), *overrides]) == 0
    from_checkpoint = capsys.readouterr().out
    assert results_main(["predict", "--image", str(image), "--checkpoint", str(exported), *overrides]) == 0
    assert capsys.readouterr().out == from_checkpoint


# -- refused -------------------------------------------------------------------------------


@pytest.fixture
def nothing_read(monkeypatch):
    """Fail the test if a tensor of a file is read: its header only may be (safe_open maps the file and
    parses the header; a tensor's bytes are read when one is asked for)."""
    real = safetensors.safe_open

    class HeaderOnly:
        def __init__(self, *args, **kwargs):
            self.opened = real(*args, **kwargs)

        def __enter__(self):
            self.file = self.opened.__enter__()
            return self

        def __exit__(self, *exc):
            return self.opened.__exit__(*exc)

        def __getattr__(self, name):  # keys(), metadata()
            return getattr(self.file, name)

        def get_slice(self, key):
            part = self.file.get_slice(key)
            return SimpleNamespace(get_shape=part.get_shape, get_dtype=part.get_dtype)

        def get_tensor(self, key):
            raise AssertionError("a tensor was read before the header was refused")

    monkeypatch.setattr(safetensors, "safe_open", HeaderOnly)


def _other_config(header):
    saved = json.loads(header["__metadata__"]["model"])
    header["__metadata__"]["model"] = json.dumps({**saved, "lrn": "none", "num_classes": 1000})


def _swap_offsets(header):
    # conv3.bias and conv4.bias have the same size: both made to point at conv3's bytes
    header["conv4.bias"]["data_offsets"] = header["conv3.bias"]["data_offsets"]


def _then_relaid(change):
    """`change`, then every span laid end to end again: a well-formed file whose tensors differ from the model's."""
    def edit(header):
        change(header)
        relaid, _ = dcp_checkpoints.relaid(header, {})
        header.clear()
        header.update(relaid)
    return edit


EDITS = {
    "wrong shape": (_then_relaid(lambda h: h["fc8.weight"].update(shape=[11, 4096])),
                    "fc8.weight has shape [11, 4096], this model's is [10, 4096]"),
    "wrong dtype": (_then_relaid(lambda h: h["fc8.bias"].update(dtype="F64")),
                    "fc8.bias has dtype 'F64', this model's is 'F32'"),
    "another model config": (_other_config, "model.lrn: 'none' -> 'paper'; model.num_classes: 1000 -> 10"),
    "no model config": (lambda h: h.pop("__metadata__"), "no model config in its metadata"),
    "an extra tensor": (_then_relaid(lambda h: h.update({"fc9.weight": dict(h["fc8.bias"])})),
                        "unexpected 'fc9.weight'"),
    "a missing tensor": (_then_relaid(lambda h: h.pop("conv1.bias")), "missing 'conv1.bias'"),
    "overlapping tensors": (_swap_offsets, "not a complete safetensors file"),
    "a span that is not its shape": (lambda h: h["fc8.weight"].update(shape=[11, 4096]),
                                     "invalid shape, data type, or offset"),
    "an oversized header": (lambda h: h["__metadata__"].update(pad="x" * MAX_HEADER_BYTES),
                            f"over the {MAX_HEADER_BYTES}-byte limit"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_file_that_is_not_this_models_weights_is_refused_from_its_header(trained, exported, tmp_path, edit,
                                                                              nothing_read):
    _, _, overrides = trained
    change, message = EDITS[edit]
    header = read_header(exported)
    data_bytes = data_end(header)
    change(header)
    relaid = edit in ("wrong shape", "wrong dtype", "a missing tensor", "an extra tensor")
    crafted = craft(tmp_path / "crafted.safetensors", header, None if relaid else data_bytes)
    with pytest.raises(UserError, match=re.escape(str(crafted)) + ".*" + re.escape(message)):
        load_network(config(overrides), crafted, CPU)


def test_a_truncated_file_is_refused_before_reading(trained, exported, tmp_path, nothing_read):
    _, _, overrides = trained
    header = read_header(exported)
    total = data_end(header)
    crafted = craft(tmp_path / "short.safetensors", header, total - 1)
    with pytest.raises(UserError, match=f"{crafted}: not a complete safetensors file .*file not fully covered"):
        load_network(config(overrides), crafted, CPU)


def test_a_header_length_of_gigabytes_is_never_read(trained, tmp_path, nothing_read):
    # A sparse file as long as its header claims: reading that header would take 8 GiB of memory.
    _, _, overrides = trained
    crafted = tmp_path / "huge.safetensors"
    crafted.write_bytes(struct.pack("<Q", 2**33) + b"{")
    os.truncate(crafted, 8 + 2**33)
    with pytest.raises(UserError, match="header says it is 8589934592 bytes long, over the 65536-byte limit"):
        load_network(config(overrides), crafted, CPU)


class Exec:
    """Pickles as builtins.exec(code that creates the marker)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("name, why", [("weights.pt", "nor a .safetensors weights file"),
                                       ("weights.safetensors", "refused unread")])
def test_a_pickle_given_as_weights_is_refused_and_never_run(trained, tmp_path, capsys, name, why):
    # torch.save's zip begins "PK\x03\x04...": read as a header length, far over the limit.
    _, _, overrides = trained
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": Exec(marker)}, tmp_path / name)
    assert results_main(["export", "--checkpoint", str(tmp_path / name), "--out", str(tmp_path / "o.safetensors"),
                         *overrides]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / name) in err and why in err
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists()


def test_a_mismatched_file_stops_evaluate_before_any_process_group(trained, exported, tmp_path, capsys):
    from distributed.main import main as run_main

    _, _, overrides = trained
    header = read_header(exported)
    _other_config(header)
    crafted = craft(tmp_path / "other.safetensors", header)
    assert run_main(["evaluate", "--checkpoint", str(crafted), *overrides]) == 2
    assert "model.num_classes: 1000 -> 10" in capsys.readouterr().err


def test_export_writes_only_safetensors(trained, tmp_path, capsys):
    _, _, overrides = trained
    assert results_main(["export", "--out", str(tmp_path / "alexnet.pt"), *overrides]) == 2
    assert "name the file *.safetensors" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
