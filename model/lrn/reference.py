"""The definition the kernel and the twin are tested against: torch's own ReLU, LRN and max-pool, one after
another. What the ONNX export runs (ONNX has an LRN, not the kernel's op)."""

import torch
import torch.nn.functional as F


def relu_lrn_pool(z: torch.Tensor, size: int, torch_alpha: float, beta: float, k: float, relu: bool,
                  pool_kernel: int, pool_stride: int) -> torch.Tensor:
    """max_pool2d(lrn(relu(z))) (each step optional), with alpha as torch takes it: divided by `size`."""
    y = F.local_response_norm(F.relu(z) if relu else z, size, torch_alpha, beta, k)
    return F.max_pool2d(y, pool_kernel, pool_stride) if pool_kernel else y
