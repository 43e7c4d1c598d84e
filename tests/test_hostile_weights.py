"""Shared weights (safetensors): the export is exactly the checkpoint and carries what using it needs (the
file alone predicts, from an empty folder), and a file that is not this model's weights is refused from its
header, naming the key and both values, before a tensor byte is read and without running anything in it.

Genuine files come from `python -m results export` of the session's trained run; hostile ones are
its header edited and written back with the data as a sparse file of zeros (the checks must refuse
them before reading it).
"""

import builtins
import json
import os
import re
import stat
import struct
import subprocess
import sys
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import safetensors
import torch
from safetensors import safe_open

from bench.workers import free_port, run_workers
from checkpoints import store
from checkpoints.trained import load_network
from checkpoints.weights import MAX_HEADER_BYTES
from config.errors import UserError
from distributed import layout
from results.__main__ import main as results_main
from tests import dcp_checkpoints
from tests.conftest import ROOT
from tests.image_files import jpeg, png, write_image
from tests.processes import CPU_ENV
from tests.trainer_runs import config
from training.evaluation import evaluate_checkpoints

CPU = torch.device("cpu")


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


def test_the_export_carries_its_class_names_and_mean_readable_by_others(trained, exported):
    trainer, _, _ = trained
    with safe_open(exported, framework="pt") as f:
        assert json.loads(f.metadata()["classes"]) == trainer.data.classes
        assert torch.equal(f.get_tensor("mean"), trainer.data.stats.mean_image)  # data.mean: image, as trained
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(exported).st_mode) == 0o644 & ~umask


# bvlc_alexnet's deploy.prototxt (Caffe's model zoo), the blob shapes of each layer: conv2, conv4 and conv5
# are `group: 2`. The export matches them but for FC8's outputs (10 classes here).
BVLC_ALEXNET = {"conv1": [96, 3, 11, 11], "conv2": [256, 48, 5, 5], "conv3": [384, 256, 3, 3],
                "conv4": [384, 192, 3, 3], "conv5": [256, 192, 3, 3], "fc6": [4096, 9216], "fc7": [4096, 4096],
                "fc8": [10, 4096]}


@torch.no_grad()
def test_what_the_export_loads_into_and_what_it_does_not(trained, exported):
    """The README's "What the weights are": this project's grouped net and Caffe's bvlc_alexnet layout, not
    torchvision's single-tower alexnet."""
    import torchvision
    from safetensors.torch import load_file

    from model.export import grouped_network

    trainer, _, overrides = trained
    state = load_file(exported)
    mean = state.pop("mean")
    assert {k: list(v.shape) for k, v in state.items() if k.endswith(".weight")} == {
        f"{k}.weight": v for k, v in BVLC_ALEXNET.items()}
    net = grouped_network(config(overrides).model)
    net.load_state_dict(state)
    images = trainer.data.val.load(torch.arange(2))[0]
    torch.testing.assert_close(net(images[:, :, 14:241, 14:241].float() - mean[:, 14:241, 14:241]),
                               trainer.model.eval()(trainer.augment.centre(images)), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="size mismatch"):  # its widths are the paper's 2 x 48 ...
        torchvision.models.alexnet(num_classes=10).load_state_dict(
            {f"features.{i}.{p}": state[f"conv{n}.{p}"] for n, i in zip(range(1, 6), (0, 3, 6, 8, 10))
             for p in ("weight", "bias")}, strict=False)


