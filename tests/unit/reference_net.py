"""AlexNet written out once more, independently of model/: plain torch modules read off PAPER.md's layer
table, with the paper's LRN by its formula on each tower's maps. The model's towers (fused or not) and its
grouped export are compared with it; it shares nothing with model/layers.py's stage table."""

import torch
import torch.nn.functional as F
from torch import nn

PAPER_LRN = dict(k=2.0, n=5, alpha=1e-4, beta=0.75)
"""PAPER.md, "Local response normalization"."""


def paper_lrn(a: torch.Tensor, k: float, n: int, alpha: float, beta: float) -> torch.Tensor:
    """b[i] = a[i] / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[j]^2)^beta over the maps (dim 1): the
    sum as the squares shifted by each j - i, zero past the edges (the clipped window)."""
    N, half = a.shape[1], n // 2
    squares = F.pad(a * a, (0, 0, 0, 0, half, half))
    window = sum(squares[:, j : j + N] for j in range(2 * half + 1))
    return a / (k + alpha * window) ** beta


class PerTowerLRN(nn.Module):
    """The paper's LRN on each half of the maps: N is the number of maps in a tower."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([paper_lrn(half, **PAPER_LRN) for half in x.chunk(2, dim=1)], dim=1)


WEIGHTED = {"conv1": 0, "conv2": 4, "conv3": 8, "conv4": 10, "conv5": 12, "fc6": 16, "fc7": 18, "fc8": 20}
"""Where each of the paper's layers sits in `plain_grouped_alexnet`."""


def plain_grouped_alexnet(num_classes: int) -> nn.Sequential:
    """An ordinary single-network grouped AlexNet as cuda-convnet2's two-GPU net draws it, for 227x227 inputs
    (no dropout: compare in eval mode)."""
    lrn = PerTowerLRN()
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), lrn, nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), lrn, nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


def by_layer(plain: nn.Sequential) -> dict[str, torch.Tensor]:
    """`plain`'s parameters named as grouped_state_dict names them (conv1.weight, ..., fc8.bias)."""
    return {f"{name}.{p}": getattr(plain[i], p) for name, i in WEIGHTED.items() for p in ("weight", "bias")}
