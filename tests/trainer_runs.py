"""Small training runs for the tests: the real trainer on a few tiny batches of the embedded data.

`small_words` is the one builder: the override words of a small run in `run_dir` (for the
command line, torchrun, or `small_config`); later words replace earlier ones of the same key.
"""

from pathlib import Path

import torch

from config.loading import load_config
from distributed import layout
from model.alexnet import AlexNet
from tests.conftest import ROOT
from training.trainer import Trainer

SMALL = [
    "model.num_classes=10", "model.bias_init=0.1",
    "data.synthetic_train_images=32", "data.synthetic_val_images=4", "data.workers=0",
    "train.batch_size=8", "train.micro_batches=2", "train.epochs=2", "train.device=cpu",
    "log.every_steps=1", "log.progress=false",
]
"""Two epochs of 4 steps, each batch of 8 pipelined as 2 micro-batches, and 4 validation images: a run in about
70% of the time of config.yaml's 4 micro-batches (of 2 images each) and 16 images (9.4 s against 13.7 s, measured)."""

DETERMINISTIC = ["model.dropout=0", "train.batch_size=4", "train.max_steps=3", "data.synthetic_val_images=4"]
"""Dropout off (its masks are drawn per replica's towers, so layouts differ by design), 3 steps of 4."""

ONE_PIECE = "train.micro_batches=1"
"""Batches of 2-4 images go through whole unless a test asks for micro-batches."""

CLI = ["train.batch_size=2", "train.micro_batches=1", "train.epochs=1", "data.synthetic_train_images=12",
       "data.synthetic_val_images=2", "checkpoint.keep=1"]
"""A tiny run through `python -m distributed.main`, for the subprocess tests: 6 steps of 2 images."""


def small_words(run_dir: Path, *overrides: str) -> list[str]:
    """SMALL, then the run's folders, then `overrides`; a later value of a key replaces an earlier one
    (load_config itself refuses a key given twice)."""
    given = [*SMALL, f"log.dir={run_dir}", f"checkpoint.dir={run_dir}/ck", *overrides]
    return list({o.partition("=")[0]: o for o in given}.values())


def small_config(run_dir: Path, *overrides: str):
    return load_config([ROOT / "config.yaml"], small_words(run_dir, *overrides))


def config(words: list[str]):
    """The config `words` name as they are (small_words' output, as the session's trained run keeps them)."""
    return load_config([ROOT / "config.yaml"], words)


def start(cfg, env: dict | None = None) -> layout.Layout:
    """The layout of this process (world size from the environment, or `env`)."""
    return layout.start(layout.plan_from_env(cfg, env), cfg.parallel.timeout_s)


def train(run_dir: Path, *overrides: str) -> Trainer:
    """Train in this process (world size from the environment) and return the trainer."""
    cfg = small_config(run_dir, *overrides)
    trainer = Trainer(cfg, start(cfg))
    trainer.run()
    return trainer


def train_scalars(run_dir: Path, tag: str) -> list[float]:
    """Values of one TensorBoard scalar, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def weights_and_velocity(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {f"model/{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    for name, p in trainer.model.named_parameters():
        state[f"velocity/{name}"] = trainer.optimizer.state[p]["momentum_buffer"].clone()
    return state


def initial_state(cfg) -> dict[str, torch.Tensor]:
    """weights_and_velocity's entries before the first step: the paper's init from the run's seed, zero velocity."""
    net = AlexNet(cfg.model)
    net.init_paper(cfg.train.seed)
    state = {f"model/{k}": v for k, v in net.state_dict().items()}
    state.update({f"velocity/{k}": torch.zeros_like(v) for k, v in net.named_parameters()})
    return state


def assert_moved_alike(got: torch.Tensor, expected: torch.Tensor, start: torch.Tensor, key: str) -> None:
    """got and expected agree to 1e-4 of how far training moved the tensor from `start`, plus a few
    float32 steps of its own size: a wrong gradient would differ by about the whole move, which a
    plain relative tolerance on a weight (0.01 moved by 2e-5) would miss many times over. The
    velocity is the move itself, so there the check is the move's alone."""
    moved = (expected - start).abs().max().item()
    rounding = 8 * torch.finfo(expected.dtype).eps * expected.abs().max().item() if key.startswith("model/") else 0.0
    off = (got - expected).abs().max().item()
    assert off <= 1e-4 * moved + rounding + 1e-12, f"{key}: off by {off:.3g}, moved {moved:.3g}"