def _predict_command(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**CPU_ENV, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "results", "predict", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_file_alone_predicts_in_an_empty_folder(trained, exported, tmp_path, capsys):
    """`results predict --checkpoint alexnet.safetensors --image photo.jpg` with nothing else: no config, no data,
    printing what the checkpoint prints with its training config, and writing nothing."""
    trainer, _, overrides = trained
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "alexnet.safetensors").write_bytes(exported.read_bytes())
    write_image(folder / "photo.jpg", jpeg(trainer.data.val.load(torch.arange(1))[0][0], quality=95))
    assert results_main(["predict", "--image", str(folder / "photo.jpg"), *overrides]) == 0
    from_checkpoint = capsys.readouterr().out.replace(str(folder / "photo.jpg"), "photo.jpg")
    done = _predict_command(["--checkpoint", "alexnet.safetensors", "--image", "photo.jpg"], folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout == from_checkpoint
    assert sorted(p.name for p in folder.iterdir()) == ["alexnet.safetensors", "photo.jpg"]


def test_a_config_that_is_not_the_files_is_refused_naming_the_key(trained, exported, tmp_path):
    trainer, _, _ = trained
    image = write_image(tmp_path / "val0.png", png(trainer.data.val.load(torch.arange(1))[0][0]))
    done = _predict_command(["--checkpoint", str(exported), "--image", str(image), "model.lrn=none"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "model.lrn: 'paper' -> 'none'" in done.stderr, done.stderr


def test_a_model_config_the_file_records_is_checked_as_a_config_file_is(trained, exported, tmp_path, capsys):
    header = read_header(exported)
    saved = json.loads(header["__metadata__"]["model"])
    header["__metadata__"]["model"] = json.dumps({**saved, "lrn_size": 10**9})
    crafted = craft(tmp_path / "crafted.safetensors", header)
    image = write_image(tmp_path / "grey.png", png(torch.full((3, 8, 8), 128, dtype=torch.uint8)))
    assert results_main(["predict", "--checkpoint", str(crafted), "--image", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: weights file {crafted}: its model config: model.lrn_size") and err.count("\n") == 1


def test_figures_from_the_file_alone_print_what_the_checkpoint_prints(trained, exported, tmp_path, capsys):
    _, _, overrides = trained
    assert results_main(["figures", "--out", str(tmp_path / "a"), *overrides]) == 0
    from_checkpoint = capsys.readouterr().out
    assert results_main(["figures", "--out", str(tmp_path / "b"), "--checkpoint", str(exported)]) == 0
    assert capsys.readouterr().out == from_checkpoint.replace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b" / "figure3_conv1.png").read_bytes() == (tmp_path / "a" / "figure3_conv1.png").read_bytes()


def test_figure4_from_the_file_needs_the_data_of_its_classes(trained, exported, tmp_path, capsys):
    """Its nearest training images come from the data the config names: other classes are refused before
    anything is written."""
    trainer, _, _ = trained
    image = write_image(tmp_path / "val0.png", png(trainer.data.val.load(torch.arange(1))[0][0]))
    other = ["data.synthetic_classes=5", "data.synthetic_train_images=16", "data.synthetic_val_images=5",
             "train.batch_size=8"]
    assert results_main(["figures", "--out", str(tmp_path / "out"), "--checkpoint", str(exported),
                         "--image", str(image), *other]) == 2
    assert "are not of the classes this net was trained on" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_towers_state_dict_inverts_grouped_state_dict():
    from config.model import ModelConfig
    from model.alexnet import AlexNet
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
    started = layout.start(layout.plan_from_env(cfg), cfg.parallel.timeout_s)
    net = load_network(cfg, path, CPU, started)
    rates = evaluate_checkpoints(cfg, [path], started)
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
    trainer, _, overrides = trained
    image = tmp_path / "val0.png"
    write_image(image, png(trainer.data.val.load(torch.arange(1))[0][0]))
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
    "no class names": (lambda h: h["__metadata__"].pop("classes"), "no class names in its metadata"),
    "more class names than outputs": (lambda h: h["__metadata__"].update(classes=json.dumps(["a"] * 11)),
                                      "11 class names for a net of 10 outputs"),
    "class names that are not strings": (lambda h: h["__metadata__"].update(classes="[1, 2]"),
                                         "are not a list of strings"),
    "a mean of another shape": (_then_relaid(lambda h: h["mean"].update(shape=[3, 227, 227])),
                                "mean has shape [3, 227, 227], neither per position [3, 256, 256] nor per channel [3]"),
    "no mean": (_then_relaid(lambda h: h.pop("mean")), "missing 'mean'"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_file_that_is_not_this_models_weights_is_refused_from_its_header(trained, exported, tmp_path, edit,
                                                                              nothing_read):
    _, _, overrides = trained
    change, message = EDITS[edit]
    header = read_header(exported)
    data_bytes = data_end(header)
    change(header)
    relaid = edit in ("wrong shape", "wrong dtype", "a missing tensor", "an extra tensor", "a mean of another shape",
                      "no mean")
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
    with pytest.raises(UserError, match=f"header says it is 8589934592 bytes long, over the {MAX_HEADER_BYTES}-byte limit"):
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
