"""Hyperparameters of the network itself (PAPER.md, "The network")."""

import dataclasses
from dataclasses import dataclass

from config.checks import at_least, from_to, one_of

LRN_SIZE_MAX = 255
"""A wider window sums the same maps: from any of conv2's 128 maps a tower (the widest layer LRN follows),
255 reaches all of them. torch pads the window in memory, so 100,000 would take tens of gigabytes."""
NUM_CLASSES_MAX = 100_000
"""FC8 then holds 4096 x 100,000 weights (1.6 GB, three times over with the gradient and velocity); ImageNet's
largest release has 21,841 classes."""


@dataclass(frozen=True)
class ModelConfig:
    """The architecture; every default is the paper's."""

    input_size: int = 227
    """227 (no conv1 padding, gives the paper's 55x55) or 224 (conv1 padding 2)."""
    towers: int = 2
    """2: the paper's two-tower net; 1: its one-GPU baseline (half the kernels, conv5 and FCs full)."""
    lrn: str = "paper"
    """paper: k + alpha*sum; alpha_over_n: k + alpha/n*sum (Caffe, cuda-convnet2, torch); none."""
    lrn_k: float = 2.0
    """LRN additive constant k."""
    lrn_size: int = 5
    """LRN window n, in adjacent kernel maps of the same tower: at most LRN_SIZE_MAX."""
    lrn_alpha: float = 1e-4
    """LRN alpha, read by the convention in `lrn`."""
    lrn_beta: float = 0.75
    """LRN exponent beta."""
    activation: str = "relu"
    """relu (the paper) or tanh (its Figure 1 comparison)."""
    pooling: str = "overlapping"
    """overlapping: max-pool 3/2 (the paper); non_overlapping: 2/2 (its ablation)."""
    dropout: float = 0.5
    """Dropout probability after the ReLUs of FC6 and FC7; 0 turns it off."""
    weight_std: float = 0.01
    """Standard deviation of the zero-mean Gaussian every weight starts from."""
    bias_init: float = 1.0
    """Bias of conv2, conv4, conv5, FC6, FC7 (the others start at 0)."""
    num_classes: int = 1000
    """Outputs of FC8: at most NUM_CLASSES_MAX."""

    def __post_init__(self) -> None:
        one_of(self, input_size=(227, 224), towers=(1, 2), lrn=("paper", "alpha_over_n", "none"),
               activation=("relu", "tanh"), pooling=("overlapping", "non_overlapping"))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")
        from_to(self, lrn_size=(1, LRN_SIZE_MAX), num_classes=(1, NUM_CLASSES_MAX))
        if not self.lrn_k > 0:  # k is what keeps the denominator from 0 where the window is dark
            raise ValueError(f"lrn_k={self.lrn_k}: must be positive")
        at_least(self, lrn_alpha=0, lrn_beta=0)
        if self.weight_std <= 0:
            raise ValueError(f"weight_std={self.weight_std}: must be positive")

    def differences(self, saved: dict) -> list[str]:
        """`key: saved value -> this value` for every architecture key where `saved` (a ModelConfig
        as a dict, recorded with trained weights) differs from this config. Options that keep
        the shapes but change the function (LRN, activation, pooling, input size) count too."""
        mine = {k: v for k, v in dataclasses.asdict(self).items() if k not in TRAINING_ONLY}
        keys = sorted(set(mine) | set(saved) - TRAINING_ONLY)
        return [f"model.{k}: {saved.get(k, '(absent)')!r} -> {mine.get(k, '(absent)')!r}"
                for k in keys if saved.get(k) != mine.get(k)]


TRAINING_ONLY = {"dropout", "weight_std", "bias_init"}
"""ModelConfig keys that shape training (the init, dropout's rate) but not the trained net's function."""
