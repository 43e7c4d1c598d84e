"""Local response normalization (PAPER.md, "Local response normalization"), exact and fast.

Three implementations of the one formula, each forward and backward:
- "kernel": model/csrc/lrn.cpp through the torch ops of model/lrn_ops.py, on CPU tensors: one pass over
  each image's channels, saving only the input; optionally with the ReLU before and the max-pool after
  it in the same pass (`relu`, `pool`), so neither writes an activation-sized tensor of its own.
- "twin": model/lrn_twin.py, plain torch operations with the backward written out; equal to the kernel
  (tested), and what runs on CUDA or where the kernel cannot be built.
- "reference": F.local_response_norm (with F.relu and F.max_pool2d around it when fused): the definition
  the others are tested against, and what the ONNX export runs (results/onnx.py sets it: ONNX has no
  kernel op, and torch.compiler.is_exporting() cannot tell an export from torch 2.11's torch.compile).
`implementation="auto"` (the default) takes the kernel where it applies, else the twin.

Precision: float32 and float64 are computed in their own type; bfloat16 (autocast) and float16 (the twin only)
in float32, rounded once at the end, and the pool compares the rounded values, as the unfused ops would.
"""

import torch
import torch.nn.functional as F
from torch import nn

from model import lrn_ops, lrn_twin
from model.cpu_kernels import extension

IMPLEMENTATIONS = ("auto", "kernel", "twin", "reference")
KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


@torch.compiler.assume_constant_result  # decided once per process; torch.compile need not trace the build
def kernel_available() -> bool:
    """Whether the C++ kernel is built (building it on the first call; see model/cpu_kernels.py)."""
    return extension() is not None


class LocalResponseNorm(nn.Module):
    """b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta over one tower's maps.

    The paper writes alpha as a plain factor of the sum; Caffe, cuda-convnet2 and
    torch divide it by n. `convention="paper"` keeps the paper's reading by handing
    torch's kernel alpha * n; `"alpha_over_n"` passes alpha through unchanged.
    Applied per tower, so N in the paper's formula is the tower's own map count.

    With `relu=True` the input is first passed through a ReLU, and with `pool=(kernel, stride)` the
    output through a max-pool, in the same pass: the conv layers' ("act", "lrn", "pool") as one module.
    """

    def __init__(self, size: int, alpha: float, beta: float, k: float, convention: str, relu: bool = False,
                 pool: tuple[int, int] | None = None, implementation: str = "auto") -> None:
        super().__init__()
        self.size, self.beta, self.k = size, beta, k
        self.torch_alpha = alpha * size if convention == "paper" else alpha
        self.relu, self.pool = relu, pool
        self.implementation = implementation

    @property
    def implementation(self) -> str:
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"LRN implementation {value!r}: must be one of {IMPLEMENTATIONS}")
        self._implementation = value

    def chosen(self, x: torch.Tensor) -> str:
        """The implementation `forward` runs on x."""
        if self.implementation != "auto":
            return self.implementation
        fits = x.device.type == "cpu" and x.dim() == 4 and x.dtype in KERNEL_DTYPES
        return "kernel" if fits and kernel_available() else "twin"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        way = self.chosen(x)
        kernel, stride = self.pool or (0, 0)
        # The ops below take alpha as the factor of the plain sum of squares; torch's averages over size.
        alpha = self.torch_alpha / self.size
        if way == "kernel":
            return lrn_ops.lrn(x, self.size, alpha, self.beta, self.k, self.relu, kernel, stride)
        if way == "twin":
            return lrn_twin.relu_lrn_pool(x, self.size, alpha, self.beta, self.k, self.relu, kernel, stride)
        y = F.local_response_norm(F.relu(x) if self.relu else x, self.size, self.torch_alpha, self.beta, self.k)
        return F.max_pool2d(y, kernel, stride) if kernel else y

    def extra_repr(self) -> str:
        fused = (", relu first" if self.relu else "") + (f", max-pool {self.pool} after" if self.pool else "")
        return f"size={self.size}, alpha_sum={self.torch_alpha / self.size:g}, beta={self.beta}, k={self.k}{fused}"


def set_implementation(module: nn.Module, implementation: str) -> None:
    """Every LocalResponseNorm in `module` runs `implementation` ("reference": the network as before the fast path)."""
    for each in module.modules():
        if isinstance(each, LocalResponseNorm):
            each.implementation = implementation
