"""On a GPU: CUDA against the CPU reference, two tower processes sharing one GPU over gloo, bf16 against
fp32, checkpoints between CUDA and CPU, no host synchronisation in the step, and ./run.sh.

Skipped without a GPU; `pytest -m cuda tests` runs exactly these (bench/gpu.sh does, on the device).
"""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch._inductor.cudagraph_trees import get_manager

from bench.workers import run_workers
from checkpoints import store
from config.model import ModelConfig
from distributed import layout
from distributed.pipeline import StepKind
from model.alexnet import AlexNet
from tests.conftest import ROOT
from tests.trainer_runs import small_config, train, train_scalars, weights_and_velocity
from training.trainer import Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
]

CUDA = ["train.device=cuda"]
EXACT = [*CUDA, "train.precision=fp32", "train.channels_last=off", "train.compile=off", "train.cudnn_benchmark=off"]


def _logits_and_grads(device: str, dtype: torch.dtype):
    net = AlexNet(ModelConfig(num_classes=10))
    net.init_paper(seed=11)
    net.to(device=device, dtype=dtype)
    net.eval()  # dropout draws differ between CPU and CUDA generators; the layers must not
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(8, 3, 227, 227, generator=g) * 40, torch.randint(10, (8,), generator=g)
    logits = net(x.to(device, dtype))
    F.cross_entropy(logits, y.to(device)).backward()
    return logits.detach().cpu(), {n: p.grad.cpu() for n, p in net.named_parameters()}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_one_process_on_cuda_equals_the_cpu_reference(dtype):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    ref_logits, ref_grads = _logits_and_grads("cpu", dtype)
    logits, grads = _logits_and_grads("cuda", dtype)
    # fp32: logits to 1e-4. The gradients of the early convolutions move by up to ~1% between any two
    # correct kernels: another summation order puts a few pre-activations on the other side of ReLU's
    # kink or flips a max-pool choice (tests/test_fast_path.py measured it on CPU). float64 is the tight
    # check of every gradient.
    logit_tol, grad_tol = (1e-4, 2e-2) if dtype == torch.float32 else (1e-10, 1e-10)
    assert _relative(logits, ref_logits) < logit_tol
    for name, grad in grads.items():
        assert _relative(grad, ref_grads[name]) < grad_tol, name


def _shared_gpu_worker(rank: int, world: int, run_dir: str) -> None:
    trainer = train(run_dir, *EXACT, "parallel.backend=gloo", "model.dropout=0")
    assert trainer.plan.exchanges_via_host and trainer.device.type == "cuda"


def test_two_processes_on_one_gpu_over_gloo_equal_one_process(tmp_path):
    one = train(tmp_path / "one", *EXACT, "model.dropout=0")
    run_workers(2, _shared_gpu_worker, str(tmp_path / "two"), init=False)
    one_losses = torch.tensor(train_scalars(tmp_path / "one", "loss/train"))
    two_losses = torch.tensor(train_scalars(tmp_path / "two", "loss/train"))
    assert len(one_losses) == len(two_losses) == 8
    torch.testing.assert_close(two_losses, one_losses, rtol=1e-4, atol=1e-5)
    assert one.step == 8


def test_bf16_on_cuda_tracks_fp32_over_20_steps(tmp_path):
    # As the CPU test: 16 images seen 10 times, no dropout, a small fixed lr, so the curve is smooth.
    run = ["model.dropout=0", "train.lr=0.001", "train.lr_drops=0", "data.synthetic_train_images=16",
           "train.epochs=10", *CUDA, "train.channels_last=on"]
    train(tmp_path / "fp32", *run, "train.precision=fp32")
    train(tmp_path / "bf16", *run, "train.precision=bf16")
    fp32 = torch.tensor(train_scalars(tmp_path / "fp32", "loss/train"))
    bf16 = torch.tensor(train_scalars(tmp_path / "bf16", "loss/train"))
    assert len(fp32) == len(bf16) == 20
    assert ((bf16 - fp32).abs() / fp32).max() < 2e-2, (fp32, bf16)
    assert bf16[-1] < bf16[0] and not torch.equal(fp32, bf16)


@pytest.mark.usefixtures("fresh_compiler")
def test_cudagraphs_mode_trains_as_eager(tmp_path):
    """The one-pass step (one micro-batch: config.yaml's 4 would run the pipelined schedule) with each compiled
    stage replayed by cudagraph trees, not silently run eagerly: graphs compiled, none skipped, a tree recorded.
    Dropout on: its masks are fresh inputs every step, which the replayed graphs must copy in."""
    run = ["train.lr=0.001", "train.lr_drops=0", "data.synthetic_train_images=16", "train.epochs=10",
           "train.micro_batches=1", *CUDA, "train.precision=fp32", "train.cudnn_benchmark=off",
           "train.channels_last=off"]
    train(tmp_path / "eager", *run, "train.compile=off")
    trainer = train(tmp_path / "graphs", *run, "train.compile=cudagraphs")
    assert trainer.speed.compile == "cudagraphs" and trainer.kind is StepKind.WHOLE
    assert counters["stats"]["unique_graphs"] >= 4 and counters["inductor"]["cudagraph_skips"] == 0, dict(counters)
    assert get_manager(torch.cuda.current_device(), create_if_none_exists=False) is not None
    eager = torch.tensor(train_scalars(tmp_path / "eager", "loss/train"))
    graphs = torch.tensor(train_scalars(tmp_path / "graphs", "loss/train"))
    assert len(eager) == len(graphs) == 20
    assert ((graphs - eager).abs() / eager).max() < 1e-2, (eager, graphs)


def test_a_checkpoint_written_on_cuda_loads_on_cpu_and_back(tmp_path):
    gpu = train(tmp_path / "gpu", *CUDA, "train.max_steps=2")
    saved = {k: v.cpu() for k, v in weights_and_velocity(gpu).items()}
    cfg = small_config(tmp_path / "cpu", "train.device=cpu")
    cpu = Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))
    store.load(cpu.saved.tensors(), store.latest(tmp_path / "gpu" / "ck"))
    for key, value in weights_and_velocity(cpu).items():
        assert torch.equal(value, saved[key]), key
    cpu.progress.step = 2
    cpu.checkpoints.save(cpu.step, cpu.saved)  # written from the CPU
    cfg = small_config(tmp_path / "cpu", *CUDA)
    back = Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))
    assert back.resume() and back.step == 2 and back.device.type == "cuda"
    for key, value in weights_and_velocity(back).items():
        assert torch.equal(value.cpu(), saved[key]), key


def test_the_training_step_never_waits_for_the_gpu(tmp_path):
    cfg = small_config(tmp_path, *CUDA, "train.precision=bf16", "train.channels_last=on", "train.compile=off")
    trainer = Trainer(cfg, layout.start(layout.plan_from_env(cfg, {}), 60))
    images = torch.randint(256, (8, 3, 256, 256), dtype=torch.uint8, device="cuda")
    labels = torch.randint(10, (8,), device="cuda")
    trainer.train_step(images, labels)  # warm-up: allocations and cuDNN's algorithm search may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            trainer.progress.step += 1
            trainer.train_step(images, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_run_sh_on_a_gpu_takes_one_process_and_finishes(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["./run.sh", "train.max_steps=3", "log.progress=false", f"log.dir={tmp_path}", f"checkpoint.dir={tmp_path}/ck"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "processes: 1" in proc.stdout and "cuda" in proc.stdout, proc.stdout[-2000:]
    assert "final validation (centre crop)" in proc.stdout
    assert store.latest(tmp_path / "ck").name == "step_00000003"
