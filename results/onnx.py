"""The trained net as one ONNX graph: model/export.py's grouped network, exported by torch.export."""

from pathlib import Path

import torch

from files import atomic_path
from model.config import ModelConfig
from model.export import grouped_network
from model.lrn import set_implementation


def export_onnx(cfg: ModelConfig, grouped_state: dict[str, torch.Tensor], target: str | Path, opset: int = 18) -> Path:
    """Write the net with `grouped_state` (grouped_state_dict's output) as one ONNX file: input `image`
    float [N, 3, S, S] (mean subtracted, S = cfg.input_size), output `logits` [N, num_classes], N dynamic.

    Uses the torch.export-based exporter (needs `onnx` and `onnxscript`); the TorchScript one
    is deprecated since torch 2.9. Weights are stored inside the file (under ONNX's 2 GB limit).
    """
    net = grouped_network(cfg)
    net.load_state_dict(grouped_state)
    set_implementation(net, "reference")  # F.local_response_norm: ONNX has an LRN, not the C++ kernel's op
    example = torch.zeros(2, 3, cfg.input_size, cfg.input_size)
    with atomic_path(target) as partial:  # whole or nothing: a failed export leaves no partial file
        torch.onnx.export(
            net, (example,), str(partial), input_names=["image"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, dynamo=True,
            external_data=False, verbose=False,
        )
    return Path(target)
