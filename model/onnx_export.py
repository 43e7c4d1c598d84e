"""The trained towers as one plain grouped network, and that network as one ONNX graph.

`grouped_network` is AlexNet as Caffe's bvlc_alexnet draws it: conv2, conv4 and conv5
are `groups=towers` convolutions, conv1, conv3 and the FC layers whole, and LRN runs
on each tower's half of the channels separately (a window across the halves would
mix towers, which the paper's net never does). It loads `model.export.grouped_state_dict`
as it is, so the same numbers come out as from the towers, with no exchange in sight.
"""

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from model.alexnet import POOLED_SIDE, TowerWidths
from model.config import ModelConfig
from model.lrn import LocalResponseNorm


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
    c1, c2, c3, c4, c5 = (c * t for c in TowerWidths.of(t).conv)
    fc = TowerWidths.of(t).fc * t

    def act() -> nn.Module:
        return nn.ReLU() if cfg.activation == "relu" else nn.Tanh()

    def pool() -> nn.Module:
        return nn.MaxPool2d(3, 2) if cfg.pooling == "overlapping" else nn.MaxPool2d(2, 2)

    def lrn() -> nn.Module:
        if cfg.lrn == "none":
            return nn.Identity()
        return TowerLRN(LocalResponseNorm(cfg.lrn_size, cfg.lrn_alpha, cfg.lrn_beta, cfg.lrn_k, cfg.lrn), t)

    layers = OrderedDict(
        conv1=nn.Conv2d(3, c1, 11, stride=4, padding=0 if cfg.input_size == 227 else 2), act1=act(), norm1=lrn(), pool1=pool(),
        conv2=nn.Conv2d(c1, c2, 5, padding=2, groups=t), act2=act(), norm2=lrn(), pool2=pool(),
        conv3=nn.Conv2d(c2, c3, 3, padding=1), act3=act(),
        conv4=nn.Conv2d(c3, c4, 3, padding=1, groups=t), act4=act(),
        conv5=nn.Conv2d(c4, c5, 3, padding=1, groups=t), act5=act(), pool5=pool(),
        flatten=nn.Flatten(),
        fc6=nn.Linear(c5 * POOLED_SIDE**2, fc), act6=act(),
        fc7=nn.Linear(fc, fc), act7=act(),
        fc8=nn.Linear(fc, cfg.num_classes),
    )
    return nn.Sequential(layers).eval()


def export_onnx(cfg: ModelConfig, grouped_state: dict[str, torch.Tensor], target: str | Path, opset: int = 18) -> Path:
    """Write the net with `grouped_state` (grouped_state_dict's output) as one ONNX file: input `image`
    float [N, 3, S, S] (mean subtracted, S = cfg.input_size), output `logits` [N, num_classes], N dynamic.

    Uses the torch.export-based exporter (needs `onnx` and `onnxscript`); the TorchScript one
    is deprecated since torch 2.9. Weights are stored inside the file (under ONNX's 2 GB limit).
    """
    net = grouped_network(cfg)
    net.load_state_dict(grouped_state)
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    example = torch.zeros(2, 3, cfg.input_size, cfg.input_size)
    torch.onnx.export(
        net, (example,), str(partial), input_names=["image"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, dynamo=True,
        external_data=False, verbose=False,
    )
    partial.rename(target)
    return target
