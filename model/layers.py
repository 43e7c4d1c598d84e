"""The network declared once: its stages, their layers, and the layers' shapes and companions.

A forward pass is stage 0, exchange, stage 1, ..., stage 3, exchange: the towers meet
where the paper's GPUs talked. Every stage but the last ends in a *gather* (each tower's
output concatenated along channels, the next stage's input in every tower); the last
ends in a *sum* (FC8 is split by input, so the towers' partial logits add up to the
logits). `AlexNet.forward`, the pipelined step, the per-stage gradient buckets, the
layer table, the grouped export and its ONNX network all walk STAGES.
"""

from dataclasses import dataclass

from torch import nn

from config.model import ModelConfig
from model.lrn import LocalResponseNorm

GATHER, SUM = "gather", "sum"


@dataclass(frozen=True)
class Layer:
    """One conv (kernel > 0) or fully connected (kernel 0) layer and what follows it, in order:
    "act" (ReLU or tanh), "lrn", "pool", "flatten", "dropout"."""

    name: str
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    layers: tuple[Layer, ...]
    exchange: str
    """GATHER or SUM: how the towers' outputs of this stage meet."""

    @property
    def dropout_layer(self) -> str | None:
        """The layer whose output is dropped out in training, if any (one mask per stage)."""
        return next((layer.name for layer in self.layers if "dropout" in layer.after), None)


STAGES = (
    Stage((Layer("conv1", 11, stride=4, after=("act", "lrn", "pool")),
           Layer("conv2", 5, padding=2, after=("act", "lrn", "pool"))), GATHER),
    Stage((Layer("conv3", 3, padding=1, after=("act",)),
           Layer("conv4", 3, padding=1, after=("act",)),
           Layer("conv5", 3, padding=1, after=("act", "pool", "flatten"))), GATHER),
    Stage((Layer("fc6", after=("act", "dropout")),), GATHER),
    Stage((Layer("fc7", after=("act", "dropout")), Layer("fc8")), SUM),
)

LAYERS = tuple(layer.name for stage in STAGES for layer in stage.layers)

CONV1_PADDING = {227: 0, 224: 2}
"""conv1's padding per input size: both give the paper's 55x55 maps."""

POOLED_SIDE = 6
"""Side of the pool5 maps for both input sizes and both pooling modes."""

BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
"""Layers whose biases start at `bias_init` (1 in the paper); the others start at 0."""


def widths(cfg: ModelConfig) -> dict[str, int]:
    """Output kernels (or neurons) of each layer in one tower; FC8's are all the classes (split by input)."""
    if cfg.towers == 2:
        conv, fc = (48, 128, 192, 192, 128), 2048
    else:
        # The paper's one-GPU baseline halves the conv kernels but keeps conv5 and the
        # FC layers whole, so that both nets have about the same parameter count.
        conv, fc = (48, 128, 192, 192, 256), 4096
    return {**{f"conv{i + 1}": c for i, c in enumerate(conv)}, "fc6": fc, "fc7": fc, "fc8": cfg.num_classes}


def fan_ins(cfg: ModelConfig) -> dict[str, int]:
    """Input channels (or features) of each layer in one tower: a stage's first layer reads every
    tower's gathered output of the stage before; the others read their own tower's."""
    out = widths(cfg)
    fan_in, previous = {}, 3
    for k, stage in enumerate(STAGES):
        for j, layer in enumerate(stage.layers):
            fan_in[layer.name] = previous * (cfg.towers if k > 0 and j == 0 else 1)
            previous = out[layer.name] * (POOLED_SIDE**2 if "flatten" in layer.after else 1)
    return fan_in


def reads_whole_input(name: str) -> bool:
    """Whether every tower reads the same input into this layer: the image (conv1) or the gathered
    outputs of the stage before (each stage's first layer). The others read their own tower's."""
    return any(stage.layers[0].name == name for stage in STAGES)


def split_by_input(name: str) -> bool:
    """FC8: each tower multiplies its own FC7 half; the partial logits are summed, so tower 0 alone holds the bias."""
    return name == STAGES[-1].layers[-1].name and STAGES[-1].exchange == SUM


def build_layer(cfg: ModelConfig, layer: Layer, fan_in: int, width: int, groups: int = 1, bias: bool = True) -> nn.Module:
    """The conv or linear module of `layer` with these sizes (the towers' own, or the grouped net's)."""
    if layer.kernel:
        padding = CONV1_PADDING[cfg.input_size] if layer.name == "conv1" else layer.padding
        return nn.Conv2d(fan_in, width, layer.kernel, stride=layer.stride, padding=padding, groups=groups)
    return nn.Linear(fan_in, width, bias=bias)


FUSED = "act_lrn_pool"
"""The companion that computes ("act", "lrn", "pool") in one pass (model/lrn/), where the net has a ReLU and LRN."""


def companions(cfg: ModelConfig) -> dict[str, nn.Module]:
    """The modules a layer's `after` names: one factory for the towers and the grouped network,
    so the two cannot drift (dropout is a mask, applied by the caller); and FUSED, for the towers."""
    pool = (3, 2) if cfg.pooling == "overlapping" else (2, 2)
    lrn = (cfg.lrn_size, cfg.lrn_alpha, cfg.lrn_beta, cfg.lrn_k, cfg.lrn)
    modules = {
        "act": nn.ReLU() if cfg.activation == "relu" else nn.Tanh(),
        "lrn": nn.Identity() if cfg.lrn == "none" else LocalResponseNorm(*lrn),
        "pool": nn.MaxPool2d(*pool),
        "flatten": nn.Flatten(),
    }
    if cfg.activation == "relu" and cfg.lrn != "none":
        modules[FUSED] = LocalResponseNorm(*lrn, relu=True, pool=pool)
    return modules


def companion_steps(after: tuple[str, ...], fused: bool) -> tuple[str, ...]:
    """The companions to run for a layer's `after`: FUSED in place of ("act", "lrn", "pool") when `fused`
    (the same function in one pass: neither the ReLU's nor the LRN's output is written out)."""
    run = ("act", "lrn", "pool")
    return (FUSED,) + after[len(run):] if fused and after[: len(run)] == run else after
