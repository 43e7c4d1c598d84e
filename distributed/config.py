"""The one typed config: nested dataclasses loaded from YAML, overridden by `section.key=value`.

Everything is checked here, before any process group starts: an unknown or
duplicate key, a wrong type or an impossible value is a `ConfigError` that
names the key.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, get_type_hints

import yaml

from data.config import DataConfig
from distributed.errors import UserError
from model.config import ModelConfig


class ConfigError(UserError):
    """A config value, file or launch setting that cannot work; the message names it."""


SWITCH = ("auto", "on", "off")
"""The values of a fast-path switch; auto is chosen per device (distributed/fast_path.py)."""


@dataclass(frozen=True)
class TrainConfig:
    """The paper's optimisation recipe and the run's length."""

    batch_size: int = 128
    """Images per SGD step over all replicas (the paper: 128)."""
    micro_batches: int = 1
    """Pieces each replica's batch is cut into and pipelined through the towers."""
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
    bf16 (autocast) or auto (distributed/fast_path.py: bf16 on a GPU, fp32 on a CPU)."""
    channels_last: str = "auto"
    """on, off or auto: activations and conv weights in NHWC (distributed/fast_path.py)."""
    compile: str = "auto"
    """on, off, cudagraphs (compiled stages replayed as CUDA graphs; GPU) or auto: torch.compile each
    tower's stages, once per shape (distributed/fast_path.py)."""
    cudnn_benchmark: str = "auto"
    """on, off or auto (on with a GPU): let cuDNN time its convolution algorithms on the first step."""
    stop_at_train_error: float = 0.0
    """End the run after the first epoch whose training top-1 error is at or below this
    (0: never). The paper's Figure 1 counts the epochs each net needs to reach 0.25."""
    stop_when_converged: bool = False
    """End the run once the learning rate has been dropped lr_drops times and validation error has
    then not improved for plateau_patience epochs (the paper stopped after its third drop)."""
    resume: bool = False
    """Continue from the latest checkpoint in checkpoint.dir when there is one."""

    def __post_init__(self) -> None:
        _at_least(self, batch_size=1, micro_batches=1, epochs=1, max_steps=0, lr_drops=0, plateau_patience=1)
        for key, allowed in {
            "optimizer": ("paper", "torch_sgd"),
            "device": ("auto", "cpu", "cuda"),
            "precision": ("auto", "fp32", "tf32", "bf16"),
            "channels_last": SWITCH,
            "compile": (*SWITCH, "cudagraphs"),
            "cudnn_benchmark": SWITCH,
        }.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r}: must be one of {allowed}")
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
    """Seconds a collective waits for a dead or stalled peer before the run fails."""

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"backend={self.backend!r}: must be one of ('auto', 'nccl', 'gloo')")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s={self.timeout_s}: must be positive")


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
        _at_least(self, every_steps=0, keep=1)


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
        _at_least(self, every_steps=1)


@dataclass(frozen=True)
class Config:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _at_least(section: Any, **minimums: int) -> None:
    for key, low in minimums.items():
        if getattr(section, key) < low:
            raise ValueError(f"{key}={getattr(section, key)}: must be at least {low}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML whose mappings refuse a key given twice (PyYAML keeps the last silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at {key_node.start_mark}")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _coerce(value: Any, kind: type, key: str) -> Any:
    """A YAML value as the field's type; YAML 1.1 reads `5e-4` as a string, so floats accept that."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads on/off/true/false as booleans: a switch's values
            return "on" if value else "off"
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown config key {prefix}{key} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a section (mapping), got {value!r}")
            kwargs[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{prefix}{err}") from None


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return loaded


def _parse_override(text: str) -> dict:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    value = yaml.safe_load(raw) if raw else ""
    nested: dict = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(paths: Iterable[str | os.PathLike], overrides: Iterable[str] = ()) -> Config:
    """Layer the YAML files in order, then the `section.key=value` overrides, and check it all."""
    values: dict = {}
    for path in paths:
        values = _merge(values, _read_yaml(Path(path)))
    seen_overrides: set[str] = set()
    for text in overrides:
        key = text.partition("=")[0]
        if key in seen_overrides:
            raise ConfigError(f"override {key} given twice")
        seen_overrides.add(key)
        values = _merge(values, _parse_override(text))
    return _build(Config, values, "")


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain data (for logs and checkpoints)."""
    return dataclasses.asdict(cfg)

