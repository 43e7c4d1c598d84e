"""The one typed config: nested dataclasses, each key documented where it is declared.

config/loading.py builds it from YAML files and `section.key=value`
overrides; every value is checked there or in the sections' `__post_init__`, before
any process group starts, and an impossible one is a `ConfigError` naming the key.
"""

import dataclasses
from dataclasses import dataclass, field

from config.checks import at_least, from_to, one_of, paths
from config.data import DataConfig
from config.errors import UserError
from config.model import ModelConfig


class ConfigError(UserError):
    """A config value, file or launch setting that cannot work; the message names it."""


MAX_TIMEOUT_S = 365 * 24 * 3600.0
"""A year, already "never" for one collective. torch keeps deadlines as 64-bit nanoseconds (292
years); past them the group fails to start (gloo refuses 1e13 s, the TCP store times out at once at
9.2e12 s) and timedelta overflows at 8.6e13 s."""
MIN_TIMEOUT_S = 1.0
"""torch keeps the deadline in milliseconds and the process group's start waits on it too: at 1e-6 s it rounds
to 0 ms and the group fails to start, with C++ frames instead of a message. A second is the least that can
work (the tests of stalled processes use 5 s); set it above the slowest legitimate wait."""
SWITCH = ("auto", "on", "off")
"""The values of a speed switch; auto is chosen per device (training/speed.py)."""


@dataclass(frozen=True)
class TrainConfig:
    """The paper's optimisation recipe and the run's length."""

    batch_size: int = 128
    """Images per SGD step over all replicas (the paper: 128)."""
    micro_batches: int = 4
    """Pieces each replica's batch is cut into and pipelined through the towers (docs/BENCHMARKS.md: 4 is the
    best of 1/2/4/8 for two tower processes on a CPU; one process holding both towers runs fastest at 1)."""
    epochs: int = 90
    """Passes over the training set (the paper: about 90)."""
    max_steps: int = 0
    """Stop after this many steps in all (0: no limit); for smoke runs and benchmarks."""
    lr: float = 0.01
    """Initial learning rate, all layers."""
    momentum: float = 0.9
    """Momentum of the velocity."""
    weight_decay: float = 5e-4
    """Weight decay inside the velocity update."""
    optimizer: str = "paper"
    """paper: v <- m v - wd lr w - lr g, w <- w + v; torch_sgd: torch.optim.SGD (lr outside v)."""
    lr_factor: float = 0.1
    """Factor the learning rate is multiplied by when validation error plateaus."""
    lr_drops: int = 3
    """Most times the learning rate is dropped (the paper: 3)."""
    plateau_patience: int = 1
    """Epochs in a row without a better validation error that trigger a drop."""
    seed: int = 0
    """Seeds init, dropout, data order and augmentation."""
    device: str = "auto"
    """auto (cuda when present), cpu or cuda."""
    precision: str = "auto"
    """fp32 (exact reproduction: no TF32 either), tf32 (fp32 weights, TF32 matrix units; GPU),
    bf16 (autocast) or auto (training/speed.py: bf16 on a GPU, fp32 on a CPU)."""
    channels_last: str = "auto"
    """on, off or auto: activations and conv weights in NHWC (training/speed.py)."""
    compile: str = "auto"
    """on, off, cudagraphs (compiled stages replayed as CUDA graphs; GPU) or auto: torch.compile each
    tower's stages, once per shape (training/speed.py)."""
    cudnn_benchmark: str = "auto"
    """on, off or auto (on with a GPU): let cuDNN time its convolution algorithms on the first step."""
    step_graph: str = "auto"
    """on, off or auto (off: not yet measured on a GPU): the whole one-process step (augmentation, forward,
    backward, the paper's update) replayed as one CUDA graph (training/graphed_step.py). on needs a GPU,
    one process holding both towers, train.micro_batches=1, train.optimizer=paper and compile on or off."""
    grouped: str = "auto"
    """on, off or auto (off: slower on a CPU, not yet measured on a GPU): both towers of one process computed
    as one network per layer (model/grouped.py: groups=2 convolutions, one GEMM per FC layer) from the
    towers' own weights. on needs one process holding both towers and train.micro_batches=1."""
    stop_at_train_error: float = 0.0
    """End the run after the first epoch whose training top-1 error is at or below this
    (0: never). The paper's Figure 1 counts the epochs each net needs to reach 0.25."""
    stop_when_converged: bool = False
    """End the run once the learning rate has been dropped lr_drops times and validation error has
    then not improved for plateau_patience epochs (the paper stopped after its third drop)."""
    resume: bool = False
    """Continue from the latest checkpoint in checkpoint.dir when there is one."""

    def __post_init__(self) -> None:
        at_least(self, batch_size=1, micro_batches=1, epochs=1, max_steps=0, lr_drops=0, plateau_patience=1)
        one_of(self, optimizer=("paper", "torch_sgd"), device=("auto", "cpu", "cuda"),
               precision=("auto", "fp32", "tf32", "bf16"), channels_last=SWITCH, compile=(*SWITCH, "cudagraphs"),
               cudnn_benchmark=SWITCH, step_graph=SWITCH, grouped=SWITCH)
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be positive")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum}: must be in [0, 1)")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor={self.lr_factor}: must be in (0, 1)")
        if not 0 <= self.stop_at_train_error < 1:
            raise ValueError(f"stop_at_train_error={self.stop_at_train_error}: must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay}: must be >= 0")


@dataclass(frozen=True)
class ParallelConfig:
    """How processes share the work."""

    tower_parallel: bool = True
    """With more than one process: one tower per process (pairs form a replica)."""
    backend: str = "auto"
    """auto (nccl on GPUs, gloo on CPUs), nccl, or gloo: gloo also lets two tower processes share
    one GPU, which NCCL refuses; their exchanges then travel through host memory."""
    timeout_s: float = 300.0
    """Seconds any wait for another process lasts before the run fails (MIN_TIMEOUT_S to MAX_TIMEOUT_S): a
    collective's for a dead or stalled peer, the loader's for a loading process, a lock's for its holder (the
    embedded data's cache being packed)."""

    def __post_init__(self) -> None:
        one_of(self, backend=("auto", "nccl", "gloo"))
        from_to(self, timeout_s=(MIN_TIMEOUT_S, MAX_TIMEOUT_S))


@dataclass(frozen=True)
class CheckpointConfig:
    """When and where training state is saved."""

    dir: str = "runs/default/checkpoints"
    """Folder of checkpoints, one subfolder each."""
    every_steps: int = 0
    """Also save every this many steps (0: only at the end of each epoch)."""
    keep: int = 2
    """Most recent checkpoints kept."""

    def __post_init__(self) -> None:
        at_least(self, every_steps=0, keep=1)
        paths(self, "dir")


@dataclass(frozen=True)
class LogConfig:
    """TensorBoard and console output."""

    dir: str = "runs/default"
    """TensorBoard event folder."""
    every_steps: int = 10
    """Scalars are written (and the host synchronises) every this many steps."""
    progress: bool = True
    """A progress bar on rank 0's console."""

    def __post_init__(self) -> None:
        at_least(self, every_steps=1)
        paths(self, "dir")


@dataclass(frozen=True)
class Config:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain data (for logs and checkpoints)."""
    return dataclasses.asdict(cfg)

