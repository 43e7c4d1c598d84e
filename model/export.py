"""The towers as one grouped network, in the layout Caffe's bvlc_alexnet uses.

conv2, conv4 and conv5 become `groups=towers` convolutions whose weights stack the
towers' kernels; conv1, conv3 and the FC layers become whole layers; LRN runs on each
tower's channels separately (a window across towers would mix them, which the paper's
net never does). Both are read off model/layers.py's STAGES, as the towers are, so
`grouped_network` loads `grouped_state_dict` as it is and gives the towers' numbers
with no exchange in sight; `towers_state_dict` cuts a grouped state dict back into towers.
"""

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from config.model import ModelConfig
from model.layers import LAYERS, STAGES, build_layer, companions, fan_ins, reads_whole_input, split_by_input, widths


def grouped_state_dict(towers_state: dict[str, torch.Tensor], towers: int = 2) -> dict[str, torch.Tensor]:
    """Merge `towers.<i>.<layer>.<param>` entries of all towers into Caffe-named whole layers.

    Output kernels of every layer are stacked tower after tower, which is the channel
    order the exchange produces; FC8 was split by input, so its weights are joined along
    the input dimension and its bias is tower 0's.
    """
    out: dict[str, torch.Tensor] = {}
    for layer in LAYERS:
        by_input = split_by_input(layer)
        weights = [towers_state[f"towers.{t}.{layer}.weight"] for t in range(towers)]
        out[f"{layer}.weight"] = torch.cat(weights, dim=1 if by_input else 0)
        biases = [towers_state[f"towers.{t}.{layer}.bias"] for t in range(towers) if not by_input or t == 0]
        out[f"{layer}.bias"] = torch.cat(biases)
    return out


def towers_state_dict(
    grouped: Mapping[str, Any], towers: int = 2, indices: Sequence[int] | None = None
) -> dict[str, Any]:
    """The inverse of grouped_state_dict: `towers.<i>.<layer>.<param>` for the towers in `indices` (all by
    default), each tower's equal share of the whole layer along the dimension its parts were joined in.

    The values only need a `shape` and tensor-style slicing, so a lazy slice of a file (a
    safetensors slice) yields a process's own tower without reading the other's.
    """
    out: dict[str, Any] = {}
    for layer in LAYERS:
        dim = 1 if split_by_input(layer) else 0
        weight = grouped[f"{layer}.weight"]
        share = weight.shape[dim] // towers
        for t in range(towers) if indices is None else indices:
            part = (slice(None),) * dim + (slice(t * share, (t + 1) * share),)
            out[f"towers.{t}.{layer}.weight"] = weight[part]
            if split_by_input(layer):  # FC8's partial logits are summed: its one bias is tower 0's
                if t == 0:
                    out[f"towers.{t}.{layer}.bias"] = grouped[f"{layer}.bias"][:]
            else:
                out[f"towers.{t}.{layer}.bias"] = grouped[f"{layer}.bias"][t * share : (t + 1) * share]
    return out


class TowerLRN(nn.Module):
    """LRN applied to each tower's channels on its own: the channels split into `towers` equal parts."""

    def __init__(self, lrn: nn.Module, towers: int) -> None:
        super().__init__()
        self.lrn, self.towers = lrn, towers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lrn(part) for part in x.chunk(self.towers, dim=1)], dim=1)


def grouped_network(cfg: ModelConfig) -> nn.Sequential:
    """The whole net for inference (no dropout), its layers Caffe-named conv1..fc8."""
    t = cfg.towers
    width, fan_in = widths(cfg), fan_ins(cfg)
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for stage in STAGES:
        for layer in stage.layers:
            name = layer.name
            if split_by_input(name):  # one whole layer over every tower's input
                modules[name] = build_layer(cfg, layer, fan_in[name] * t, width[name])
            elif reads_whole_input(name):  # every tower's kernels side by side, reading the one input
                modules[name] = build_layer(cfg, layer, fan_in[name], width[name] * t)
            else:  # each tower's own input: a grouped convolution
                modules[name] = build_layer(cfg, layer, fan_in[name] * t, width[name] * t, groups=t)
            for step in layer.after:
                if step != "dropout":
                    module = companions(cfg)[step]
                    modules[f"{step}_{name}"] = TowerLRN(module, t) if step == "lrn" and cfg.lrn != "none" else module
    return nn.Sequential(modules).eval()
