"""The trained net as one ONNX graph that takes pixels: model/export.py's grouped network behind the training
mean, exported by torch.export."""

import json
from pathlib import Path

import torch
from torch import nn

from config.model import ModelConfig
from data.imageset import SIDE
from data.preprocessing import Preprocessing
from files import atomic_path
from model.export import grouped_network
from model.lrn import LocalResponseNorm

INPUT = "pixels"
OUTPUT = "logits"


def contract(size: int) -> str:
    """What the graph takes and gives, as its doc string says it."""
    return (f"AlexNet (Krizhevsky et al. 2012), both towers as one grouped network. Input {INPUT!r}: uint8 "
            f"[N, 3, {size}, {size}], RGB values 0-255, channels first: the paper's centre crop, i.e. the image's "
            f"shorter side resized to {SIDE}, its central {SIDE}x{SIDE}, then the central {size}x{size} of that. "
            f"The training mean (at the crop's place) is subtracted inside the graph. Output {OUTPUT!r}: float32 "
            "[N, num_classes], before the softmax; metadata 'classes' names output i (a JSON list).")


class FromPixels(nn.Module):
    """The net behind the centre crop's mean: uint8 pixels in, as decoded, so a runtime needs no preprocessing."""

    def __init__(self, net: nn.Module, mean_image: torch.Tensor, size: int) -> None:
        super().__init__()
        offset = (SIDE - size) // 2  # where data/augment.py's centre crop takes it
        self.net = net
        self.register_buffer("mean", mean_image[:, offset : offset + size, offset : offset + size].contiguous())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels.float() - self.mean)


def export_onnx(cfg: ModelConfig, grouped_state: dict[str, torch.Tensor], preprocessing: Preprocessing,
                target: str | Path, opset: int = 18) -> Path:
    """Write the net with `grouped_state` (grouped_state_dict's output) and `preprocessing` as one ONNX file:
    input `pixels` uint8 [N, 3, S, S] (S = cfg.input_size; `contract`), output `logits` [N, num_classes], N
    dynamic; the class names in its metadata.

    Uses the torch.export-based exporter (needs `onnx` and `onnxscript`); the TorchScript one
    is deprecated since torch 2.9. Weights are stored inside the file (under ONNX's 2 GB limit).
    """
    net = grouped_network(cfg)
    net.load_state_dict(grouped_state)
    # F.local_response_norm: ONNX has an LRN, not the C++ kernel's op (docs/KERNELS.md)
    LocalResponseNorm.set_implementation_in(net, "reference")
    size = cfg.input_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    program = torch.onnx.export(
        FromPixels(net, preprocessing.mean_image(), size).eval(), (example,), input_names=[INPUT],
        output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, dynamo=True,
        verbose=False,
    )
    program.model.doc_string = contract(size)
    program.model.metadata_props["classes"] = json.dumps(preprocessing.classes)
    with atomic_path(target) as partial:  # whole or nothing: a failed export leaves no partial file
        program.save(str(partial), external_data=False)
    return Path(target)
