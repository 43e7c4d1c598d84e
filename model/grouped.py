"""Every tower of one process computed as one network per layer: the grouped arithmetic.

The same function and the same parameters as the towers run one by one (model/alexnet.py), in
half the kernels: each layer's tower weights are stacked into one weight at every call, so the
parameters, the checkpoints (keyed by tower) and the gradients (autograd splits them back) stay
the towers' own. A layer that reads the whole input (conv1, and each stage's first layer: conv3,
FC6, FC7) becomes one layer with every tower's outputs; a layer that reads its own tower's
channels (conv2, conv4, conv5) a `groups=towers` convolution; FC8, split by input, one layer over
both towers' FC7 whose product is the sum of the partial logits. The outputs come out in tower
order, which is the order the exchange joins them in, so each stage returns the joined output.
LRN runs on each tower's channels alone (its window never crosses towers); dropout multiplies by
the towers' own masks side by side, so the masks are the ones the towers would draw.
"""

from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import FUSED, STAGES, reads_whole_input, split_by_input

PER_TOWER = ("lrn", FUSED)
"""Companions whose output at a channel reads other channels (LRN's window, alone or fused with ReLU and
pooling): run on each tower's channels alone. The others act on each value or each channel on its own, so
they run on the joined channels at once."""


class GroupedTowers:
    """The towers' stages as grouped computations over the towers' own modules (not a module itself, so
    the parameters stay registered once, under their towers)."""

    def __init__(self, towers: Sequence[nn.Module]) -> None:
        self.towers = tuple(towers)

    def layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Layer `name` of every tower, on the joined input `x`; the towers' outputs joined."""
        parts = [getattr(t, name) for t in self.towers]
        if split_by_input(name):  # FC8: weights joined along the input; the one bias is tower 0's
            return F.linear(x, torch.cat([p.weight for p in parts], 1), parts[0].bias)
        weight, bias = torch.cat([p.weight for p in parts]), torch.cat([p.bias for p in parts])
        if isinstance(parts[0], nn.Conv2d):
            groups = 1 if reads_whole_input(name) else len(parts)
            return F.conv2d(x, weight, bias, parts[0].stride, parts[0].padding, groups=groups)
        assert reads_whole_input(name), f"{name}: a linear layer reads the whole input or is split by input"
        return F.linear(x, weight, bias)

    def run_stage(self, index: int, x: torch.Tensor, keeps: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Stage `index` on its (joined) input `x`, with each tower's dropout mask in `keeps` (None: no dropout)."""
        companions = self.towers[0]  # every tower's companions are the same stateless modules
        for layer in STAGES[index].layers:
            x = self.layer(layer.name, x)
            for step in companions.steps[layer.name]:  # the towers' own steps: the fused one where there is one
                if step == "dropout":
                    x = x if keeps is None else x * torch.cat(tuple(keeps), 1)
                elif step in PER_TOWER:
                    x = per_tower(getattr(companions, step), x, len(self.towers))
                else:
                    x = getattr(companions, step)(x)
        return x

    def stages(self) -> tuple[Callable, ...]:
        """One function per stage, (x, keeps) -> joined output: what torch.compile compiles, one graph each."""
        return tuple(partial(self.run_stage, k) for k in range(len(STAGES)))


def per_tower(module: nn.Module, x: torch.Tensor, towers: int) -> torch.Tensor:
    """`module` on each tower's share of `x`'s channels alone. In NCHW each image's shares lie one after
    the other, so they are the images of a view with `towers` times the batch (one call); otherwise
    (channels_last) one call per share."""
    if towers == 1:
        return module(x)
    n = x.shape[0]
    if x.is_contiguous():
        out = module(x.view(n * towers, x.shape[1] // towers, *x.shape[2:]))
        return out.reshape(n, -1, *out.shape[2:])
    return torch.cat([module(part) for part in x.chunk(towers, 1)], 1)
